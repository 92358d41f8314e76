"""LATA layer cosines, MetaGPT norms and importance summaries against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from mergeline.errors import MergelineError
from mergeline.importance.diagnostics import importance_stats, layer_similarities, vector_norms

A = {
    "model.layers.0.attn.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    "model.layers.0.norm.weight": torch.tensor([1.0, 1.0]),
    "model.layers.1.mlp.weight": torch.tensor([3.0, 4.0]),
    "model.embed_tokens.weight": torch.tensor([[10.0, 10.0]]),
}
B = {
    "model.layers.0.attn.weight": torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
    "model.layers.0.norm.weight": torch.tensor([0.0, 1.0]),
    "model.layers.1.mlp.weight": torch.tensor([0.0, 0.0]),
    "model.embed_tokens.weight": torch.tensor([[-1.0, 2.0]]),
}


@pytest.fixture()
def files(tmp_path):
    save_file(A, tmp_path / "a.safetensors")
    (tmp_path / "vec_b").mkdir()
    save_file(B, tmp_path / "vec_b" / "task_vector.safetensors")
    return tmp_path / "a.safetensors", tmp_path / "vec_b"


def test_layer_similarities_concatenate_each_block(files):
    sims = layer_similarities(*files)
    # Block 0: a = [1,0,0,1,1,1], b = [1,1,0,0,0,1] -> dot 2, |a|² 4, |b|² 3.
    assert sims == {0: pytest.approx(2 / math.sqrt(12)), 1: 0.0}  # block 1 of b is all zero
    assert layer_similarities(files[0], files[0]) == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_layer_similarities_size_mismatch_names_the_tensor(tmp_path, files):
    save_file({"model.layers.0.norm.weight": torch.ones(3)}, tmp_path / "c.safetensors")
    with pytest.raises(MergelineError, match="tensor model.layers.0.norm.weight"):
        layer_similarities(files[0], tmp_path / "c.safetensors")
    save_file({"model.embed_tokens.weight": torch.ones(1, 2)}, tmp_path / "d.safetensors")
    with pytest.raises(MergelineError, match="no common transformer-block tensors"):
        layer_similarities(tmp_path / "d.safetensors", files[0])


def test_vector_norms_by_granularity(files):
    a = files[0]
    assert vector_norms(a) == {"model": pytest.approx(2 + 2 + 25 + 200)}
    assert vector_norms(a, "layer") == {"0": 4.0, "1": 25.0, "other": 200.0}
    assert vector_norms(a, "tensor")["model.layers.1.mlp.weight"] == 25.0
    assert vector_norms(a, "model", exclude=["embed"]) == {"model": 29.0}
    with pytest.raises(MergelineError, match="granularity"):
        vector_norms(a, "block")  # type: ignore[arg-type]


def test_metagpt_coefficients_from_norms(tmp_path):
    # METHODS §10: τ1 = [3, 0], τ2 = [0, 4] -> λ = [0.36, 0.64].
    save_file({"w": torch.tensor([3.0, 0.0])}, tmp_path / "t1.safetensors")
    save_file({"w": torch.tensor([0.0, 4.0])}, tmp_path / "t2.safetensors")
    n1, n2 = (vector_norms(tmp_path / f"t{i}.safetensors")["model"] for i in (1, 2))
    assert [n1 / (n1 + n2), n2 / (n1 + n2)] == pytest.approx([0.36, 0.64])


def test_importance_stats_per_layer():
    scores = {
        "model.layers.0.a.weight": torch.tensor([0.0, 1.0, 2.0, 3.0]),
        "model.layers.1.a.weight": torch.tensor([4.0]),
        "lm_head.weight": torch.tensor([10.0, 0.0]),
    }
    stats = importance_stats(scores)
    assert list(stats["layers"]) == ["0", "1", "other"]
    l0 = stats["layers"]["0"]
    assert (l0["n"], l0["sum"], l0["mean"], l0["max"], l0["nonzero"]) == (4, 6.0, 1.5, 3.0, 0.75)
    assert l0["p50"] == pytest.approx(1.5)
    assert l0["share"] == pytest.approx(6 / 20)
    assert stats["total"]["sum"] == 20.0 and stats["total"]["n"] == 7
    assert sum(s["share"] for s in stats["layers"].values()) == pytest.approx(1.0)
