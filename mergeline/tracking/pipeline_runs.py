"""The finished pipeline runs of an experiment, as ``mergeline run`` recorded them in MLflow.

Each ``mergeline run`` is one parent run ``pipeline:<experiment>`` with the params it ran with
(flattened, as logged) and its evaluation (``eval/metrics.json``: every variant's validation row,
each method's best on test, the champion; ``eval/details.json``: each negation and analogy choice and
the per-example test scores); each merge call is a nested run ``merge:<variant>`` that
logs the variant's ``method``, ``lambda`` and ``density``. A stopped or failed run is left out, and a
run repeated with the same params, seeds included, counts once (the latest): a resumed sweep runs its
finished points again from the cache, and a seed run twice is not two samples.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mergeline.errors import MergelineError
from mergeline.pipeline.records import EditChoice, decode
from mergeline.pipeline.sweep_report import PipelineRun, Variant
from mergeline.stages.evaluate import DETAILS
from mergeline.tracking.mlflow_setup import use_store

METRICS_ARTIFACT = "eval/metrics.json"
DETAILS_ARTIFACT = f"eval/{DETAILS}"


def _number(text: str | None) -> float | None:
    return None if text in (None, "", "None") else float(text)  # type: ignore[arg-type]


def _metrics(client: MlflowClient, run_id: str, folder: Path, artifact: str = METRICS_ARTIFACT
             ) -> dict[str, Any] | None:
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(folder))
    except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact: the run is skipped
        return None
    data = json.loads(Path(path).read_text())
    return data if isinstance(data, dict) else None


def latest_per_params(parents: list[Run]) -> list[Run]:
    """The latest of the runs that share all their params (``parents`` oldest first), in that order."""
    latest = {tuple(sorted(run.data.params.items())): run.info.run_id for run in parents}
    return [run for run in parents if latest[tuple(sorted(run.data.params.items()))] == run.info.run_id]


def pipeline_runs(experiment: str, tracking_uri: str | None = None) -> tuple[list[PipelineRun], dict[str, Variant]]:
    """The experiment's finished pipeline runs that reached evaluation (oldest first), and every
    merged variant's method, λ and density by name. MergelineError (one line): no such store or
    experiment, or no such run in it."""
    uri = use_store(tracking_uri, must_exist=True)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise MergelineError(f"experiment {experiment!r}: not in the tracking store {uri}")
    ids = [found.experiment_id]
    parents = client.search_runs(ids, "attributes.status = 'FINISHED' and tags.mlflow.runName LIKE 'pipeline:%'",
                                 order_by=["attributes.start_time ASC"], max_results=10_000)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mergeline-report-") as tmp:
        for index, parent in enumerate(latest_per_params(parents)):
            metrics = _metrics(client, parent.info.run_id, Path(tmp) / str(index))
            if metrics is None:
                continue
            details = _metrics(client, parent.info.run_id, Path(tmp) / str(index), DETAILS_ARTIFACT) or {}
            runs.append(PipelineRun(parent.info.run_id, dict(parent.data.params), metrics.get("validation", {}),
                                    metrics.get("test", {}), metrics.get("champion"),
                                    decode(tuple[EditChoice, ...], details.get("edits", [])),
                                    (details.get("base") or {}).get("test"), details.get("correct") or {}))
    if not runs:
        raise MergelineError(f"experiment {experiment!r}: no finished pipeline run with {METRICS_ARTIFACT} in {uri}")
    variants: dict[str, Variant] = {}
    for merge in client.search_runs(ids, "tags.`mergeline.step` = 'merge'", max_results=50_000):
        name = merge.info.run_name.split(":", 1)[-1]
        logged = merge.data.params
        if "method" in logged and "lambda" in logged:
            variants[name] = Variant(logged["method"], float(logged["lambda"]), _number(logged.get("density")))
    return runs, variants


__all__ = ["METRICS_ARTIFACT", "latest_per_params", "pipeline_runs"]
