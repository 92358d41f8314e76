"""The GPU engine's loop (whole tensors fetched ahead with positioned reads, ``mergeline.merge.prefetch``),
run on the CPU: it must write exactly what the CPU engine writes, for row-separable and whole-tensor
methods, cut embeddings, tied heads and task-vector inputs, and fail as cleanly on bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergeline.merge import prefetch as merge_prefetch
from mergeline.errors import MergelineError
from mergeline.io import prefetch
from mergeline.io.hashing import sha256_file
from mergeline.io.prefetch import TensorPrefetcher
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.merge.engine import run_merge
from tests.merge_fixtures import load_tensors, write_checkpoint
from tests.unit.merge.test_merge_engine import _config, _finetuned, _model


def _use_gpu_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU loop on the CPU, with tiny pieces and window: every tensor spans several pieces, and
    fetching ahead stops and restarts many times."""
    monkeypatch.setattr(merge_prefetch, "PREFETCH_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(merge_prefetch, "PREFETCH_BYTES", 700)
    monkeypatch.setattr(prefetch, "PIECE_BYTES", 96)


@pytest.fixture()
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_gpu_loop(monkeypatch)


def _models(tmp_path: Path, dtype: torch.dtype) -> dict[str, Path]:
    base = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _model(0, tied=True).items()}
    big = {k: v.to(dtype) if v.is_floating_point() else v
           for k, v in _finetuned(_model(0, vocab=18, tied=True), 2, scale=0.05).items()}
    return {"base": write_checkpoint(tmp_path / "base", base),
            "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1, scale=0.05), shards=3),
            "big": write_checkpoint(tmp_path / "big", big)}


CASES = [
    ("task_arithmetic", {"weight": 0.6}, {"weight": [0.2, 0.9]}, {}),
    ("ties", {"weight": 0.6, "density": 0.3}, {"weight": 1.0, "density": 0.5}, {}),
    ("dare_ties", {"weight": 0.5, "density": 0.5}, {"weight": 0.7, "density": 0.6}, {}),
    ("breadcrumbs", {"weight": 0.5, "density": 0.6, "gamma": 0.1}, {"weight": 0.5, "density": 0.6, "gamma": 0.1}, {}),
    ("ties", {"weight": 0.6, "density": 0.3}, {"weight": 1.0, "density": 0.5}, {"trim_scope": "global"}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("method", "pa", "pb", "extra"), CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_gpu_loop_writes_what_the_cpu_engine_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                     pa: dict, pb: dict, extra: dict, dtype: torch.dtype) -> None:
    models = _models(tmp_path, dtype)
    cfg = _config(method, models, [("a", pa), ("big", pb)], **({"parameters": extra} if extra else {}))
    reference = run_merge(cfg, tmp_path / "cpu")
    fetched: list[str] = []
    original = TensorPrefetcher.fetch
    monkeypatch.setattr(TensorPrefetcher, "fetch", lambda self, r, n, rows=None: (
        fetched.append(n), original(self, r, n, rows))[1])
    _use_gpu_loop(monkeypatch)
    result = run_merge(cfg, tmp_path / "gpu-loop")
    # Every floating tensor but the tied alias was fetched from the base and both models.
    floating = [n for n, t in load_tensors(models["base"]).items() if t.is_floating_point()]
    assert sorted(set(fetched)) == sorted(set(floating) - {"model.embed_tokens.weight"})
    assert len(fetched) == 3 * (len(floating) - 1)
    assert result.report["tensors"]["vocab_cut_to_base"] == reference.report["tensors"]["vocab_cut_to_base"] != []
    assert result.report["tensors"]["tied"] == reference.report["tensors"]["tied"] != {}
    want, got = load_tensors(tmp_path / "cpu"), load_tensors(tmp_path / "gpu-loop")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert result.weight_sha256 == reference.weight_sha256
    assert result.report["method"] == reference.report["method"]


def test_task_vector_input_in_the_gpu_loop(tmp_path: Path, on_cpu: None) -> None:
    models = _models(tmp_path, torch.float32)
    base, a = load_tensors(models["base"]), load_tensors(models["a"])
    tv = {n: a[n] - base[n] if base[n].is_floating_point() else base[n] for n in base}
    tv_dir = tmp_path / "tv"
    write_checkpoint(tmp_path / "tvw", tv)
    tv_dir.mkdir()
    (tmp_path / "tvw" / "model.safetensors").rename(tv_dir / "task_vector.safetensors")
    (tv_dir / "task_vector.json").write_text(json.dumps({"kind": "task_vector"}))
    models["tv"] = tv_dir
    run_merge(_config("task_arithmetic", models, [("tv", {"weight": 0.5})]), tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    for name, x in base.items():
        if x.is_floating_point():
            torch.testing.assert_close(out[name], x + 0.5 * tv[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["task_arithmetic", "dare_ties"])
def test_nonfinite_input_named_and_nothing_written(tmp_path: Path, on_cpu: None, method: str) -> None:
    """TA checks its output (one tensor late in this loop), DARE its inputs: both name tensor and file."""
    models = _models(tmp_path, torch.float32)
    name = "model.layers.3.mlp.up_proj.weight"
    a = load_tensors(models["a"])
    a[name][2, 5] = float("nan")
    models["a"] = write_checkpoint(tmp_path / "poisoned", a)
    params = {"weight": 0.5, **({"density": 0.5} if method == "dare_ties" else {})}
    with pytest.raises(MergelineError, match=rf"poisoned/model.safetensors: tensor '{name}' contains NaN or Inf"):
        run_merge(_config(method, models, [("a", params), ("big", params)]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_file_named(tmp_path: Path, on_cpu: None) -> None:
    """A file cut short after its header parsed (the header's offsets still fit, the bytes do not)."""
    models = _models(tmp_path, torch.float32)
    file = models["big"] / "model.safetensors"
    reader = CheckpointReader(file)
    last = reader.names()[-1]
    _, offset, nbytes = reader.byte_range(last)
    with open(file, "r+b") as handle:
        handle.truncate(offset + nbytes // 2)
    with TensorPrefetcher(torch.device("cpu"), threads=2) as loader:
        with pytest.raises(MergelineError, match=rf"{file}: tensor '{last}': file ends before"):
            loader.wait(loader.fetch(reader, last))


def test_prefetcher_reads_rows_exactly(tmp_path: Path) -> None:
    models = _models(tmp_path, torch.bfloat16)
    reader = CheckpointReader(models["big"])
    name = "lm_head.weight"
    with TensorPrefetcher(torch.device("cpu"), threads=3, piece_bytes=10) as loader:
        whole = loader.wait(loader.fetch(reader, name))
        rows = loader.wait(loader.fetch(reader, name, (4, 11)))
    full = reader.get(name)
    assert whole.dtype == torch.bfloat16 and torch.equal(whole, full)
    assert rows.shape == (7, 8) and torch.equal(rows, full[4:11])


def test_trailing_hashes_match_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shard is hashed by a thread reading back what was flushed, in small chunks here: the
    recorded sha256 is the file's, for every shard, and no hash thread outlives the merge."""
    import threading

    from mergeline.io import shard_writer

    monkeypatch.setattr(shard_writer, "_HASH_CHUNK", 100)
    # Only this test's threads count: another test file on the same xdist worker may still be ending its own.
    earlier = {t for t in threading.enumerate() if t.name == "mergeline-hash"}
    models = _models(tmp_path, torch.float32)
    result = run_merge(_config("task_arithmetic", models, [("a", {"weight": 0.5})]), tmp_path / "out",
                       max_shard_bytes=1500)
    assert len(result.weight_sha256) > 3
    for file, digest in result.weight_sha256.items():
        assert sha256_file(tmp_path / "out" / file) == digest, file
    a = load_tensors(models["a"])
    a["model.layers.4.mlp.up_proj.weight"][0, 0] = float("nan")
    models["a"] = write_checkpoint(tmp_path / "poisoned", a)
    with pytest.raises(MergelineError, match="contains NaN or Inf"):
        run_merge(_config("task_arithmetic", models, [("a", {"weight": 0.5})]), tmp_path / "bad", max_shard_bytes=1500)
    assert not (tmp_path / "bad").exists()
    assert not [t for t in threading.enumerate() if t.name == "mergeline-hash" and t not in earlier]
