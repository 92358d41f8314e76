"""``slices:`` planning on small synthetic checkpoints: layer renaming, which sources give the tensors
outside the blocks, gradient positions per slice, per-model filters on the source's layer name,
the output layer count, and every refused combination (one line naming the slice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergeline.merge.checks import load_merge_config
from mergeline.merge.config import MergeConfig
from mergeline.errors import MergelineError
from mergeline.merge.layers import with_layer
from mergeline.merge.engine import run_merge
from mergeline.merge.slices import is_pre_tensor
from tests.merge_fixtures import load_tensors, write_checkpoint

LAYERS = 4


def _model(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g)}
    for i in range(LAYERS):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
        t[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(6, 4, generator=g)
    t["model.norm.weight"] = torch.randn(4, generator=g)
    t["lm_head.weight"] = torch.randn(10, 4, generator=g)
    return t


@pytest.fixture()
def models(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for seed, name in enumerate(("base", "a", "b")):
        out[name] = write_checkpoint(tmp_path / name, _model(seed))
        (out[name] / "config.json").write_text(json.dumps({"num_hidden_layers": LAYERS, "dtype": "float32",
                                                           "layer_types": ["full_attention", "sliding_attention"] * 2}))
    return out


def _cfg(method: str, slices: list, **extra) -> MergeConfig:
    return MergeConfig.model_validate({"merge_method": method, "slices": slices, **extra})


def _src(path: Path, a: int, b: int, **parameters) -> dict:
    return {"model": str(path), "layer_range": [a, b], **({"parameters": parameters} if parameters else {})}


def test_with_layer_and_pre_tensors() -> None:
    assert with_layer("model.layers.3.mlp.up_proj.weight", 11) == "model.layers.11.mlp.up_proj.weight"
    assert with_layer("transformer.h.1.attn.c_attn.bias", 0) == "transformer.h.0.attn.c_attn.bias"
    assert with_layer("model.norm.weight", 5) == "model.norm.weight"
    assert is_pre_tensor("model.embed_tokens.weight") and is_pre_tensor("transformer.wpe.weight")
    assert not is_pre_tensor("lm_head.weight") and not is_pre_tensor("model.norm.weight")


def test_task_arithmetic_slices_by_hand(models: dict[str, Path], tmp_path: Path) -> None:
    """Slice 0: layers 0..1 of a (w = gradient [0, 1] over the slice; self_attn filter on a's own layer
    name "layers.1." → 5); slice 1: layers 1..3 of b, three output layers (w from the slice: 0.5)."""
    slices = [
        {"sources": [_src(models["a"], 0, 2, weight=[{"filter": "layers.1.self", "value": 5.0}, {"value": [0.0, 1.0]}]),
                     _src(models["base"], 0, 2)]},
        {"sources": [_src(models["b"], 1, 4), _src(models["base"], 1, 4)], "parameters": {"weight": 0.5}},
    ]
    run_merge(_cfg("task_arithmetic", slices, base_model=str(models["base"])), tmp_path / "out")
    base, a, b, out = (load_tensors(p) for p in (models["base"], models["a"], models["b"], tmp_path / "out"))
    q, up = "self_attn.q_proj.weight", "mlp.up_proj.weight"

    def ta(m: dict, name: str, src: int, w: float) -> torch.Tensor:
        key = f"model.layers.{src}.{name}"
        return base[key] + w * (m[key] - base[key])

    torch.testing.assert_close(out[f"model.layers.0.{up}"], ta(a, up, 0, 0.0), rtol=0, atol=0)
    torch.testing.assert_close(out[f"model.layers.1.{up}"], ta(a, up, 1, 1.0), rtol=0, atol=0)
    torch.testing.assert_close(out[f"model.layers.1.{q}"], ta(a, q, 1, 5.0), rtol=0, atol=1e-6)
    for out_layer, src_layer in ((2, 1), (3, 2), (4, 3)):
        torch.testing.assert_close(out[f"model.layers.{out_layer}.{q}"], ta(b, q, src_layer, 0.5), rtol=0, atol=1e-6)
    # Outside the blocks: embeddings from the first slice (a, w at t = 0: 0), the rest from the last (b, 0.5).
    assert torch.equal(out["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    norm = "model.norm.weight"
    torch.testing.assert_close(out[norm], base[norm] + 0.5 * (b[norm] - base[norm]))
    assert len([n for n in out if n.endswith(q)]) == 5
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["num_hidden_layers"] == 5
    full, sliding = "full_attention", "sliding_attention"
    assert written["layer_types"] == [full, sliding, sliding, full, sliding]  # layers [0, 2) + [1, 4)


def test_frankenmerge_report_and_merge_yaml(models: dict[str, Path], tmp_path: Path) -> None:
    slices = [{"sources": [_src(models["a"], 0, 4, weight=1.0)]},
              {"sources": [_src(models["b"], 2, 4, weight=1.0)], "residual_weight": 0.5}]
    result = run_merge(_cfg("linear", slices), tmp_path / "out")
    out, b = load_tensors(tmp_path / "out"), load_tensors(models["b"])
    assert torch.equal(out["model.layers.5.mlp.up_proj.weight"], b["model.layers.3.mlp.up_proj.weight"])
    assert result.report["ignored"] == ["slices[1].residual_weight (mergekit 0.1.5 ignores it too)"]
    again = load_merge_config(tmp_path / "out" / "merge.yaml")  # the resolved config reads back
    assert again.slices[1].sources[0].layer_range == (2, 4) and again.slices[0].sources[0].model == str(models["a"].resolve())


def _refused(m: dict[str, Path]) -> list[tuple[dict, str]]:
    a, base = m["a"], m["base"]
    w = {"weight": 1.0}
    one = lambda path, lo, hi, **p: _src(path, lo, hi, **(p or w))  # noqa: E731
    return [
        ({"merge_method": "linear", "slices": [{"sources": [one(a, 0, 2), one(base, 1, 4)]}]},
         r"slices\[0\]: all sources must span the same number of layers \(got \[2, 3\]\)"),
        ({"merge_method": "linear", "slices": [{"sources": [one(a, 2, 6)]}]},
         r"slices\[0\]\.sources\[0\] \(.*a\): layer_range \[2, 6\] is outside the model's 4 layers"),
        ({"merge_method": "linear", "slices": [{"sources": [one(a, 3, 1)]}]}, r"layer_range \[3, 1\] is not 0 <= a <= b"),
        ({"merge_method": "linear", "slices": [{"sources": [one(a, 0, 2), one(a, 2, 4)]}]},
         r"slices\[0\]\.sources\[1\] .*: this model is already a source"),
        ({"merge_method": "task_arithmetic", "slices": [{"sources": [one(a, 0, 2)]}]},
         r"slices\[0\]: merge_method 'task_arithmetic' needs base_model"),
        ({"merge_method": "task_arithmetic", "base_model": str(base), "slices": [{"sources": [one(a, 0, 2)]}]},
         r"slices\[0\]: base_model .* is not among the slice's sources"),
        ({"merge_method": "sta", "base_model": str(base), "slices": [{"sources": [one(a, 0, 2), one(base, 0, 2)]}]},
         r"slices: merge_method 'sta' reads extra per-model files"),
        ({"merge_method": "metagpt", "base_model": str(base), "slices": [{"sources": [_src(a, 0, 2), _src(base, 0, 2)]}]},
         r"slices: merge_method 'metagpt' .*needs whole-model statistics"),
        ({"merge_method": "ties", "base_model": str(base),
          "slices": [{"sources": [one(a, 0, 2, weight=1.0, gama=1.0), one(base, 0, 2)]}]},
         r"slices\[0\]\.sources\[0\] .*: unknown per-model parameter 'gama'"),
        ({"merge_method": "task_arithmetic", "base_model": str(base), "slices": [
            {"sources": [one(a, 0, 2), one(base, 0, 2)]}, {"sources": [one(a, 2, 4), one(m["b"], 2, 4), one(base, 2, 4)]}]},
         r"slices\[1\]: mergekit merges the tensors after the blocks from the first 2 of the last slice's sources"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_refused_slices_name_the_slice(models: dict[str, Path], tmp_path: Path, case: int) -> None:
    config, message = _refused(models)[case]
    with pytest.raises(MergelineError, match=message):
        run_merge(MergeConfig.model_validate(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gpu_loop_writes_what_the_cpu_engine_writes(models: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices and a re-indexed vocabulary through the GPU engine's loop (run on the CPU): the same bytes."""
    from tests.merge_fixtures import save_word_tokenizer
    from tests.unit.merge.test_merge_prefetch import _use_gpu_loop

    words = ["<unk>", "</s>"] + [f"w{i}" for i in range(8)]
    save_word_tokenizer(models["base"], words)
    save_word_tokenizer(models["a"], [words[1], words[0], *words[2:]])  # two ids swapped
    config = _cfg("task_arithmetic", [
        {"sources": [_src(models["a"], 1, 3, weight=[0.2, 0.9]), _src(models["base"], 1, 3)]},
        {"sources": [_src(models["base"], 0, 4), _src(models["b"], 0, 4, weight=0.5)], "parameters": {"lambda": 0.8}},
    ], base_model=str(models["base"]), tokenizer_source="union")
    reference = run_merge(config, tmp_path / "cpu")
    _use_gpu_loop(monkeypatch)
    result = run_merge(config, tmp_path / "loop")
    assert result.weight_sha256 == reference.weight_sha256
    assert reference.report["tokenizer"] == {"source": "union", "vocab_size": 10}
    out, a = load_tensors(tmp_path / "cpu"), load_tensors(models["a"])
    base = load_tensors(models["base"])
    # a's rows 0 and 1 hold its tokens "</s>" and "<unk>": re-indexed, its delta lands on the base's ids.
    # (outside the blocks t = 0: a's weight is 0.2, the global lambda 1)
    expected = base["model.embed_tokens.weight"][1] + 0.2 * (a["model.embed_tokens.weight"][0] - base["model.embed_tokens.weight"][1])
    torch.testing.assert_close(out["model.embed_tokens.weight"][1], expected, rtol=0, atol=1e-6)
