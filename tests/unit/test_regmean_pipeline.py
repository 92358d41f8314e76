"""RegMean in the pipeline and in ``mergeline merge``: each task's Gram file goes to its model as ``gram``,
the engine merges with it, and a bad Gram file is one line naming file and tensor, exit 2, no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mergeline.finetune.weights import save_tensors
from mergeline.importance import save_importance
from mergeline.io.tensor_aliases import ALIASES_KEY
from mergeline.methods.regmean import regmean_solve
from mergeline.params import load_params
from mergeline.pipeline.records import BaseRecord, Fit, Importance, Vector
from mergeline.stages.common import StageContext
from mergeline.stages.merge import merge_config, merge_variant, plan_variants
from tests.merge_fixtures import finetune, load_tensors, tiny_base

REPO = Path(__file__).resolve().parents[2]
K = "model.layers.0.self_attn.k_proj.weight"
ALIAS_TABLES = {  # header metadata of a Gram file whose Q matrix is not stored
    "alias_to_missing": json.dumps({"model.layers.0.self_attn.q_proj.weight": "nowhere.weight"}),
    "alias_json": '{"model.layers.0.self_attn.q_proj.weight": ',
    "alias_not_names": json.dumps(["model.layers.0.self_attn.q_proj.weight"]),
    "alias_cycle": json.dumps({"model.layers.0.self_attn.q_proj.weight": "x.weight",
                               "x.weight": "model.layers.0.self_attn.q_proj.weight"}),
    "alias_stored": json.dumps({"model.layers.0.self_attn.q_proj.weight": K, K: "model.layers.0.mlp.up_proj.weight"}),
}
TASKS = ("news", "sentiment")
Q = "model.layers.0.self_attn.q_proj.weight"


def _ctx(root: Path) -> StageContext:
    params = load_params(REPO / "params" / "tiny.yaml", ["tasks=[news,sentiment]",
                         "merge.methods={regmean: {grid: {reduce_non_diagonal_ratio: [0.5, 1.0]}}}"])
    return StageContext(params, root=root)


def _grams(model: Path, seed: int) -> dict[str, torch.Tensor]:
    """A random positive semi-definite XᵀX for every linear weight (2-D, not the embedding)."""
    gen = torch.Generator().manual_seed(seed)
    grams = {}
    for name, t in load_tensors(model).items():
        if t.dim() == 2 and "embed_tokens" not in name:
            x = torch.randn(3 * t.shape[1], t.shape[1], generator=gen)
            grams[name] = x.T @ x
    return grams


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("regmean")
    base = tiny_base("llama", root / "base")
    for seed, task in enumerate(TASKS, start=1):
        finetune(base, root / task, seed=seed)
        save_importance(_grams(root / task, seed), root / "importance" / "_gram" / task / "gram.safetensors")
    return root


def test_the_sweep_gives_each_model_its_gram_file_and_merges_with_it(project: Path) -> None:
    ctx = _ctx(project)
    assert ctx.params.gram_needed and not ctx.params.importance_needed
    variants = {v.name: v for v in plan_variants(ctx)}
    assert set(variants) == {"regmean_l1_rndr0.5", "regmean_l1_rndr1"}
    vectors = {Fit(t, "full"): Vector(task=t, mode="full", path=t, sha256="") for t in TASKS}
    grams = {t: Importance(task=t, kind="regmean_gram", path=f"importance/_gram/{t}/gram.safetensors", sha256="",
                           plot="") for t in TASKS}
    config = merge_config(ctx, variants["regmean_l1_rndr0.5"], BaseRecord(id="b", path="base", sha256=""),
                          vectors, {}, grams)
    assert config["merge_method"] == "regmean"
    assert config["parameters"] == {"reduce_non_diagonal_ratio": 0.5}  # no λ, no weights: a closed form
    assert [m["parameters"] for m in config["models"]] == [
        {"gram": f"importance/_gram/{t}/gram.safetensors"} for t in TASKS]

    record = merge_variant(ctx, variants["regmean_l1_rndr0.5"], config)
    merged, base = load_tensors(project / record.path), load_tensors(project / "base")
    models = [load_tensors(project / t) for t in TASKS]
    files = [load_tensors(project / "importance" / "_gram" / t) for t in TASKS]
    delta, _ = regmean_solve([m[Q] - base[Q] for m in models], [f[Q] for f in files], 0.5)
    torch.testing.assert_close(merged[Q], base[Q] + delta, rtol=0, atol=1e-6)
    norm = "model.layers.0.input_layernorm.weight"
    torch.testing.assert_close(merged[norm], (models[0][norm] + models[1][norm]) / 2, rtol=0, atol=1e-6)
    assert record.report["method"]["regmean_matrices"] == len(files[0]) and record.report["method"]["ridged"] == []


def _write_bad(project: Path, tmp_path: Path, change: str) -> Path:
    grams = load_tensors(project / "importance" / "_gram" / "sentiment")
    metadata = None
    if change == "missing":
        del grams[Q]
    elif change in ALIAS_TABLES:
        del grams[Q]
        metadata = {ALIASES_KEY: ALIAS_TABLES[change]}
    elif change == "shape":
        grams[Q] = torch.eye(3)
    else:
        grams[Q] = grams[Q].clone()
        grams[Q][0, 1] = float("nan")
    bad = tmp_path / "bad_gram.safetensors"
    save_tensors(grams, bad, metadata)
    return bad


@pytest.mark.parametrize(("change", "message"), [
    ("missing", r"bad_gram.safetensors: no Gram matrix 'model.layers.0.self_attn.q_proj.weight'"),
    ("shape", r"bad_gram.safetensors: Gram matrix 'model.layers.0.self_attn.q_proj.weight' has shape \[3, 3\]"),
    ("nan", r"bad_gram.safetensors: .*'model.layers.0.self_attn.q_proj.weight' contains NaN or Inf"),
    ("absent", r"gram: Field required|gram.*required"),
    ("alias_to_missing", r"bad_gram.safetensors: alias 'model.layers.0.self_attn.q_proj.weight' points at "
                         r"tensor 'nowhere.weight', which the file does not hold"),
    ("alias_json", r"bad_gram.safetensors: header metadata 'mergeline.gram_aliases' is not valid JSON"),
    ("alias_not_names", r"bad_gram.safetensors: header metadata 'mergeline.gram_aliases' must map tensor names"),
    ("alias_cycle", r"bad_gram.safetensors: alias 'model.layers.0.self_attn.q_proj.weight' is a cycle \(model"),
    ("alias_stored", r"bad_gram.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' is both stored"),
])
def test_bad_gram_file_is_one_line_exit_2_no_output(project: Path, tmp_path: Path, change: str, message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from mergeline.cli import main

    good = str(project / "importance" / "_gram" / "news" / "gram.safetensors")
    second = {} if change == "absent" else {"gram": str(_write_bad(project, tmp_path, change))}
    config = {"merge_method": "regmean", "base_model": str(project / "base"), "dtype": "float32",
              "models": [{"model": str(project / "news"), "parameters": {"gram": good}},
                         {"model": str(project / "sentiment"), "parameters": second}]}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = main(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_in_memory_merge_takes_gram_state_dicts() -> None:
    from mergeline.merge.memory import merge_state_dicts

    gen = torch.Generator().manual_seed(0)
    base = {"l.weight": torch.randn(3, 2, generator=gen), "l.bias": torch.randn(3, generator=gen)}
    models = [{k: v + torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(2)]
    grams = [{"l.weight": (x := torch.randn(4, 2, generator=gen)).T @ x} for _ in range(2)]
    merged = merge_state_dicts("regmean", base, models, model_parameters=[{"gram": g} for g in grams],
                               reduce_non_diagonal_ratio=1.0)
    delta, _ = regmean_solve([m["l.weight"] - base["l.weight"] for m in models], [g["l.weight"] for g in grams], 1.0)
    torch.testing.assert_close(merged["l.weight"], base["l.weight"] + delta, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged["l.bias"], (models[0]["l.bias"] + models[1]["l.bias"]) / 2, rtol=0, atol=1e-6)


def test_gpu_loop_writes_what_the_cpu_engine_writes(project: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mergeline.merge.config import MergeConfig
    from mergeline.merge.engine import run_merge
    from tests.unit.merge.test_merge_prefetch import _use_gpu_loop

    config = MergeConfig.model_validate({
        "merge_method": "regmean", "base_model": str(project / "base"), "dtype": "float32",
        "models": [{"model": str(project / t), "parameters": {"gram": str(project / "importance" / "_gram" / t / "gram.safetensors")}}
                   for t in TASKS]})
    cpu = run_merge(config, tmp_path / "cpu")
    _use_gpu_loop(monkeypatch)
    loop = run_merge(config, tmp_path / "loop")
    assert cpu.weight_sha256 == loop.weight_sha256 and cpu.report["method"] == loop.report["method"]
    assert cpu.report["method"]["regmean_matrices"] > 0


def test_lineage_names_the_gram_files_a_regmean_merge_read(tmp_path: Path) -> None:
    import hashlib

    from mergeline.pipeline.lineage import importance_artifacts
    from mergeline.pipeline.records import Experiment

    for name in ("sta.safetensors", "gram.safetensors"):
        (tmp_path / name).write_bytes(name.encode())
    exp = Experiment(importance={"news": Importance(task="news", kind="sta_taylor", path="sta.safetensors",
                                                    sha256="", plot="")},
                     grams={"news": Importance(task="news", kind="regmean_gram", path="gram.safetensors",
                                               sha256="", plot="")})
    [gram] = importance_artifacts("regmean", exp, "news", tmp_path)
    assert (gram.kind, gram.path) == ("regmean_gram", "gram.safetensors")
    assert gram.sha256 == hashlib.sha256(b"gram.safetensors").hexdigest()
    assert [a.kind for a in importance_artifacts("sta", exp, "news", tmp_path)] == ["sta_taylor"]
    assert importance_artifacts("ties", exp, "news", tmp_path) == []


def test_a_gram_file_with_aliases_and_one_without_merge_alike(project: Path, tmp_path: Path) -> None:
    """Old files (every matrix stored) and files whose equal matrices are stored once read the same."""
    from mergeline.merge.config import MergeConfig
    from mergeline.merge.engine import run_merge

    full = project / "importance" / "_gram" / "sentiment" / "gram.safetensors"
    grams = load_tensors(full.parent)
    grams[K] = grams[Q]  # k reads q's input: one matrix
    aliased = dict(grams)
    del aliased[K]
    files = {"full": save_importance(grams, tmp_path / "full.safetensors"),
             "aliased": save_tensors(aliased, tmp_path / "aliased.safetensors", {ALIASES_KEY: json.dumps({K: Q})})}
    news = str(project / "importance" / "_gram" / "news" / "gram.safetensors")
    results = {name: run_merge(MergeConfig.model_validate({
        "merge_method": "regmean", "base_model": str(project / "base"), "dtype": "float32",
        "models": [{"model": str(project / "news"), "parameters": {"gram": news}},
                   {"model": str(project / "sentiment"), "parameters": {"gram": str(path)}}]}), tmp_path / name)
        for name, path in files.items()}
    assert results["full"].weight_sha256 == results["aliased"].weight_sha256
    assert results["aliased"].report["method"]["regmean_matrices"] == len(grams)
