"""Pooled calls without a shared disk: their files and records travel through the MLflow server.

A worker runs each flow run in its project folder (the deployments' pull step changes into
``$MERGELINE_PROJECT_DIR``). When that is the folder of the run that submitted the call (one
machine, or a shared mount at the same path) the call reads and writes there, as before. When it is
another folder, the worker's own checkout, the call works there instead, and
(``mergeline.tracking.transfer``):
- the submitting run shares the files the call reads (when its tracking store is a server);
- the worker fetches them, runs the call, then shares the files the record names (and the call's
  declared outputs) and the record itself, keyed by its flow run id;
- the submitting run reads that record and fetches those files into its own folder, each checked
  against the sha256 manifest it was sent with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow

from mergeline.tracking.transfer import fetch_files, fetch_record, file_refs, is_server, share_files, share_record
from tasks._results import read_state_result


def worker_root(submitted_root: str) -> tuple[str, bool]:
    """(folder this call works in, whether its files travel through MLflow): the worker's own project
    folder (its working directory), and whether that is not the submitting run's."""
    own = Path.cwd().resolve()
    return str(own), own != Path(submitted_root).resolve()


def share_inputs(args: Any, root: str, parent_run_id: str | None) -> None:
    """Submitting side: share the files ``args`` names when workers may not see this folder (a server store)."""
    if parent_run_id and is_server(mlflow.get_tracking_uri()):
        share_files(parent_run_id, Path(root), file_refs(args))


def fetch_inputs(args: Any, root: str, parent_run_id: str | None) -> None:
    """Worker side, before the call: the files ``args`` names that this folder lacks."""
    if parent_run_id:
        fetch_files(parent_run_id, Path(root), file_refs(args))


def share_result(record: Any, root: str, parent_run_id: str | None, outputs: Sequence[str] = ()) -> None:
    """Worker side, after the call: the files the record names, its outputs, then the record itself."""
    from prefect.runtime import flow_run

    if parent_run_id:
        here = Path(root)
        share_files(parent_run_id, here, [p for p in [*file_refs(record), *outputs] if (here / p).exists()])
        share_record(parent_run_id, str(flow_run.id), record)


def pooled_result(flow_run: Any, root: str | None, parent_run_id: str | None) -> Any:
    """Submitting side: a finished run's record, from MLflow with its files when the worker shared it
    there, else Prefect's persisted result (a worker that shares this folder)."""
    record = fetch_record(parent_run_id, str(flow_run.id)) if parent_run_id else None
    if record is None:
        return read_state_result(flow_run.state)
    if root is not None:
        fetch_files(parent_run_id, Path(root), file_refs(record))
    return record


__all__ = ["fetch_inputs", "pooled_result", "share_inputs", "share_result", "worker_root"]
