"""Flow ``mergeline-sweep``: one params file, several override sets, one pipeline run per point.

    points = [["merge.lambda=0.3"], ["merge.lambda=0.6", "finetune.steps=20"]]

With a work pool (``MERGELINE_WORK_POOL`` + ``PREFECT_API_URL``) every point is a flow run of the
``mergeline-pipeline`` deployment, all created at once and then awaited, so points run on as many
workers as the pool has; without one they run here, one after the other, as subflows.

Every point is validated before the first one starts (bad input: one line, nothing run) and
writes under its own folder (see :func:`plan_points`). Points register under the params'
``registry.model_name``, so an alias ends on the point that registered last: give points their
own ``registry.model_name`` when each should keep its champion, or compare them in the table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow

from mergeline.env import configure_offline_defaults
from mergeline.params import ExperimentParams
from tasks._results import PERSIST

configure_offline_defaults()


def plan_points(params_file: str, overrides: list[str] | None, points: list[list[str]] | None) -> list[list[str]]:
    """The full override list of each point, every one validated before any runs.

    Shared overrides come first, so a point's own win. Points run at the same time on a pool, so
    each writes its data and outputs under its own folder, ``<work_dir>/sweep-<hash of its
    overrides>`` (stable when points are reordered), unless it sets ``work_dir``/``data_dir`` itself.
    """
    import hashlib

    from mergeline.errors import MergelineError
    from mergeline.params import load_params

    if not points:
        raise MergelineError("sweep: points: needs at least one override set, e.g. [[merge.lambda=0.5]]")
    planned = []
    for index, point in enumerate(points):
        full = [*(overrides or []), *point]
        try:
            params = load_params(params_file, full)
        except MergelineError as exc:
            raise MergelineError(f"sweep point {index} {point}: {exc}") from None
        keys = {item.split("=", 1)[0].strip() for item in full}
        folder = f"{params.work_dir}/sweep-{hashlib.sha256(chr(0).join(full).encode()).hexdigest()[:8]}"
        planned.append([*([f"work_dir={folder}"] if "work_dir" not in keys else []),
                        *([f"data_dir={folder}/tasks"] if "data_dir" not in keys else []), *full])
    return planned


def sweep_table(results: list[dict[str, Any]]) -> str:
    """Markdown: per point, its overrides, champion variant and the champion's test scores."""
    lines = ["| point | overrides | champion | mean acc | norm. acc | control drift |", "|---|---|---|---|---|---|"]
    for index, result in enumerate(results):
        summary = result["summary"]
        champion = summary.get("champion")
        row = (summary.get("test_rows") or {}).get(champion, {})

        def cell(key: str) -> str:
            return f"{row[key]:.3f}" if key in row else "–"

        lines.append(f"| {index} | {' '.join(result['point']) or '(none)'} | {champion or '–'} | "
                     f"{cell('acc/mean')} | {cell('norm_acc/mean')} | {cell('control_drift')} |")
    return "\n".join(lines)


@flow(name="mergeline-sweep", log_prints=True, **PERSIST)
def sweep(params_file: str = "params/default.yaml", points: list[list[str]] | None = None,
          overrides: list[str] | None = None, root: str | None = None, until: str = "register"
          ) -> list[dict[str, Any]]:
    """Run the pipeline once per point; return ``[{"point", "overrides", "summary"}]`` in point order."""
    from flows.deployments import pool_from_env

    from mergeline.commands._supervise import held
    from mergeline.params import load_params

    point_sets = plan_points(params_file, overrides, points)
    planned = [load_params(params_file, point) for point in point_sets]
    project = Path(root or os.getcwd()).resolve()
    pool = pool_from_env()
    # The locks of ``mergeline run``, before anything is written: a run of this project, or of one
    # naming a point's work_dir or data_dir, and this sweep never overlap.
    with held(project, f"mergeline-sweep {params_file} ({len(planned)} points)",
              [project / p.work_dir for p in planned], [project / p.data_dir for p in planned]):
        summaries = _run_points(params_file, point_sets, planned, str(project), until, pool)
    results = [{"point": point, "overrides": planned, "summary": summary}
               for point, planned, summary in zip(points or [], point_sets, summaries)]
    print(sweep_table(results))
    return results


def _run_points(params_file: str, point_sets: list[list[str]], planned: list[ExperimentParams], root_path: str,
                until: str, pool: str | None) -> list[dict[str, Any]]:
    """Each point's pipeline summary, in point order: here one after the other, or on the pool at once."""
    from flows.deployments import PIPELINE_DEPLOYMENT, await_results, check_deployment, submit
    from flows.pipeline import pipeline

    from mergeline.tracking import configure_tracking

    # Points may start at the same moment: create the MLflow store and experiment(s) once, here,
    # rather than in every point at once (a fresh SQLite store's schema set-up does not survive a race).
    for experiment in sorted({params.experiment for params in planned}):
        configure_tracking(experiment=experiment)
    if pool is None:
        return [pipeline(params_file=params_file, overrides=point, root=root_path, until=until)
                for point in point_sets]
    check_deployment(PIPELINE_DEPLOYMENT, pool)
    runs = {str(i): submit(PIPELINE_DEPLOYMENT, {"params_file": params_file, "overrides": point,
                                                 "root": root_path, "until": until}, f"sweep-point-{i}")
            for i, point in enumerate(point_sets)}
    print(f"sweep: {len(runs)} pipeline runs submitted to work pool {pool!r}")
    done = await_results(runs)
    return [done[str(i)] for i in range(len(point_sets))]
