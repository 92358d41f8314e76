"""Close the MLflow records of a pipeline run that was stopped or died: no RUNNING run, no version.

A run's parent MLflow run carries ``mergeline.owner`` (``mergeline.runlock.Holder.owner``: host, pid
and start time of the supervising process). Once that process is gone (its work-folder lock is free)
every run it left RUNNING, the parent and the stage runs nested under it, is marked KILLED, and the
model versions registered from its runs are deleted: an interrupted experiment registers nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mergeline.tracking.mlflow_setup import open_store

OWNER_TAG = "mergeline.owner"
_PAGE = 1000  # results per search call


@dataclass
class Closed:
    killed_runs: list[str] = field(default_factory=list)
    deleted_versions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.killed_runs)} MLflow run(s) left RUNNING marked KILLED"]
        if self.deleted_versions:
            parts.append(f"model version(s) {', '.join(self.deleted_versions)} of the unfinished run deleted")
        return "; ".join(parts)


def close_owner_runs(owner: str, tracking_uri: str) -> Closed:
    """KILLED for every unfinished run of ``owner`` (and its nested runs); delete versions they registered.

    The same few queries whatever the size of the sweep (this runs while the user waits for a stopped
    run to end; reading a 2,000-variant sweep's runs one by one took half a minute): the nested runs
    still RUNNING are searched for, never all of them, and the versions are found among those created
    since the parent run started, newest first.
    """
    open_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    closed = Closed()
    if not experiments:
        return closed
    parents = [r for r in client.search_runs(experiments, filter_string=f"tags.`{OWNER_TAG}` = '{owner}'")
               if r.info.status != "FINISHED"]
    for parent in parents:
        parent_id = parent.info.run_id
        for version in _versions_since(client, parent.info.start_time):
            if _run_parent(client, version.run_id) == parent_id or version.run_id == parent_id:
                client.delete_model_version(version.name, version.version)
                closed.deleted_versions.append(f"{version.name} v{version.version}")
        running = client.search_runs(
            experiments, filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=_PAGE)
        for run in [*([parent] if parent.info.status == "RUNNING" else []), *running]:
            client.set_terminated(run.info.run_id, "KILLED")
            closed.killed_runs.append(run.info.run_id)
    return closed


def _versions_since(client: MlflowClient, since_ms: int) -> Iterator[Any]:
    """Model versions created at or after ``since_ms``, newest first (every registered model)."""
    token = None
    while True:
        page = client.search_model_versions(order_by=["creation_timestamp DESC"], max_results=_PAGE, page_token=token)
        for version in page:
            if version.creation_timestamp < since_ms:
                return
            yield version
        token = page.token
        if not token:
            return


def _run_parent(client: MlflowClient, run_id: str | None) -> str | None:
    """The run ``run_id`` is nested under (None: top level, or no such run)."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    except MlflowException:
        return None  # a deleted run's version is none of ours


__all__ = ["OWNER_TAG", "Closed", "close_owner_runs"]
