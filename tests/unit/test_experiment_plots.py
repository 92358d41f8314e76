"""The experiment's plots, drawn from a results set (no MLflow: the drawing half of tracking/experiment_plots)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread

from mergeline.errors import MergelineError
from mergeline.plots import plot_bars
from mergeline.tracking.experiment_plots import draw_experiment_plots

VARIANTS = {
    "ta-l0.5": {"method": "task_arithmetic", "lambda": 0.5, "density": None},
    "ta-l1.0": {"method": "task_arithmetic", "lambda": 1.0, "density": None},
    "ties-l1.0-d0.2": {"method": "ties", "lambda": 1.0, "density": 0.2},
    "ties-l1.0-d0.5": {"method": "ties", "lambda": 1.0, "density": 0.5},
    "sta-l1.0-d0.3": {"method": "sta", "lambda": 1.0, "density": 0.3},
}


def _rows(offset: float) -> dict[str, dict[str, float]]:
    return {name: {"acc/news": 0.5 + offset + i / 20, "acc/sentiment": 0.6 - i / 30, "acc/mean": 0.55 + offset + i / 50,
                   "acc/control": 0.4, "control_drift": -0.05 + i / 40} for i, name in enumerate(VARIANTS)}


def _draw(out: Path, **extra: object) -> list[Path]:
    return draw_experiment_plots(out, tasks=["news", "sentiment"], control="control", variants=VARIANTS,
                                 validation=_rows(0.0), test=_rows(0.02),
                                 base={"news": 0.3, "sentiment": 0.5, "control": 0.45},
                                 experts={"news": 0.8, "sentiment": None}, **extra)  # type: ignore[arg-type]


def test_every_plot_is_drawn_as_a_png(tmp_path: Path) -> None:
    drawn = _draw(tmp_path, per_layer={"sta-l1.0-d0.3": {"news": {"0": 0.9, "1": 1.1}, "sentiment": {"0": 1.0}}})
    assert [p.name for p in drawn] == ["lambda_validation.png", "density_validation.png", "task_accuracy.png",
                                       "control_drift.png", "layer_weights_sta-l1.0-d0.3.png"]
    for path in drawn:
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01  # drawn, not blank


def test_no_density_plot_without_sparsifying_methods_and_no_layer_plot_without_weights(tmp_path: Path) -> None:
    only_ta = {k: v for k, v in VARIANTS.items() if v["density"] is None}
    drawn = draw_experiment_plots(tmp_path, tasks=["news"], control="control", variants=only_ta,
                                  validation=_rows(0.0), test={}, base={"news": 0.3}, experts={"news": 0.7},
                                  per_layer={"ta-l0.5": {}})
    assert [p.name for p in drawn] == ["lambda_validation.png", "task_accuracy.png"]


def test_bars_without_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MergelineError, match="plot_bars: no values"):
        plot_bars({"base": {}}, tmp_path / "x.png", "acc", "t")


def test_negation_and_analogy_get_one_plot_per_target_task(tmp_path: Path) -> None:
    from mergeline.pipeline.records import EditChoice, EditPoint

    def choice(edit: str, task: str, method: str, mus: tuple[float | None, ...] = (None,)) -> EditChoice:
        points = tuple(EditPoint(variant=f"{edit}-{method}-{lam:g}-{mu}", lam=lam, density=None, target=0.5 - lam / 4,
                                 control=0.4, mu=mu) for lam in (0.5, 1.0) for mu in mus)
        return EditChoice(edit=edit, task=task, method=method, variant=points[0].variant, rule_met=True,
                          points=points, test={"target": 0.3})

    edits = [choice("negation", "news", "task_arithmetic"), choice("negation", "news", "sta"),
             choice("transfer", "sentiment", "task_arithmetic"),
             choice("analogy", "sentiment", "task_arithmetic", (0.5, 1.0))]
    drawn = _draw(tmp_path, edits=edits)
    assert [p.name for p in drawn][-2:] == ["negation_news.png", "analogy_sentiment.png"]
    assert imread(drawn[-1]).std() > 0.01
