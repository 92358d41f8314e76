"""Every plot writes a readable PNG atomically and rejects empty input."""

from __future__ import annotations

import pytest
import torch
from matplotlib.image import imread

from mergeline.errors import MergelineError
from mergeline.plots import plot_importance_histograms, plot_layer_heatmap, plot_loss_curve, plot_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_importance_histograms(tmp_path):
    gen = torch.Generator().manual_seed(0)
    scores = {f"model.layers.{i}.w": torch.rand(100, generator=gen) * 10**i for i in range(3)}
    scores["model.embed_tokens.weight"] = torch.zeros(10)
    _check_png(plot_importance_histograms(scores, tmp_path / "h" / "importance.png"))


def test_layer_heatmap(tmp_path):
    matrix = {"news": {0: 1.0, 1: 0.5, 2: 0.0}, "code": {0: 0.2, 2: 0.9}}
    _check_png(plot_layer_heatmap(matrix, tmp_path / "m" / "lata.png", title="LATA weights"))


def test_sweep_and_loss(tmp_path):
    curves = {"ta": [(0.0, 0.5), (1.0, 0.6), (0.5, 0.7)], "ties": [(0.5, 0.65), (1.0, 0.66)]}
    _check_png(plot_sweep(curves, tmp_path / "s" / "sweep.png", "λ", "acc"))
    _check_png(plot_loss_curve([3.0, 2.5, 2.0], tmp_path / "l1" / "loss.png"))
    _check_png(plot_loss_curve({"full": [3.0, 2.0], "talos": [3.0, 2.6]}, tmp_path / "l2" / "loss.png"))


@pytest.mark.parametrize(
    "call",
    [
        lambda p: plot_importance_histograms({}, p),
        lambda p: plot_layer_heatmap({}, p),
        lambda p: plot_sweep({}, p),
        lambda p: plot_loss_curve([], p),
    ],
)
def test_empty_input_is_an_error_and_writes_nothing(tmp_path, call):
    with pytest.raises(MergelineError):
        call(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
