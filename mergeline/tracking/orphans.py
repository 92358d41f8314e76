"""Close the MLflow records of a pipeline run that was stopped or died: no RUNNING run, no version.

A run's parent MLflow run carries ``mergeline.owner`` (``mergeline.runlock.Holder.owner``: host, pid
and start time of the supervising process). Once that process is gone (its work-folder lock is free)
every run it left RUNNING, the parent and the stage runs nested under it, is marked KILLED, and the
model versions registered from its runs are deleted: an interrupted experiment registers nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from mergeline.tracking.mlflow_setup import open_store

OWNER_TAG = "mergeline.owner"


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
    """KILLED for every unfinished run of ``owner`` (and its nested runs); delete versions they registered."""
    open_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    closed = Closed()
    if not experiments:
        return closed
    parents = [r for r in client.search_runs(experiments, filter_string=f"tags.`{OWNER_TAG}` = '{owner}'")
               if r.info.status != "FINISHED"]
    for parent in parents:
        family = [parent, *client.search_runs(
            experiments, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")]
        for run in family:
            for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
                client.delete_model_version(version.name, version.version)
                closed.deleted_versions.append(f"{version.name} v{version.version}")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
                closed.killed_runs.append(run.info.run_id)
    return closed


__all__ = ["OWNER_TAG", "Closed", "close_owner_runs"]
