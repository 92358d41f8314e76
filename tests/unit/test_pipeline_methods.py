"""The pipeline's knowledge of a merge method lives on its class (``MergeMethod.pipeline``).

A method module dropped into the package is found, swept by the pipeline, given the parameters its
class declares, and merged, with no other file edited.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mergeline.methods as methods_pkg
from mergeline.errors import MergelineError
from mergeline.methods import get_method, method_names, pipeline_methods
from mergeline.params import load_params
from mergeline.pipeline.records import BaseRecord, Fit, Importance, Vector
from mergeline.stages.common import StageContext
from mergeline.stages.merge import merge_config, merge_variant, plan_variants
from tests.merge_fixtures import finetune, load_tensors, tiny_base

REPO = Path(__file__).resolve().parents[2]

# One module, as a contributor writes it: a method that adds half of every task vector, swept over λ
# and its own parameter ``share``.
NEW_METHOD = '''
"""Half Task Arithmetic: θ = θ0 + λ · share · Σ_t w_t τ_t (a test method)."""

import torch
from pydantic import Field

from mergeline.methods import register
from mergeline.methods._fields import LambdaParameters, OptionalWeightModel
from mergeline.methods.base import MergeMethod, PipelineEntry, TensorInputs


class HalfParameters(LambdaParameters):
    share: float = Field(0.5, gt=0, le=1, description="fraction of the summed vector added")


@register
class HalfTaskArithmetic(MergeMethod):
    name = "half_ta_test"
    Parameters = HalfParameters
    PerModel = OptionalWeightModel
    pipeline = (PipelineEntry(short="half", sweeps=("lambda", "share")),)

    def merge_tensor(self, inputs: TensorInputs) -> torch.Tensor:
        total = sum(t * float(mp.weight) for t, mp in zip(inputs.tensors, inputs.model_params))
        return total * float(inputs.params.lambda_) * float(inputs.params.share)
'''


@pytest.fixture
def new_method_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The package, plus a folder holding one new method file (registry restored afterwards)."""
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "half_ta_test.py").write_text(NEW_METHOD)
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(folder)])
    monkeypatch.setattr(methods_pkg, "_REGISTRY", dict(methods_pkg._REGISTRY))
    monkeypatch.setattr(methods_pkg, "_loaded", False)
    yield "half_ta_test"
    sys.modules.pop("mergeline.methods.half_ta_test", None)


def _params(*overrides: str):  # type: ignore[no-untyped-def]
    return load_params(REPO / "params" / "tiny.yaml", ["tasks=[news,sentiment]", *overrides])


BASE = BaseRecord(id="base", path="base", sha256="")


def _vectors(paths: dict[str, str]) -> dict[Fit, Vector]:
    return {Fit(t, "full"): Vector(task=t, mode="full", path=path, sha256="") for t, path in paths.items()}


def test_pipeline_table_comes_from_the_method_classes() -> None:
    table = {key: (cls.name, entry.short, entry.vectors, entry.importance, entry.sweeps)
             for key, (cls, entry) in pipeline_methods().items()}
    assert table["task_arithmetic"] == ("task_arithmetic", "ta", "full", False, ("lambda",))
    assert table["lora"] == ("task_arithmetic", "lora", "lora", False, ("lambda",))
    assert table["talos"] == ("talos", "talos", "talos", False, ("lambda",))
    assert table["sta"] == ("sta", "sta", "full", True, ("lambda", "density"))
    assert table["metagpt"] == ("metagpt", "metagpt", "full", False, ("density",))
    assert table["dare_ties"][1:] == ("dare", "full", False, ("lambda", "density"))
    # every method module of the package is registered without a list naming it
    files = {p.stem for p in Path(methods_pkg.__file__).parent.glob("*.py") if not p.stem.startswith("_")} - {"base"}
    assert files == set(methods_pkg.method_modules())
    assert {get_method(n).__module__.rsplit(".", 1)[1] for n in method_names()} == files


def test_derived_configs_match_each_methods_declarations() -> None:
    ctx = StageContext(_params("merge.methods={metagpt: {}, sta: {lambdas: [0.5], densities: [0.1]}, "
                               "dare_ties: {densities: [0.3]}}", "merge.seed=7"))
    variants = {v.name: v for v in plan_variants(ctx)}
    assert set(variants) == {"metagpt_l1", "sta_l0.5_d0.1", "dare_l1_d0.3"}
    vectors = _vectors({t: f"vectors/{t}" for t in ("news", "sentiment")})
    importance = {t: Importance(task=t, kind="sta_taylor", path=f"importance/{t}/sta.safetensors", sha256="", plot="")
                  for t in ("news", "sentiment")}

    def config(name: str) -> dict:
        return merge_config(ctx, variants[name], BASE, vectors, importance)

    metagpt, sta, dare = config("metagpt_l1"), config("sta_l0.5_d0.1"), config("dare_l1_d0.3")
    # no weight, no λ; the seed because its refine option may draw DARE masks
    assert metagpt["parameters"] == {"seed": 7} and metagpt["models"][0]["parameters"] == {}
    assert sta["models"][1]["parameters"] == {"weight": 1.0, "density": 0.1,
                                              "importance": "importance/sentiment/sta.safetensors"}
    assert sta["parameters"] == {"lambda": 0.5} and "seed" not in sta["parameters"]
    assert dare["parameters"] == {"lambda": 1.0, "seed": 7}
    assert ctx.params.importance_needed
    assert not _params("merge.methods={ties: {densities: [0.2]}, metagpt: {}}").importance_needed


@pytest.mark.parametrize(("override", "message"), [
    ("merge.methods={task_arithmetic: {densities: [0.5]}}", "task_arithmetic does not sweep density"),
    ("merge.methods={metagpt: {lambdas: [0.5]}}", "metagpt does not sweep λ"),
    ("merge.methods={ties: {grid: {gamma: [0.1]}}}", "grid.gamma: not swept by ties"),
    ("merge.methods={talos: {}}", "merge.methods.talos needs talos.enabled: true"),
])
def test_a_sweep_may_only_vary_what_the_method_declares(override: str, message: str) -> None:
    with pytest.raises(MergelineError, match=message):
        _params(override, "talos.enabled=false")


def test_a_new_method_file_is_swept_and_merged_by_the_pipeline(new_method_file: str, tmp_path: Path) -> None:
    assert new_method_file not in methods_pkg._REGISTRY
    ctx = StageContext(_params("merge.methods={half_ta_test: {lambdas: [0.5, 1.0], grid: {share: [0.25]}}}"),
                       root=tmp_path)
    assert pipeline_methods()["half_ta_test"][0].name == "half_ta_test"
    variants = {v.name: v for v in plan_variants(ctx)}
    assert set(variants) == {"half_l0.5_s0.25", "half_l1_s0.25"}
    base = tiny_base("llama", tmp_path / "base")
    vectors = _vectors({t: str(finetune(base, tmp_path / t, seed=i).relative_to(tmp_path))
                        for i, t in enumerate(("news", "sentiment"), start=1)})
    config = merge_config(ctx, variants["half_l0.5_s0.25"], BASE, vectors, {})
    assert config["merge_method"] == "half_ta_test"
    assert config["parameters"] == {"share": 0.25, "lambda": 0.5}
    record = merge_variant(ctx, variants["half_l0.5_s0.25"], config)
    merged, b = load_tensors(tmp_path / record.path), load_tensors(base)
    a, s = load_tensors(tmp_path / "news"), load_tensors(tmp_path / "sentiment")
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = b[name] + ((a[name] - b[name]) + (s[name] - b[name])) * 0.5 * 0.25
    torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)


def test_unknown_pipeline_method_is_one_line() -> None:
    with pytest.raises(MergelineError, match="unknown method 'magic'; known: .*task_arithmetic"):
        _params("merge.methods={magic: {}}")


def test_new_methods_sweep_in_the_pipeline() -> None:
    ctx = StageContext(_params("merge.methods={consensus_ta: {grid: {tall_mask_lambda: [0.4, 0.6]}}, "
                               "consensus_ties: {lambdas: [0.8], densities: [0.2]}, tsv: {}, iso_c: {}, "
                               "iso_cts: {grid: {common_space_fraction: [0.5]}}}"))
    variants = {v.name: v for v in plan_variants(ctx)}
    assert set(variants) == {"cta_l1_tml0.4", "cta_l1_tml0.6", "cties_l0.8_d0.2", "tsv_l1", "isoc_l1",
                             "isocts_l1_csf0.5"}
    vectors = _vectors({t: f"vectors/{t}" for t in ("news", "sentiment")})
    cta = merge_config(ctx, variants["cta_l1_tml0.4"], BASE, vectors, {})
    assert cta["parameters"] == {"tall_mask_lambda": 0.4, "lambda": 1.0} and cta["models"][0]["parameters"] == {}
    cties = merge_config(ctx, variants["cties_l0.8_d0.2"], BASE, vectors, {})
    assert cties["merge_method"] == "consensus_ties" and cties["models"][1]["parameters"] == {"density": 0.2}
    tsv = merge_config(ctx, variants["tsv_l1"], BASE, vectors, {})
    assert tsv["models"][0]["parameters"] == {"weight": 1.0}
