"""The streaming merge engine on small synthetic checkpoints (no transformers): semantics, streaming,
task-vector inputs, vocab cuts, tied weights, dtypes, sharding, and bad inputs leaving no output."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch

from mergeline.merge.checks import load_merge_config
from mergeline.merge.config import MergeConfig
from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_file
from mergeline.io.safetensors_io import CheckpointReader
from mergeline.merge.engine import run_merge
from tests.merge_fixtures import load_tensors, write_checkpoint

LAYERS = 6


def _model(seed: int, vocab: int = 16, dtype: torch.dtype = torch.float32, tied: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(vocab, 8, generator=g)}
    for i in range(LAYERS):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g)
        t[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(12, 8, generator=g)
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(8, generator=g)
    t["model.norm.weight"] = torch.randn(8, generator=g)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone() if tied else torch.randn(vocab, 8, generator=g)
    t = {k: v.to(dtype) for k, v in t.items()}
    t["model.position_ids"] = torch.arange(5)
    return t


def _finetuned(base: dict, seed: int, scale: float = 0.1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: (v + scale * torch.randn(v.shape, generator=g).to(v.dtype)) if v.is_floating_point() else v
           for k, v in base.items()}
    if torch.equal(base["model.embed_tokens.weight"], base["lm_head.weight"]):
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    return out


@pytest.fixture()
def models(tmp_path: Path) -> dict[str, Path]:
    base = _model(0)
    paths = {"base": write_checkpoint(tmp_path / "base", base)}
    (tmp_path / "base" / "config.json").write_text(json.dumps({"dtype": "float32"}))
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    paths["a"] = write_checkpoint(tmp_path / "a", _finetuned(base, 1), shards=3)
    paths["b"] = write_checkpoint(tmp_path / "b", _finetuned(base, 2))
    return paths


def _config(method: str, models: dict[str, Path], entries: list[tuple[str, dict]], **extra) -> MergeConfig:
    return MergeConfig.model_validate({
        "merge_method": method, "base_model": str(models["base"]),
        "models": [{"model": str(models[k]), "parameters": p} for k, p in entries], **extra,
    })


def test_task_arithmetic_values_and_outputs(models: dict[str, Path], tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = _config("task_arithmetic", models, [("a", {"weight": 0.5}), ("b", {"weight": [1.0, -1.0]})],
                  parameters={"lambda": 0.8})
    result = run_merge(cfg, tmp_path / "out", progress=lines.append, max_shard_bytes=2000)
    base, a, b, out = (load_tensors(p) for p in (models["base"], models["a"], models["b"], tmp_path / "out"))
    for name, x in base.items():
        if not x.is_floating_point():
            assert torch.equal(out[name], x)
            continue
        from mergeline.merge.layers import layer_index

        layer = layer_index(name)
        w_b = 1.0 - 2.0 * (layer / (LAYERS - 1)) if layer is not None else 1.0  # gradient [1, -1]
        expected = x + 0.8 * (0.5 * (a[name] - x) + w_b * (b[name] - x))
        torch.testing.assert_close(out[name], expected, rtol=1e-6, atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 1 and result.weight_sha256 == {f: sha256_file(tmp_path / "out" / f) for f in files}
    assert {"config.json", "tokenizer.json", "merge.yaml", "merge_report.json"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["tensors"]["copied_from_base"] == ["model.position_ids"] and report["method"]
    assert load_merge_config(tmp_path / "out" / "merge.yaml").models[0].model == str(models["a"].resolve())
    assert lines[-1].startswith("wrote ") and any("merged" in line for line in lines)


def test_one_model_lambda_one_returns_the_finetune(models: dict[str, Path], tmp_path: Path) -> None:
    run_merge(_config("task_arithmetic", models, [("a", {"weight": 1.0})]), tmp_path / "out")
    a, out = load_tensors(models["a"]), load_tensors(tmp_path / "out")
    for name in a:
        torch.testing.assert_close(out[name], a[name], rtol=0, atol=1e-6)


def test_streams_tensor_by_tensor(models: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """Memory is a few tensors, not whole models: at most one mapped view is alive per thread, and
    tensor data lives in one reused buffer per input (base, each model) plus the method's reused
    workspace; nothing else is allocated per tensor."""
    from mergeline.merge import support as merge_support

    alive: list[weakref.ref] = []
    peak = 0
    slots: set = set()
    original_view, original_take = CheckpointReader.view, merge_support.Buffers.take

    def counting_view(self, name):
        nonlocal peak
        tensor = original_view(self, name)
        alive[:] = [r for r in alive if r() is not None] + [weakref.ref(tensor)]
        peak = max(peak, len(alive))
        return tensor

    def recording_take(self, slot, shape, dtype):
        slots.add((slot, dtype))
        return original_take(self, slot, shape, dtype)

    monkeypatch.setattr(CheckpointReader, "view", counting_view)
    monkeypatch.setattr(merge_support.Buffers, "take", recording_take)
    cfg = _config("ties", models, [("a", {"weight": 1.0, "density": 0.5}), ("b", {"weight": 1.0, "density": 0.5})])
    run_merge(cfg, tmp_path / "out")
    assert 1 <= peak <= 4
    inputs = {slot for slot, _ in slots if not (isinstance(slot, tuple) and slot[0] == "ws")}
    assert inputs == {"base", ("model", 0), ("model", 1)}


def test_task_vector_folder_as_model(models: dict[str, Path], tmp_path: Path) -> None:
    base, a = load_tensors(models["base"]), load_tensors(models["a"])
    tv = {k: a[k] - base[k] for k in base if base[k].is_floating_point()}
    tv_dir = write_checkpoint(tmp_path / "tv", {})
    (tv_dir / "model.safetensors").unlink()
    write_checkpoint(tmp_path / "tmpw", tv)
    (tmp_path / "tmpw" / "model.safetensors").rename(tv_dir / "task_vector.safetensors")
    (tv_dir / "task_vector.json").write_text(json.dumps({"kind": "task_vector"}))
    models["tv"] = tv_dir
    for method, params in (("task_arithmetic", {"weight": 0.7}), ("linear", {"weight": 1.0})):
        run_merge(_config(method, models, [("tv", params)]), tmp_path / f"o-{method}")
        run_merge(_config(method, models, [("a", params)]), tmp_path / f"r-{method}")
        got, ref = load_tensors(tmp_path / f"o-{method}"), load_tensors(tmp_path / f"r-{method}")
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


def test_out_dtype_default_is_base_dtype(tmp_path: Path) -> None:
    base = _model(0, dtype=torch.bfloat16)
    models = {"base": write_checkpoint(tmp_path / "base", base),
              "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1))}
    run_merge(_config("task_arithmetic", models, [("a", {"weight": 0.5})]), tmp_path / "o1")
    assert load_tensors(tmp_path / "o1")["lm_head.weight"].dtype == torch.bfloat16
    (tmp_path / "base" / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    run_merge(_config("task_arithmetic", models, [("a", {"weight": 0.5})], out_dtype="float16"), tmp_path / "o2")
    out = load_tensors(tmp_path / "o2")
    assert out["lm_head.weight"].dtype == torch.float16 and out["model.position_ids"].dtype == torch.int64
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["dtype"] == "float16"


def test_embedding_rows_cut_to_base_for_delta_methods(models: dict[str, Path], tmp_path: Path) -> None:
    big = _finetuned(_model(0, vocab=18), 3)
    models["big"] = write_checkpoint(tmp_path / "big", big)
    result = run_merge(_config("task_arithmetic", models, [("big", {"weight": 1.0})]), tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    assert out["model.embed_tokens.weight"].shape == (16, 8)
    torch.testing.assert_close(out["model.embed_tokens.weight"], big["model.embed_tokens.weight"][:16], atol=1e-6, rtol=0)
    assert sorted(result.report["tensors"]["vocab_cut_to_base"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    with pytest.raises(MergelineError, match=r"tensor '(lm_head|model.embed_tokens).weight' has shape \[18, 8\], the base has \[16, 8\]"):
        run_merge(_config("linear", models, [("big", {"weight": 1.0})]), tmp_path / "lin")
    assert not (tmp_path / "lin").exists()


def test_tied_embeddings_merged_once(tmp_path: Path) -> None:
    base = _model(0, tied=True)
    models = {"base": write_checkpoint(tmp_path / "base", base),
              "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1)),
              "b": write_checkpoint(tmp_path / "b", _finetuned(base, 2))}
    cfg = _config("dare_ties", models, [("a", {"weight": 1.0, "density": 0.5}), ("b", {"weight": 1.0, "density": 0.5})])
    result = run_merge(cfg, tmp_path / "out")
    out = load_tensors(tmp_path / "out")
    assert result.report["tensors"]["tied"] == {"model.embed_tokens.weight": "lm_head.weight"}
    assert torch.equal(out["lm_head.weight"], out["model.embed_tokens.weight"])  # same random mask: computed once
    metagpt = MergeConfig.model_validate({**cfg.model_dump(), "merge_method": "metagpt",
                                           "models": [{"model": str(models[k])} for k in "ab"]})
    run_merge(metagpt, tmp_path / "meta")  # a statistics pass with an alias present
    meta = load_tensors(tmp_path / "meta")
    assert torch.equal(meta["lm_head.weight"], meta["model.embed_tokens.weight"])


def test_seeded_merge_reproduces(models: dict[str, Path], tmp_path: Path) -> None:
    entries = [("a", {"weight": 1.0, "density": 0.3})]
    run_merge(_config("dare_linear", models, entries, seed=5), tmp_path / "o1")
    run_merge(_config("dare_linear", models, entries, seed=5), tmp_path / "o2")
    run_merge(_config("dare_linear", models, entries, seed=6), tmp_path / "o3")
    o1, o2, o3 = (load_tensors(tmp_path / f"o{i}") for i in (1, 2, 3))
    assert all(torch.equal(o1[n], o2[n]) for n in o1)
    assert not torch.equal(o1["lm_head.weight"], o3["lm_head.weight"])


def _poison(models: dict[str, Path], tmp_path: Path, value: float) -> None:
    a = load_tensors(models["a"])
    a["model.layers.2.mlp.up_proj.weight"][3, 1] = value
    models["a"] = write_checkpoint(tmp_path / "poisoned", a)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m, p: _poison(m, p, float("nan")),
         r"poisoned/model.safetensors: tensor 'model.layers.2.mlp.up_proj.weight' contains NaN or Inf"),
        (lambda m, p: _poison(m, p, float("inf")), "contains NaN or Inf"),
        (lambda m, p: m.update(a=write_checkpoint(p / "short", {k: v for k, v in _model(1).items()
                                                                 if k != "model.norm.weight"})),
         r"models\[0\] \(.*short\): has no tensor 'model.norm.weight'"),
        (lambda m, p: m.update(a=write_checkpoint(p / "wide", {**_model(1), "model.layers.1.mlp.up_proj.weight": torch.zeros(12, 9)})),
         r"tensor 'model.layers.1.mlp.up_proj.weight' has shape \[12, 9\], the base has \[12, 8\]"),
    ],
)
def test_bad_inputs_leave_no_output(models: dict[str, Path], tmp_path: Path, damage, message) -> None:
    run_merge(_config("task_arithmetic", models, [("b", {"weight": 1.0})]), tmp_path / "out")  # replaceable
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    damage(models, tmp_path)
    with pytest.raises(MergelineError, match=message):
        run_merge(_config("task_arithmetic", models, [("a", {"weight": 1.0})]), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # old output untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_cuda_unavailable_is_bad_input(models: dict[str, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(MergelineError, match="CUDA is not available"):
        run_merge(_config("task_arithmetic", models, [("a", {"weight": 1.0})]), tmp_path / "out", device="cuda")


def test_base_as_task_vector_refused(models: dict[str, Path], tmp_path: Path) -> None:
    (models["b"] / "task_vector.json").write_text(json.dumps({"kind": "task_vector"}))
    (models["b"] / "model.safetensors").rename(models["b"] / "task_vector.safetensors")
    models["base"] = models["b"]
    with pytest.raises(MergelineError, match="is a task vector; the base must be a model"):
        run_merge(_config("task_arithmetic", models, [("a", {"weight": 1.0})]), tmp_path / "out")


@pytest.mark.parametrize("gpu_loop", [False, True], ids=["cpu-engine", "gpu-loop-on-cpu"])
def test_per_model_and_global_input_checkpoints_reach_the_method(models: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, gpu_loop: bool) -> None:
    if gpu_loop:  # the GPU engine's loop (inputs fetched ahead, auxiliary checkpoints too), run on the CPU
        from mergeline.merge import prefetch as merge_prefetch

        monkeypatch.setattr(merge_prefetch, "PREFETCH_DEVICES", ("cpu", "cuda"))
    base, a = load_tensors(models["base"]), load_tensors(models["a"])
    floats = {k: v for k, v in base.items() if v.is_floating_point()}
    # STA importance = flat position, so a per-tensor top-50% keeps exactly the second half of each tensor.
    write_checkpoint(tmp_path / "imp", {k: torch.arange(v.numel(), dtype=torch.float32).reshape(v.shape)
                                        for k, v in floats.items()})
    cfg = _config("sta", models, [("a", {"weight": 1.0, "density": 0.5,
                                         "importance": str(tmp_path / "imp" / "model.safetensors")})],
                  parameters={"scope": "tensor"})
    run_merge(cfg, tmp_path / "sta")
    out = load_tensors(tmp_path / "sta")
    for name, x in floats.items():
        changed = (out[name] != x).reshape(-1)
        half = torch.arange(x.numel()) >= x.numel() - int(0.5 * x.numel())
        assert torch.equal(changed, half & (a[name] != x).reshape(-1)), name
    # TaLoS mask (bool tensors): only masked-in entries move.
    masks = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for k, v in floats.items()}
    write_checkpoint(tmp_path / "mask", masks)
    run_merge(_config("talos", models, [("a", {"mask": str(tmp_path / "mask")})]), tmp_path / "talos")
    out = load_tensors(tmp_path / "talos")
    assert all(torch.equal(out[n] != x, masks[n] & (a[n] != x)) for n, x in floats.items())
    # LATA's pretrained_model (a whole model given once, globally).
    result = run_merge(_config("lata", models, [("a", {})], parameters={"pretrained_model": str(models["b"])}),
                       tmp_path / "lata")
    assert result.report["method"] and (tmp_path / "lata" / "model.safetensors").exists()


@pytest.mark.gpu
def test_cuda_matches_cpu(models: dict[str, Path], tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = _config("ties", models, [("a", {"weight": 1.0, "density": 0.5}), ("b", {"weight": 0.7, "density": 0.3})])
    result = run_merge(cfg, tmp_path / "gpu", device="cuda")
    run_merge(cfg, tmp_path / "cpu")
    assert result.report["device"].startswith("cuda")
    gpu, cpu = load_tensors(tmp_path / "gpu"), load_tensors(tmp_path / "cpu")
    for name in cpu:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-5, atol=1e-6)


def test_row_blocks_give_the_same_result(tmp_path: Path, monkeypatch) -> None:
    """Large tensors of row-separable methods are merged in row blocks: bit-identical to whole tensors,
    also for a cut embedding and a tied LM head."""
    from mergeline.merge import loop as merge

    base = _model(0, tied=True)
    models = {"base": write_checkpoint(tmp_path / "base", base),
              "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1)),
              "big": write_checkpoint(tmp_path / "big", _finetuned(_model(0, vocab=18, tied=True), 2))}
    cfg = _config("task_arithmetic", models, [("a", {"weight": 0.6}), ("big", {"weight": [0.2, 0.9]})],
                  out_dtype="bfloat16")
    run_merge(cfg, tmp_path / "whole")
    blocks: list[int] = []
    original = merge.Engine._merge_block

    def recording(self, method, item, spans, b, out):
        blocks.append(spans[b] is not None)
        return original(self, method, item, spans, b, out)

    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 20)
    monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 50)
    monkeypatch.setattr(merge.Engine, "_merge_block", recording)
    result = run_merge(cfg, tmp_path / "blocks")
    assert sum(blocks) > 20 and result.report["tensors"]["tied"]
    whole, chunked = load_tensors(tmp_path / "whole"), load_tensors(tmp_path / "blocks")
    assert all(torch.equal(whole[n], chunked[n]) for n in whole)
    assert sha256_file(tmp_path / "whole" / "model.safetensors") == sha256_file(tmp_path / "blocks" / "model.safetensors")


def test_output_over_an_input_refused(models: dict[str, Path]) -> None:
    with pytest.raises(MergelineError, match="is, is inside or holds the input"):
        run_merge(_config("task_arithmetic", models, [("a", {"weight": 1.0})]), models["a"])
    assert (models["a"] / "model.safetensors.index.json").exists()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "linear"])
def test_nonfinite_inputs_named_when_only_the_output_is_checked(models: dict[str, Path], tmp_path: Path, method: str) -> None:
    """TA, TIES and linear check NaN/Inf on their output; a NaN, or Infs of opposite sign in two models
    (which a sum turns into NaN rather than cancelling), still fail with the one-line error naming the
    tensor."""
    name = "model.layers.2.mlp.up_proj.weight"
    a, b = load_tensors(models["a"]), load_tensors(models["b"])
    a[name][3, 1], b[name][3, 1] = float("inf"), float("-inf")
    models["a"], models["b"] = write_checkpoint(tmp_path / "pa", a), write_checkpoint(tmp_path / "pb", b)
    params = {"weight": 0.5, **({"density": 0.5} if method == "ties" else {})}
    with pytest.raises(MergelineError, match=rf"pa/model.safetensors: tensor '{name}' contains NaN or Inf"):
        run_merge(_config(method, models, [("a", params), ("b", params)]), tmp_path / "out")
    a[name][3, 1] = float("nan")
    models["a"] = write_checkpoint(tmp_path / "pn", a)
    with pytest.raises(MergelineError, match=rf"pn/model.safetensors: tensor '{name}' contains NaN or Inf"):
        run_merge(_config(method, models, [("a", params)]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ties_row_blocks_equal_whole_tensors(tmp_path: Path, monkeypatch) -> None:
    """TIES in row blocks (per-tensor cut-off and tie budget from the statistics pass) is bit-identical
    to trimming whole tensors, also on bf16 inputs with many ties at the cut-off."""
    from mergeline.merge import loop as merge

    base = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _model(0, vocab=40).items()}
    models = {"base": write_checkpoint(tmp_path / "base", base),
              "a": write_checkpoint(tmp_path / "a", _finetuned(base, 1, scale=0.02)),
              "b": write_checkpoint(tmp_path / "b", _finetuned(base, 2, scale=0.02))}
    cfg = _config("ties", models, [("a", {"weight": 0.6, "density": 0.3}), ("b", {"weight": 1.0, "density": 0.5})])
    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 1 << 30)
    run_merge(cfg, tmp_path / "whole")
    from mergeline.methods import _row_trim

    monkeypatch.setattr(_row_trim, "SMALL", 50)  # sampled bands, gathered chunk by chunk
    monkeypatch.setattr(_row_trim, "SAMPLE", 64)
    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 16)
    monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 40)
    result = run_merge(cfg, tmp_path / "blocks")
    whole, blocks = load_tensors(tmp_path / "whole"), load_tensors(tmp_path / "blocks")
    assert all(torch.equal(whole[n], blocks[n]) for n in whole)
    assert result.report["method"]["kept_fraction"] == pytest.approx({"0": 0.3, "1": 0.5}, abs=0.02)
