"""CheckpointReader / ShardedWriter: round trips, HF layout, and every malformed input named by file."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.io.safetensors_io import (
    CheckpointReader,
    ShardedWriter,
    TensorSpec,
    copy_model_files,
    parse_size,
)
from tests.merge_fixtures import write_checkpoint


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(10, 4, generator=g),
        "model.layers.0.mlp.weight": torch.randn(4, 4, generator=g).bfloat16(),
        "model.layers.0.norm.weight": torch.randn(4, generator=g).half(),
        "position_ids": torch.arange(6),
        "scalar": torch.tensor(2.5),
        "mask": torch.tensor([True, False, True]),
    }


def _write(out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> dict[str, str]:
    out.mkdir()
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    writer = ShardedWriter(out, specs, max_shard_bytes=max_shard_bytes)
    for name, t in tensors.items():
        writer.add(name, t)
    return writer.close()


def test_sharded_round_trip_hf_layout(tmp_path: Path) -> None:
    tensors = _tensors()
    hashes = _write(tmp_path / "out", tensors, max_shard_bytes=64)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert hashes == {f: sha256_file(tmp_path / "out" / f) for f in files}
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    # Readable by safetensors itself (format conformance), and by our reader.
    loaded = {}
    for f in files:
        loaded.update(load_file(tmp_path / "out" / f))
    reader = CheckpointReader(tmp_path / "out")
    assert set(reader.names()) == set(tensors) and not reader.is_task_vector
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
        assert torch.equal(reader.get(name), t)
        assert reader.shape(name) == tuple(t.shape) and reader.dtype(name) == t.dtype


def test_single_shard_is_model_safetensors(tmp_path: Path) -> None:
    _write(tmp_path / "out", _tensors(), max_shard_bytes=10**9)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]


def test_get_casts_and_reads_safetensors_written_shards(tmp_path: Path) -> None:
    tensors = _tensors()
    write_checkpoint(tmp_path / "ckpt", tensors, shards=3)
    reader = CheckpointReader(tmp_path / "ckpt")
    x = reader.get("model.layers.0.mlp.weight", dtype=torch.float32)
    assert x.dtype == torch.float32 and torch.equal(x, tensors["model.layers.0.mlp.weight"].float())
    assert reader.file("position_ids").name.startswith("model-0000")
    single = CheckpointReader(reader.file("scalar"))  # one shard opened as a bare file
    assert "scalar" in single.names() and set(single.names()) < set(tensors)


def test_writer_enforces_plan_order(tmp_path: Path) -> None:
    specs = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (2,), torch.float32)]
    writer = ShardedWriter(tmp_path, specs)
    with pytest.raises(RuntimeError, match="expected a"):
        writer.add("b", torch.zeros(2))
    writer.add("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="before tensor 'b'"):
        writer.close()


def test_truncated_file_named(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m", _tensors())
    file = tmp_path / "m" / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-7])
    with pytest.raises(MergelineError, match=r"model\.safetensors: truncated"):
        CheckpointReader(tmp_path / "m")
    file.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(MergelineError, match=r"model\.safetensors: truncated or corrupt"):
        CheckpointReader(file)


def test_corrupt_header_and_trailing_bytes(tmp_path: Path) -> None:
    file = tmp_path / "x.safetensors"
    file.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(MergelineError, match=r"x\.safetensors: corrupt safetensors header"):
        CheckpointReader(file)
    save_file({"a": torch.zeros(3)}, file)
    file.write_bytes(file.read_bytes() + b"junk")
    with pytest.raises(MergelineError, match="trailing bytes"):
        CheckpointReader(file)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only_folder_refused(tmp_path: Path, name: str) -> None:
    # Written with pickle on purpose; the reader must refuse it by name, never load it.
    (tmp_path / name).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(MergelineError, match=rf"{name}: pickle checkpoints are refused"):
        CheckpointReader(tmp_path)
    with pytest.raises(MergelineError, match="refused"):
        CheckpointReader(tmp_path / name)


def test_pickle_disguised_as_safetensors_refused(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, file)  # a torch zip archive under a safetensors name
    with pytest.raises(MergelineError, match="pickle checkpoint, not safetensors"):
        CheckpointReader(tmp_path)


def test_index_naming_missing_shard(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m", _tensors(), shards=2)
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MergelineError, match=r"index\.json: names shard 'model-00002-of-00002"):
        CheckpointReader(tmp_path / "m")


def test_index_listing_tensor_absent_from_shard(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "m", _tensors(), shards=2)
    index_path = tmp_path / "m" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(MergelineError, match="index lists tensor 'ghost'"):
        CheckpointReader(tmp_path / "m")


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(MergelineError, match="nope: no such file or folder"):
        CheckpointReader(tmp_path / "nope")
    with pytest.raises(MergelineError, match="no model.safetensors"):
        CheckpointReader(tmp_path)


def test_task_vector_folder(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "task_vector.safetensors")
    (tmp_path / "task_vector.json").write_text(json.dumps({"kind": "task_vector", "sha256": "x"}))
    reader = CheckpointReader(tmp_path)
    assert reader.is_task_vector and reader.task_vector_meta["sha256"] == "x"
    assert torch.equal(reader.get("w"), torch.ones(2))
    (tmp_path / "task_vector.json").write_text(json.dumps({"kind": "model"}))
    with pytest.raises(MergelineError, match="task_vector.json: not task-vector metadata"):
        CheckpointReader(tmp_path)


def test_copy_model_files_sets_dtype(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "config.json").write_text(json.dumps({"dtype": "float32", "hidden_size": 4}))
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_text("not copied")
    (src / "notes.txt").write_text("not copied")
    assert sorted(copy_model_files(src, dst, "bfloat16")) == ["config.json", "tokenizer.json"]
    assert json.loads((dst / "config.json").read_text()) == {"dtype": "bfloat16", "hidden_size": 4}
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "tokenizer.json"]


def test_parse_size() -> None:
    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000 and parse_size("1.5kb") == 1500
    with pytest.raises(MergelineError, match="bad size 'lots'"):
        parse_size("lots")


def test_add_blocks_writes_row_blocks(tmp_path: Path) -> None:
    full = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    writer = ShardedWriter(tmp_path, [TensorSpec("w", (6, 4), torch.float32)])
    writer.add_blocks("w", [full[:4], full[4:]])
    writer.close()
    assert torch.equal(CheckpointReader(tmp_path).get("w"), full)
    writer = ShardedWriter(tmp_path / "x", [TensorSpec("w", (6, 4), torch.float32)])
    (tmp_path / "x").mkdir()
    with pytest.raises(RuntimeError, match="got 64 bytes, planned 96"):
        writer.add_blocks("w", [full[:4]])
    writer.abort()  # its hash thread would outlive the test (test_merge_prefetch checks none is left)
