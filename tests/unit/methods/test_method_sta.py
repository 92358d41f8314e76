"""STA: §10 vector, selection modes, forgetting, kept-fraction report, input errors."""

import pydantic
import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods import get_method

G, TAU = [0.1, -2.0, 0.5], [1.0, 0.1, -1.0]


def _run(run_method, vec, params=None, weight=1.0, density=0.34):
    importance = (vec(*G) * vec(*TAU)).abs()  # |g·τ| = [0.1, 0.2, 0.5]
    return run_method(
        "sta",
        {"w": [vec(*TAU)]},
        params=params or {},
        model_params=[{"weight": weight, "density": density}],
        model_inputs={"importance": [{"w": importance}]},
    )


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_sta_vector_top1(run_method, vec, scope):
    out, report, _ = _run(run_method, vec, {"scope": scope})
    assert torch.equal(out["w"], vec(0, 0, -1))
    assert report["kept_fraction"] == {"0": pytest.approx(1 / 3)}


@pytest.mark.parametrize(
    "normalize, threshold, expected",
    [("sum", 0.5, [0, 0, -1]), ("max", 0.3, [0, 0.1, -1]), ("none", 0.15, [0, 0.1, -1])],
)
def test_sta_threshold_on_normalized_scores(run_method, vec, normalize, threshold, expected):
    out, _, _ = _run(run_method, vec, {"select": "threshold", "normalize": normalize, "threshold": threshold})
    assert torch.allclose(out["w"], vec(*expected))


def test_sta_forgetting_negates_only_selected(run_method, vec):
    out, _, _ = _run(run_method, vec, {"lambda": 0.5}, weight=-1.0)
    assert torch.equal(out["w"], vec(0, 0, 0.5))


def test_sta_global_selection_spans_tensors(run_method):
    g = torch.Generator().manual_seed(0)
    tau = {n: torch.randn(10, 10, generator=g) for n in ("a", "b")}
    imp = {"a": torch.full((10, 10), 1.0), "b": torch.rand(10, 10, generator=g) + 2.0}  # b wins
    out, report, _ = run_method(
        "sta", {n: [v] for n, v in tau.items()}, model_params=[{"density": 0.5}],
        model_inputs={"importance": [imp]},
    )
    assert torch.equal(out["b"], tau["b"]) and torch.equal(out["a"], torch.zeros(10, 10))
    assert report["kept_fraction"] == {"0": 0.5}


def test_sta_missing_or_misshaped_importance(run_method, vec):
    with pytest.raises(MergelineError, match="'w'"):
        run_method("sta", {"w": [vec(1, 2)]}, model_params=[{}], model_inputs={"importance": [{}]})
    with pytest.raises(MergelineError, match="shape"):
        run_method("sta", {"w": [vec(1, 2)]}, model_params=[{}], model_inputs={"importance": [{"w": vec(1)}]})


def test_sta_threshold_required():
    with pytest.raises(pydantic.ValidationError, match="threshold"):
        get_method("sta").Parameters.model_validate({"select": "threshold"})


@pytest.mark.parametrize("density_of, kept", [("trainable", [0, 0, 0, 1.0]), ("all", [0, 0, 0, 0])])
def test_sta_density_counts_trainable_entries_only(run_method, vec, density_of, kept):
    # A frozen "embedding" (τ = 0, large |g·θ|-style scores) and a trained tensor of 4 entries.
    # ρ = 0.25 of the trained entries keeps 1 of them; over all 8 entries the budget is 2, and the
    # frozen tensor's scores take both slots, so nothing trained survives.
    out, report, _ = run_method(
        "sta",
        {"embed.weight": [vec(0, 0, 0, 0)], "layers.0.w": [vec(1, 1, 1, 1)]},
        params={"density_of": density_of},
        model_params=[{"density": 0.25}],
        model_inputs={"importance": [{"embed.weight": vec(9, 9, 9, 9), "layers.0.w": vec(1, 2, 3, 4)}]},
    )
    assert torch.equal(out["layers.0.w"], vec(*kept))
    if density_of == "trainable":
        assert report["kept_fraction"] == {"0": pytest.approx(1 / 8)}  # the frozen tensor selects nothing
