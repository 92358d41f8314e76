"""Our merges equal mergekit 0.1.5's on the same float32 tiny models and the same YAML configs.

Deterministic methods (task_arithmetic, linear, slerp, ties, breadcrumbs, breadcrumbs_ties) must agree
to 1e-6 (bit-equal in practice; linear is checked bit for bit). Configs use per-layer gradients and filter lists, so parameter resolution is compared too.
DARE and DELLA draw their masks from torch's global RNG in mergekit's graph order; ours are seeded per
tensor so a merge reproduces in any order. The masks cannot match, so they are compared statistically:
each tensor's L1 norm (which ``rescale: true`` fixes exactly), and the kept fraction, which must be near
``density`` for both (for DELLA also near density ∓ ε/2 in the lower/upper magnitude half of each row).
The other methods mergekit 0.1.5 registers (model_stock, sce, nuslerp, multislerp, karcher, nearswap,
arcee_fusion, passthrough, ram, ramplus_tl) must be bit-equal (one config each, several for methods
with options that change the code path).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mergeline.merge.config import ConditionalParameter, MergeConfig, evaluate_setting
from mergeline.merge.engine import run_merge
from tests.merge_fixtures import finetune, load_tensors, tiny_base, write_checkpoint

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")

WEIGHT_FILTERS = [{"filter": "self_attn", "value": [0.3, 0.9]}, {"filter": "attn", "value": 0.4}, {"value": 1.0}]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for kind in ("llama", "gpt2"):
        base = tiny_base(kind, root / kind)
        out[kind] = str(base)
        out[f"{kind}_a"] = str(finetune(base, root / f"{kind}_a", seed=1))
        out[f"{kind}_b"] = str(finetune(base, root / f"{kind}_b", seed=2, scale=0.05))
    out["llama_c"] = str(finetune(Path(out["llama"]), root / "llama_c", seed=3, scale=0.03))
    return out


def _both(config: dict, tmp_path: Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    run_merge(MergeConfig.model_validate(config), tmp_path / "ours", device=device)
    options = mergekit_options.MergeOptions(lazy_unpickle=False, copy_tokenizer=False, write_model_card=False,
                                            quiet=True, cuda=device == "cuda")
    logging.disable(logging.WARNING)
    try:
        mergekit_merge.run_merge(mergekit_config.MergeConfiguration.model_validate(config), str(tmp_path / "mk"),
                                 options=options)
    finally:
        logging.disable(logging.NOTSET)
    return load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "mk")


def _two(zoo: dict[str, str], kind: str, method: str, pa: dict, pb: dict, **params) -> dict:
    return {
        "merge_method": method, "base_model": zoo[kind], "dtype": "float32", "parameters": params,
        "models": [{"model": zoo[f"{kind}_a"], "parameters": pa}, {"model": zoo[f"{kind}_b"], "parameters": pb}],
    }


DETERMINISTIC = {
    "task_arithmetic": ({"weight": WEIGHT_FILTERS}, {"weight": -0.5}, {"lambda": 0.8}),
    "ties": ({"weight": 1.0, "density": [0.2, 0.7]}, {"weight": 0.6, "density": 0.4}, {}),
    "breadcrumbs": ({"weight": 1.0, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6}, {}),
    "breadcrumbs_ties": ({"weight": 1.0, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6},
                         {"normalize": True}),
}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_task_arithmetic_family_equals_mergekit(zoo: dict[str, str], tmp_path: Path, kind: str, method: str) -> None:
    pa, pb, params = DETERMINISTIC[method]
    ours, theirs = _both(_two(zoo, kind, method, pa, pb, **params), tmp_path)
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_linear_equals_mergekit(zoo: dict[str, str], tmp_path: Path, kind: str) -> None:
    config = {"merge_method": "linear", "dtype": "float32", "models": [
        {"model": zoo[f"{kind}_a"], "parameters": {"weight": WEIGHT_FILTERS}},
        {"model": zoo[f"{kind}_b"], "parameters": {"weight": 0.3}},
        {"model": zoo[kind], "parameters": {"weight": 0.2}},
    ]}
    ours, theirs = _both(config, tmp_path)
    _assert_equal(ours, theirs)  # bit for bit: products rounded before they are added, Σw in float32


@pytest.mark.parametrize("listed_base", [True, False])
def test_slerp_equals_mergekit(zoo: dict[str, str], tmp_path: Path, listed_base: bool) -> None:
    models = [{"model": zoo["llama"]}] if listed_base else []
    config = {"merge_method": "slerp", "base_model": zoo["llama"], "dtype": "float32",
              "models": models + [{"model": zoo["llama_b"]}],
              "parameters": {"t": [{"filter": "mlp", "value": 0.7}, {"value": [0.0, 0.3, 1.0]}]}}
    ours, theirs = _both(config, tmp_path)
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_agrees_statistically(zoo: dict[str, str], tmp_path: Path, method: str) -> None:
    density = 0.4
    # Model b has weight 0, so the merged delta is model a's rescaled DARE delta alone and its L1 norm
    # per tensor is fixed exactly by rescale: true, whichever entries the mask dropped.
    config = _two(zoo, "llama", method, {"weight": 1.0, "density": density}, {"weight": 0.0, "density": density})
    ours, theirs = _both(config, tmp_path)
    base = load_tensors(Path(zoo["llama"]))
    kept = {"ours": [0, 0], "mk": [0, 0]}
    for name, b in base.items():
        d_ours, d_mk = ours[name] - b, theirs[name] - b
        # rescale: true matches each tensor's L1 norm, whatever the mask: exact in both.
        torch.testing.assert_close(d_ours.abs().sum(), d_mk.abs().sum(), rtol=1e-4, atol=1e-6)
        for key, d in (("ours", d_ours), ("mk", d_mk)):
            kept[key][0] += int((d != 0).sum())
            kept[key][1] += d.numel()
        assert not torch.equal(d_ours, d_mk) or b.numel() < 8  # different masks: RNGs are not matched
    for key, (nonzero, total) in kept.items():
        assert abs(nonzero / total - density) < 0.02, (key, nonzero / total)


def _three(zoo: dict[str, str], method: str, weights: list | None = None, base: bool = True, **params) -> dict:
    names = ["llama_a", "llama_b", "llama_c"]
    models = [{"model": zoo[n], **({"parameters": {"weight": w}} if weights else {})}
              for n, w in zip(names, weights or [None] * 3)]
    config = {"merge_method": method, "dtype": "float32", "parameters": params, "models": models}
    return dict(config, base_model=zoo["llama"]) if base else config


def _one(zoo: dict[str, str], method: str, **params) -> dict:
    return {"merge_method": method, "base_model": zoo["llama"], "dtype": "float32", "parameters": params,
            "models": [{"model": zoo["llama_b"]}]}


MERGEKIT_ONLY = {
    "model_stock": lambda z: _three(z, "model_stock"),
    "model_stock_filter_wise": lambda z: _three(z, "model_stock", filter_wise=True),
    "sce": lambda z: _three(z, "sce", select_topk=0.5),
    "nuslerp": lambda z: _two(z, "llama", "nuslerp", {"weight": 0.4}, {"weight": [0.2, 1.0]}),
    "nuslerp_rows_no_base": lambda z: {**_two(z, "llama", "nuslerp", {"weight": 1.0}, {"weight": 0.5},
                                              nuslerp_flatten=False, nuslerp_row_wise=True), "base_model": None},
    "multislerp": lambda z: _three(z, "multislerp", [0.5, [0.2, 1.0], 0.3]),
    "multislerp_no_base": lambda z: _three(z, "multislerp", [1.0, 2.0, 1.0], base=False, normalize_weights=True),
    "karcher": lambda z: _three(z, "karcher", base=False, max_iter=20, tol=1e-7),
    "karcher_base_is_input": lambda z: _three(z, "karcher"),
    "nearswap": lambda z: _one(z, "nearswap", t=[0.01, 0.05]),
    "arcee_fusion": lambda z: _one(z, "arcee_fusion"),
    "passthrough": lambda z: {"merge_method": "passthrough", "dtype": "float32", "models": [
        {"model": z["llama_a"], "parameters": {"scale": [{"filter": "o_proj", "value": 0.0}, {"value": 1.5}]}}]},
    "ram": lambda z: _three(z, "ram", epsilon=0.02),
    "ramplus_tl": lambda z: _three(z, "ramplus_tl", epsilon=0.02, r=0.5, alpha=0.8),
}


@pytest.mark.parametrize("case", list(MERGEKIT_ONLY))
def test_other_mergekit_methods_equal_mergekit(zoo: dict[str, str], tmp_path: Path, case: str) -> None:
    config = MERGEKIT_ONLY[case](zoo)
    ours, theirs = _both({k: v for k, v in config.items() if v is not None}, tmp_path)
    _assert_equal(ours, theirs)
    base = load_tensors(Path(zoo["llama"]))
    assert any(not torch.equal(ours[n], base[n]) for n in base)  # the merge moved something


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_agrees_statistically(zoo: dict[str, str], tmp_path: Path, method: str) -> None:
    density, epsilon = 0.5, 0.3
    # As for DARE: model b's weight 0 leaves model a's rescaled MAGPRUNE delta alone in the output.
    config = _two(zoo, "llama", method, {"weight": 1.0, "density": density, "epsilon": epsilon},
                  {"weight": 0.0, "density": 0.6})
    ours, theirs = _both(config, tmp_path)
    base, model_a = load_tensors(Path(zoo["llama"])), load_tensors(Path(zoo["llama_a"]))
    kept = {"ours": torch.zeros(3), "mk": torch.zeros(3)}  # (kept in lower half, kept in upper half, entries)
    for name, b in base.items():
        delta = model_a[name] - b
        d_ours, d_mk = ours[name] - b, theirs[name] - b
        torch.testing.assert_close(d_ours.abs().sum(), d_mk.abs().sum(), rtol=1e-4, atol=1e-6)
        rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
        upper = rows.abs() >= rows.abs().median(dim=1, keepdim=True).values
        for key, d in (("ours", d_ours), ("mk", d_mk)):
            nonzero = d.reshape(rows.shape) != 0
            kept[key] += torch.tensor([float((nonzero & ~upper).sum()), float((nonzero & upper).sum()),
                                       float(d.numel())])
    for key, (low, high, total) in kept.items():
        assert abs((low + high) / total - density) < 0.01, key
        # rank-linear keep probability: mean d − ε/2 over the lower half, d + ε/2 over the upper
        assert abs(2 * low / total - (density - epsilon / 2)) < 0.02, (key, 2 * low / total)
        assert abs(2 * high / total - (density + epsilon / 2)) < 0.02, (key, 2 * high / total)


def test_parameter_resolution_equals_mergekit_evaluate_setting() -> None:
    settings = [
        [0.1, 0.9], [0.0, 0.3, 0.2, 1.0], 0.4, WEIGHT_FILTERS,
        [{"filter": "mlp", "value": 0.1}, {"filter": "*", "value": [1.0, 0.0]}],
    ]
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight", "lm_head.weight"]
    for raw in settings:
        doc = {"merge_method": "ties", "models": [{"model": "a"}], "parameters": {"x": raw}}
        ours = MergeConfig.model_validate(doc).parameters["x"]
        theirs = mergekit_config.MergeConfiguration.model_validate(doc).parameters["x"]
        assert isinstance(ours, (float, list, ConditionalParameter))
        for name in names:
            for t in (0.0, 0.2, 1 / 3, 0.5, 0.9, 1.0):
                expected = mergekit_config.evaluate_setting(name, theirs, t, validate=float)
                assert evaluate_setting(ours, name, t, numeric=True) == pytest.approx(expected), (raw, name, t)


def _assert_equal(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert set(theirs) <= set(ours) and theirs
    for name, expected in theirs.items():
        assert ours[name].dtype == expected.dtype, name
        if atol == 0.0:
            assert torch.equal(ours[name], expected), (name, (ours[name] - expected).abs().max())
        else:
            torch.testing.assert_close(ours[name], expected, rtol=0, atol=atol)


# mergekit's own test configs give per-model ``weight`` to methods that ignore it; mergekit runs them.
IGNORED_WEIGHT = {
    "slerp": lambda z: {"merge_method": "slerp", "base_model": z["llama"], "dtype": "float32", "parameters": {"t": 0.3},
                        "models": [{"model": z["llama"], "parameters": {"weight": 0.5}},
                                   {"model": z["llama_b"], "parameters": {"weight": 0.5}}]},
    "model_stock": lambda z: _three(z, "model_stock", [1.0, 0.5, 0.3]),
    "sce": lambda z: _three(z, "sce", [1.0, 0.5, 0.3], select_topk=0.5),
    "karcher": lambda z: _three(z, "karcher", [1.0, 0.5, 0.3], base=False),
    "nearswap": lambda z: {**_one(z, "nearswap", t=0.05), "models": [{"model": z["llama_b"], "parameters": {"weight": 1.0}}]},
    "arcee_fusion": lambda z: {**_one(z, "arcee_fusion"), "models": [{"model": z["llama_b"], "parameters": {"weight": 1.0}}]},
    "ram": lambda z: _three(z, "ram", [1.0, 0.5, 0.3], epsilon=0.02),
}


@pytest.mark.parametrize("case", list(IGNORED_WEIGHT))
def test_ignored_weight_is_accepted_with_one_warning_and_equals_mergekit(
        zoo: dict[str, str], tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str) -> None:
    ours, theirs = _both(IGNORED_WEIGHT[case](zoo), tmp_path)
    _assert_equal(ours, theirs)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"parameter 'weight'" in warnings[0] and f"merge_method {case!r}" in warnings[0]


@pytest.fixture(scope="module")
def zoo16(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """bf16 weights: task vectors on few magnitudes, so many entries tie at every cut-off."""
    root = tmp_path_factory.mktemp("parity16")
    out = {}
    small = tiny_base("llama", root / "f32")
    # and one matrix of 720,896 entries (hidden 512 × 1,408), merged in many row blocks
    big = tiny_base("llama", root / "big32", hidden_size=512, intermediate_size=1408, num_hidden_layers=1)
    for prefix, base in (("", small), ("big_", big)):
        for name, seed, scale in (("base", 0, 0.0), ("a", 1, 0.02), ("b", 2, 0.05), ("c", 3, 0.03)):
            source = base if name == "base" else finetune(base, root / f"{prefix}{name}32", seed=seed, scale=scale)
            tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_tensors(source).items()}
            out[prefix + name] = str(write_checkpoint(root / f"{prefix}{name}", tensors, config_from=base))
    return out


TRIMS = {
    "ties": ({"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}),
    "breadcrumbs": ({"weight": 1.0, "density": 0.6, "gamma": 0.05}, {"weight": 0.7, "density": 0.3, "gamma": 0.1}),
    "breadcrumbs_ties": ({"weight": 1.0, "density": 0.6, "gamma": 0.05}, {"weight": 0.7, "density": 0.3}),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", list(TRIMS))
def test_trims_keep_mergekits_entries_at_exact_ties(zoo16: dict[str, str], tmp_path: Path, method: str,
                                                     dtype: str) -> None:
    pa, pb = TRIMS[method]
    config = {"merge_method": method, "base_model": zoo16["base"], "dtype": dtype,
              "models": [{"model": zoo16["a"], "parameters": pa}, {"model": zoo16["b"], "parameters": pb}]}
    ours, theirs = _both(config, tmp_path)
    _assert_equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", list(TRIMS))
def test_trims_on_cuda_keep_the_entries_mergekit_cuda_keeps(zoo16: dict[str, str], tmp_path: Path, method: str,
                                                            dtype: str) -> None:
    """On the GPU mergekit sorts the magnitudes there, in their own dtype: a CUDA merge keeps its entries
    at ties (the small tensors and the 720,896-entry matrix, whose sort is a radix sort on CUDA)."""
    pa, pb = TRIMS[method]
    for prefix in ("", "big_"):
        config = {"merge_method": method, "base_model": zoo16[prefix + "base"], "dtype": dtype,
                  "models": [{"model": zoo16[prefix + "a"], "parameters": pa},
                             {"model": zoo16[prefix + "b"], "parameters": pb}]}
        ours, theirs = _both(config, tmp_path / f"{prefix}cuda", device="cuda")
        _assert_equal(ours, theirs)


def test_ties_on_a_large_matrix_in_row_blocks_equals_mergekit(zoo16: dict[str, str], tmp_path: Path) -> None:
    config = {"merge_method": "ties", "base_model": zoo16["big_base"], "dtype": "float32",
              "models": [{"model": zoo16["big_a"], "parameters": {"weight": 1.0, "density": 0.2}},
                         {"model": zoo16["big_b"], "parameters": {"weight": 0.5, "density": 0.4}}]}
    name = "model.layers.0.mlp.down_proj.weight"
    delta = (load_tensors(Path(zoo16["big_a"]))[name].float() - load_tensors(Path(zoo16["big_base"]))[name].float())
    magnitudes = delta.abs().reshape(-1)
    k = int(0.2 * magnitudes.numel())
    cut = magnitudes.kthvalue(magnitudes.numel() - k + 1).values
    assert int((magnitudes > cut).sum()) < k < int((magnitudes >= cut).sum())  # ties straddle the cut-off
    ours, theirs = _both(config, tmp_path)
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("method", ["arcee_fusion", "ramplus_tl"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_float32_output_of_arcee_fusion_and_ramplus_as_mergekit(zoo16: dict[str, str], tmp_path: Path,
                                                                 method: str, dtype: str | None) -> None:
    models = ["a"] if method == "arcee_fusion" else ["a", "b", "c"]
    config = {"merge_method": method, "base_model": zoo16["base"], "models": [{"model": zoo16[m]} for m in models],
              **({"dtype": dtype} if dtype else {})}
    ours, theirs = _both(config, tmp_path)
    assert {t.dtype for t in theirs.values() if t.is_floating_point()} == {torch.float32}
    assert all(ours[n].dtype == theirs[n].dtype for n in theirs)
