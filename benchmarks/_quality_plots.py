"""Plots of the quality benchmark (via ``mergeline.plots``), averaged over seeds where it makes sense.

    lambda_sweep.png      validation mean normalized accuracy vs λ, one line per swept method
                          (methods with densities: the best density at each λ)
    sparsity_sweep.png    validation mean normalized accuracy vs density (best λ at each density)
    lata_layer_weights.png  LATA's per-layer weight of each task's vector (first seed's chosen variant)
    lata_similarity.png   cos(c_t,l, ι_l) behind those weights
    negation_<task>.png   validation target accuracy vs λ per method, and TA's control accuracy
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from _quality_tables import LABELS
from mergeline.plots import plot_layer_heatmap, plot_sweep


def _int_layers(matrix: dict[str, dict[Any, float]]) -> dict[str, dict[int, float]]:
    """Layer keys as ints again (a JSON round trip makes them strings, which the heat map does not find)."""
    return {task: {int(layer): float(v) for layer, v in row.items()} for task, row in matrix.items()}


def _average(curves_per_seed: list[dict[str, dict[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    merged: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for curves in curves_per_seed:
        for label, points in curves.items():
            for x, y in points.items():
                merged[label][x].append(y)
    return {label: sorted((x, statistics.fmean(ys)) for x, ys in pts.items()) for label, pts in merged.items()}


def _best_by(sweep: list[dict[str, Any]], key: str) -> dict[str, dict[float, float]]:
    curves: dict[str, dict[float, float]] = defaultdict(dict)
    for point in sweep:
        x = point.get(key)
        if x is None:
            continue
        label = LABELS.get(point["method"], point["method"])
        curves[label][float(x)] = max(curves[label].get(float(x), float("-inf")), point["norm_acc"])
    return {k: v for k, v in curves.items() if len(v) > 1}


def make_plots(results: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write every plot the results allow into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sweeps = []
    for r in results:
        sweep = list(r["addition"]["sweep"])
        if r.get("lata"):
            sweep += [dict(p, method="lata") for p in r["lata"]["sweep"]]
        sweeps.append(sweep)
    lam = _average([_best_by(s, "lambda") for s in sweeps])
    if lam:
        written.append(plot_sweep(lam, folder / "lambda_sweep.png", xlabel="λ",
                                  title="Addition: validation mean normalized accuracy vs λ"))
    density = _average([_best_by(s, "density") for s in sweeps])
    if density:
        written.append(plot_sweep(density, folder / "sparsity_sweep.png", xlabel="density (kept fraction)",
                                  title="Addition: validation mean normalized accuracy vs density"))
    lata = next((r["lata"] for r in results if r.get("lata") and r["lata"].get("layer_weights")), None)
    if lata:
        written.append(plot_layer_heatmap(_int_layers(lata["layer_weights"]), folder / "lata_layer_weights.png",
                                          f"LATA layer weights ({lata['variant']})"))
        if lata.get("similarity"):
            written.append(plot_layer_heatmap(_int_layers(lata["similarity"]), folder / "lata_similarity.png",
                                              "LATA: cos(task layer, instruction layer)"))
    written += _negation_plots(results, folder)
    return written


def _negation_plots(results: list[dict[str, Any]], folder: Path) -> list[Path]:
    present = [r["negation"] for r in results if r.get("negation")]
    written = []
    for task in present[0] if present else []:
        per_seed = []
        for neg in present:
            curves: dict[str, dict[float, float]] = defaultdict(dict)
            for method, entry in neg[task]["methods"].items():
                for point in entry["sweep"]:
                    label = f"{LABELS[method]}: target"
                    curves[label][point["lambda"]] = min(curves[label].get(point["lambda"], 1.0), point["target"])
                    if method == "task_arithmetic":
                        curves["TA: control"][point["lambda"]] = point["control"]
            per_seed.append(curves)
        averaged = {k: v for k, v in _average(per_seed).items() if len(v) > 1}
        if averaged:
            written.append(plot_sweep(averaged, folder / f"negation_{task}.png", xlabel="λ (θ0 − λ v)",
                                      ylabel="validation accuracy",
                                      title=f"Negation of {task} (★ marks each line's maximum)"))
    return written
