"""The plots of one experiment, drawn from its results and logged to its parent MLflow run (``plots/``).

- ``lambda_validation.png``: the selection metric on validation against λ, one line per method (and
  density), the best point of each starred;
- ``density_validation.png``: the same against density (kept fraction), for methods that sparsify;
- ``task_accuracy.png``: test accuracy per task and on the control task, for the base model, the
  single-task fine-tuned models (each on its own task) and each method's best variant on validation;
- ``control_drift.png``: change of control-task accuracy from the base, per merged variant;
- ``layer_weights_<variant>.png``: per-layer coefficients of the variants that weight layers (LATA, STA);
- ``negation_<task>.png``: validation accuracy on the negated task and on the control set against λ,
  per method; ``analogy_<task>.png``: the analogy's settings on their target task against λ;
- the stage plots already drawn (importance histograms, layer cosines), copied beside them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mergeline.pipeline.records import EditChoice
from mergeline.plots import plot_bars, plot_layer_heatmap, plot_sweep

PLOTS = "plots"


def _best_per_method(variants: Mapping[str, Mapping[str, Any]], validation: Mapping[str, Mapping[str, float]],
                     metric: str) -> dict[str, str]:
    best: dict[str, str] = {}
    for name, spec in variants.items():
        score = validation.get(name, {}).get(metric)
        current = best.get(spec["method"])
        if score is not None and (current is None or score > validation[current][metric]):
            best[spec["method"]] = name
    return best


def draw_experiment_plots(out: Path, tasks: Sequence[str], control: str, variants: Mapping[str, Mapping[str, Any]],
                          validation: Mapping[str, Mapping[str, float]], test: Mapping[str, Mapping[str, float]],
                          base: Mapping[str, float], experts: Mapping[str, float], metric: str = "acc/mean",
                          per_layer: Mapping[str, Mapping[str, Mapping[int, float]]] | None = None,
                          edits: Sequence[EditChoice] = ()) -> list[Path]:
    """Draw the plots into ``out``; returns their paths. ``variants``: name -> {method, lambda, density};
    ``validation``/``test``: name -> metrics row; ``base``: the base model's test accuracy per task
    (control included); ``experts``: each task's single-task model's test accuracy on that task."""
    drawn = []
    lambdas: dict[str, list[tuple[float, float]]] = {}
    densities: dict[str, list[tuple[float, float]]] = {}
    for name, spec in variants.items():
        score = validation.get(name, {}).get(metric)
        if score is None:
            continue
        density = spec.get("density")
        label = spec["method"] + ("" if density is None else f" (density {density:g})")
        lambdas.setdefault(label, []).append((float(spec["lambda"]), score))
        if density is not None:
            densities.setdefault(f"{spec['method']} (λ {float(spec['lambda']):g})", []).append((float(density), score))
    if lambdas:
        drawn.append(plot_sweep(lambdas, out / "lambda_validation.png", ylabel=f"validation {metric}",
                                title="λ per method on validation (★ best)"))
    if densities:
        drawn.append(plot_sweep(densities, out / "density_validation.png", xlabel="density (kept fraction)",
                                ylabel=f"validation {metric}", title="density per method on validation (★ best)"))
    series: dict[str, dict[str, float]] = {"base": {t: base[t] for t in [*tasks, control] if t in base},
                                           "single-task fine-tuned": {t: v for t, v in experts.items() if t in tasks and v is not None}}
    for method, name in _best_per_method(variants, validation, metric).items():
        row = test.get(name, {})
        series[f"{method} ({name})"] = {**{t: row[f"acc/{t}"] for t in tasks if f"acc/{t}" in row},
                                        **({control: row["acc/control"]} if "acc/control" in row else {})}
    drawn.append(plot_bars(series, out / "task_accuracy.png", "test accuracy",
                           f"Per-task accuracy (control task: {control})"))
    drift = {name: row["control_drift"] for name, row in test.items() if "control_drift" in row}
    if drift:
        drawn.append(plot_bars({"control drift": drift}, out / "control_drift.png", "control accuracy − base",
                               f"Control drift ({control}) per merged variant", signed=True))
    for name, layers in (per_layer or {}).items():
        matrix = {task: {int(layer): float(v) for layer, v in row.items()} for task, row in layers.items() if row}
        if matrix:  # layer keys come back from JSON records as strings
            drawn.append(plot_layer_heatmap(matrix, out / f"layer_weights_{name}.png",
                                            f"per-layer coefficients of {name}"))
    return drawn + edit_plots(out, edits, control)


def edit_plots(out: Path, edits: Sequence[EditChoice], control: str) -> list[Path]:
    """Per negated task: target and control accuracy on validation against λ, one pair of lines per
    method (the chosen λ in the legend); per analogy target: each setting's target accuracy against λ."""
    figures: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for choice in edits:
        kind = "negation" if choice.edit == "negation" else "analogy"
        curves = figures.setdefault((kind, choice.task), {})
        label = choice.method if kind == "negation" else choice.edit
        by_mu: dict[str, list[tuple[float, float]]] = {}
        for point in choice.points:
            key = f"{label} μ={point.mu:g}" if point.mu is not None else label
            by_mu.setdefault(key, []).append((point.lam, point.target))
            if kind == "negation" and point.control is not None:
                curves.setdefault(f"{label}: {control}", []).append((point.lam, point.control))
        for key, points in by_mu.items():
            curves[f"{key} (chose λ={choice.chosen.lam:g})" if key == label else key] = points
    return [plot_sweep(curves, out / f"{kind}_{task}.png", ylabel="validation accuracy", mark_best=kind != "negation",
                       title=f"{kind}: {task}" + (f" and {control}" if kind == "negation" else " (★ best)"))
            for (kind, task), curves in figures.items()]


def log_experiment_plots(run_id: str, stage_plots: Sequence[Path] = (), **results: Any) -> list[str]:
    """Draw (:func:`draw_experiment_plots`) and log them with ``stage_plots`` to ``run_id`` under ``plots/``."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="mergeline-plots-") as tmp:
        drawn = draw_experiment_plots(Path(tmp), **results)
        client.log_artifacts(run_id, tmp, PLOTS)
    for plot in stage_plots:
        if Path(plot).is_file():  # one folder per stage output: importance/<task>/..., diagnostics/...
            client.log_artifact(run_id, str(plot), f"{PLOTS}/{Path(plot).parent.name}")
    return [p.name for p in drawn] + [Path(p).name for p in stage_plots if Path(p).is_file()]


__all__ = ["draw_experiment_plots", "edit_plots", "log_experiment_plots"]
