"""RegMean against hand-computed values: 2 tasks, 3x2 weights (torch layout: 3 outputs, 2 inputs)."""

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.methods import get_method, pipeline_methods
from mergeline.methods.regmean import regmean_solve, shrink_off_diagonal

# Inputs of task 1 and 2 (rows = examples); Gram matrices G_t = X_tᵀ X_t.
X1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # G1 = [[2, 1], [1, 2]]
X2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])               # G2 = [[4, 0], [0, 1]]
W1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
W2 = torch.tensor([[0.0, 2.0], [2.0, 0.0], [1.0, -1.0]])
FILES = [{"gram": "task1/gram.safetensors"}, {"gram": "task2/gram.safetensors"}]


def _run(run_method, tensors, grams, **params):
    return run_method("regmean", tensors, params=params, model_params=FILES,
                      model_inputs={"gram": [{n: g[0] for n, g in grams.items()}, {n: g[1] for n, g in grams.items()}]})


def test_grams_of_the_example_inputs():
    assert torch.equal(X1.T @ X1, torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    assert torch.equal(X2.T @ X2, torch.tensor([[4.0, 0.0], [0.0, 1.0]]))


def test_alpha_one_is_the_closed_form_and_the_least_squares_solution(run_method, vec):
    grams = {"w": (X1.T @ X1, X2.T @ X2)}
    out, report, _ = _run(run_method, {"w": [W1, W2], "b": [vec(1, 2, 3), vec(3, 2, 1)]}, grams,
                          reduce_non_diagonal_ratio=1.0)
    # (G1 + G2)⁻¹ = [[3, −1], [−1, 6]] / 17;  G1 W1ᵀ + G2 W2ᵀ = [[2, 9, 7], [3, 2, 2]]  →  W*ᵀ below
    hand = torch.tensor([[3.0, 16.0], [25.0, 3.0], [19.0, 5.0]]) / 17
    torch.testing.assert_close(out["w"], hand, rtol=0, atol=1e-6)
    # argmin_W Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖²: stacked least squares
    lhs = torch.cat([X1, X2]).double()
    rhs = torch.cat([X1 @ W1.T, X2 @ W2.T]).double()
    lsq = torch.linalg.lstsq(lhs, rhs).solution.T.float()
    torch.testing.assert_close(out["w"], lsq, rtol=0, atol=1e-6)
    assert torch.equal(out["b"], vec(2, 2, 2))  # non-linear parameters: the simple mean
    assert report == {"method": "regmean", "reduce_non_diagonal_ratio": 1.0, "regmean_matrices": 1,
                      "averaged_tensors": 1, "ridged": []}


def test_default_alpha_shrinks_the_off_diagonal(run_method):
    grams = {"w": (X1.T @ X1, X2.T @ X2)}
    out, report, _ = _run(run_method, {"w": [W1, W2]}, grams, reduce_non_diagonal_ratio=0.5)
    # G̃1 = [[2, .5], [.5, 2]], G̃2 = G2: Σ = [[6, .5], [.5, 3]] (det 17.75), Σ G̃ W_tᵀ = [[2, 8.5, 6.5], [2.5, 2, 1.5]]
    hand = torch.tensor([[4.75, 14.0], [24.5, 7.75], [18.75, 5.75]]) / 17.75
    torch.testing.assert_close(out["w"], hand, rtol=0, atol=1e-6)
    assert get_method("regmean").Parameters().reduce_non_diagonal_ratio == 0.95
    assert torch.equal(shrink_off_diagonal(X1.T @ X1, 0.5), torch.tensor([[2.0, 0.5], [0.5, 2.0]]))


def test_alpha_zero_is_a_per_column_weighted_average(run_method):
    out, _, _ = _run(run_method, {"w": [W1, W2]}, {"w": (X1.T @ X1, X2.T @ X2)}, reduce_non_diagonal_ratio=0.0)
    # input column j: (G1[j,j] W1[:, j] + G2[j,j] W2[:, j]) / (G1[j,j] + G2[j,j]), weights (2, 4) and (2, 1)
    hand = torch.stack([(2 * W1[:, 0] + 4 * W2[:, 0]) / 6, (2 * W1[:, 1] + 1 * W2[:, 1]) / 3], dim=1)
    torch.testing.assert_close(out["w"], hand, rtol=0, atol=1e-6)
    torch.testing.assert_close(hand, torch.tensor([[1 / 3, 2 / 3], [4 / 3, 2 / 3], [1.0, 1 / 3]]))


def test_identical_grams_give_the_simple_average(run_method):
    g = X1.T @ X1
    out, _, _ = _run(run_method, {"w": [W1, W2]}, {"w": (g, g)}, reduce_non_diagonal_ratio=0.7)
    torch.testing.assert_close(out["w"], (W1 + W2) / 2, rtol=0, atol=1e-6)


def test_singular_sum_takes_the_ridge_towards_the_mean(run_method):
    # input 1 is never active in either task: Σ G is singular; its column is then the plain mean
    g1, g2 = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    out, report, _ = _run(run_method, {"w": [W1, W2]}, {"w": (g1, g2)}, reduce_non_diagonal_ratio=1.0)
    torch.testing.assert_close(out["w"][:, 1], (W1[:, 1] + W2[:, 1]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["w"][:, 0], (2 * W1[:, 0] + 4 * W2[:, 0]) / 6, rtol=0, atol=1e-5)
    assert report["ridged"] == ["w"]
    merged, ridged = regmean_solve([W1, W2], [torch.zeros(2, 2), torch.zeros(2, 2)], 1.0)
    assert ridged and torch.equal(merged, (W1 + W2) / 2)


def test_matrices_without_grams_are_averaged(run_method):
    out, report, _ = _run(run_method, {"embed_tokens.weight": [W1, W2]}, {})
    assert torch.equal(out["embed_tokens.weight"], (W1 + W2) / 2) and report["averaged_tensors"] == 1


@pytest.mark.parametrize("second, fragment", [
    (None, "task2/gram.safetensors: no Gram matrix 'w'"),
    (torch.eye(3), "task2/gram.safetensors: Gram matrix 'w' has shape [3, 3], the weight [3, 2] needs [2, 2]"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "task2/gram.safetensors: Gram matrix 'w' contains NaN"),
])
def test_bad_gram_is_one_line_naming_file_and_tensor(run_method, second, fragment):
    with pytest.raises(MergelineError, match="^" + fragment.replace("[", r"\[").replace("]", r"\]")):
        run_method("regmean", {"w": [W1, W2]}, model_params=FILES,
                   model_inputs={"gram": [{"w": X1.T @ X1}, {} if second is None else {"w": second}]})


def test_gram_is_required_and_the_pipeline_sweeps_alpha():
    cls = get_method("regmean")
    with pytest.raises(ValueError, match="gram"):
        cls.PerModel.model_validate({})
    with pytest.raises(ValueError, match="reduce_non_diagonal_ratio"):
        cls.Parameters.model_validate({"reduce_non_diagonal_ratio": 1.5})
    entry = pipeline_methods()["regmean"][1]
    assert entry.gram and not entry.importance and entry.sweeps == ("reduce_non_diagonal_ratio",)
