"""PNG plots for MLflow artifacts: importance per layer, LATA layer weights, λ sweeps, loss curves.

Matplotlib's object API with the Agg canvas (no pyplot, no global backend state, no display).
Every function writes its PNG atomically and returns the path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mergeline.errors import MergelineError
from mergeline.importance.diagnostics import group_by_layer
from mergeline.io.atomic import atomic_file


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return Path(path)


def plot_importance_histograms(scores: Mapping[str, torch.Tensor], path: str | os.PathLike[str], bins: int = 60) -> Path:
    """Histogram of log10(importance) per layer, drawn as one heat-map row per layer.

    Rows: transformer blocks in order, then ``other`` (embeddings, final norm, head). Colour: the
    fraction of that layer's non-zero entries in each bin (from a fixed-stride sample of about 1M
    entries per layer, so a 100M-entry model plots in seconds); zero scores are counted in the title.
    """
    groups = group_by_layer(scores)
    if not groups:
        raise MergelineError("plot_importance_histograms: no scores")
    logs = {}
    zeros = 0
    for key, names in groups.items():
        zeros += sum(scores[n].numel() - int(torch.count_nonzero(scores[n])) for n in names)
        stride = max(1, sum(scores[n].numel() for n in names) // (1 << 20))
        sample = torch.cat([scores[n].reshape(-1)[::stride].float() for n in names])
        logs[key] = torch.log10(sample[sample > 0])
    present = [v for v in logs.values() if v.numel()]
    lo = min(float(v.min()) for v in present) if present else -1.0
    hi = max(float(v.max()) for v in present) if present else 0.0
    hi = hi if hi > lo else lo + 1.0
    rows = [
        (torch.histc(v, bins=bins, min=lo, max=hi) / max(1, v.numel())) if v.numel() else torch.zeros(bins)
        for v in logs.values()
    ]
    fig = Figure(figsize=(8, 1.5 + 0.25 * len(rows)))
    ax = fig.add_subplot()
    image = ax.imshow(torch.stack(rows).numpy(), aspect="auto", extent=(lo, hi, len(rows) - 0.5, -0.5), cmap="viridis")
    ax.set_yticks(range(len(rows)), list(logs))
    ax.set_xlabel("log10 importance")
    ax.set_ylabel("layer")
    ax.set_title(f"Importance distribution per layer ({zeros} zero entries not shown)")
    fig.colorbar(image, ax=ax, label="fraction of layer entries")
    return _save(fig, path)


def plot_layer_heatmap(
    matrix: Mapping[str, Mapping[int, float]], path: str | os.PathLike[str], title: str = "LATA layer weights"
) -> Path:
    """Heat map with one row per task and one column per layer (e.g. LATA weights or cosines)."""
    if not matrix:
        raise MergelineError("plot_layer_heatmap: empty matrix")
    tasks = list(matrix)
    layers = sorted({int(layer) for row in matrix.values() for layer in row})
    data = [[float(matrix[t].get(layer, math.nan)) for layer in layers] for t in tasks]
    # room for the row labels beside the cells (about 0.08 inch a character)
    fig = Figure(figsize=(max(5, 0.3 * len(layers) + 2 + 0.08 * max(map(len, tasks))), 1.2 + 0.45 * len(tasks)))
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(tasks)), tasks)
    step = max(1, len(layers) // 15)
    ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    ax.set_xlabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_sweep(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    xlabel: str = "λ",
    ylabel: str = "mean normalized accuracy",
    title: str | None = None,
    mark_best: bool = True,
) -> Path:
    """One line per method through its (x, y) points, sorted by x; the best (highest) point of each is
    marked unless ``mark_best`` is off (where lower is the aim, as for a negated task)."""
    if not curves:
        raise MergelineError("plot_sweep: no curves")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method, points in curves.items():
        if not points:
            continue
        xs, ys = zip(*sorted(points))
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=method)
        if mark_best:
            best = max(range(len(ys)), key=lambda i: ys[i])
            ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color=line.get_color())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_loss_curve(
    losses: Mapping[str, Sequence[float]] | Sequence[float], path: str | os.PathLike[str], title: str = "training loss"
) -> Path:
    """Loss per step; a mapping draws one line per run (e.g. per task, full vs TaLoS)."""
    series = dict(losses) if isinstance(losses, Mapping) else {"loss": list(losses)}
    if not any(series.values()):
        raise MergelineError("plot_loss_curve: no losses")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), list(values), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_bars(
    series: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], ylabel: str, title: str,
    signed: bool = False,
) -> Path:
    """Grouped bars: one group per category (e.g. task), one bar per series (e.g. base, expert, merged).

    A series without a value for a category leaves a gap. ``signed`` draws a zero line (for drifts).
    """
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    if not categories:
        raise MergelineError("plot_bars: no values")
    fig = Figure(figsize=(max(6, 1.4 * len(categories) + 2), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [values.get(c, math.nan) for c in categories], width=width, label=label)
    long = max(map(len, categories)) > 12  # long labels side by side overlap: slant them
    ax.set_xticks(range(len(categories)), categories, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if signed:
        ax.axhline(0.0, color="black", linewidth=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)
