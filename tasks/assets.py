"""Prefect assets: each stage output is an asset, its upstream assets the stage outputs it read.

The Prefect UI's asset graph then draws base → checkpoints → vectors → merged → registered (and the
task data into the fine-tunes). Keys are ``mergeline://<experiment>/<path in the project>`` and
``mlflow://registered-models/<name>/<alias>``. A stage call becomes a materializing task only for
its own run (``materializing``): its options (cache policy, result storage, names) are the stage
task's, so cache keys do not change. Prefect emits asset events for runs that compute; a cache hit
emits none (the graph of the run that computed them stands).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

from prefect.assets import Asset, AssetProperties
from prefect.tasks import MaterializingTask, Task

from mergeline.tracking.transfer import file_refs

BY = "mergeline"
# Task.__init__ arguments that Prefect keeps under another attribute name (as its own with_options does).
_ATTRIBUTE = {"on_completion": "on_completion_hooks", "on_failure": "on_failure_hooks",
              "on_running": "on_running_hooks", "on_rollback": "on_rollback_hooks", "on_commit": "on_commit_hooks",
              "persist_result": "_user_persist_result", "cache_policy": "_user_cache_policy"}
_UNSAFE = re.compile(r"""[\s#?&%"'<>\[\]{}|\\^`]""")


def asset_key(experiment: str, path: str) -> str:
    """The asset of a project path (``data/work/checkpoints/news``) in an experiment."""
    return _UNSAFE.sub("-", f"mergeline://{experiment}/{path.strip('/')}")


def registered_key(name: str, alias: str) -> str:
    return _UNSAFE.sub("-", f"mlflow://registered-models/{name}/{alias}")


def read_paths(args: Any) -> list[str]:
    """Project paths a call reads: the ``path`` of each file reference in its arguments, and the
    ``base_model``/``model`` paths of a merge config."""
    return file_refs(args, also=("base_model", "model"))


def _within(path: str, folders: Iterable[str]) -> str:
    """``path``, or the folder among ``folders`` that holds it (one asset for all the task data)."""
    for folder in folders:
        if path == folder or path.startswith(folder.rstrip("/") + "/"):
            return folder
    return path


def materializing(task: Task[Any, Any], experiment: str, outputs: Sequence[str], args: Any,
                  group: Sequence[str] = (), description: str | None = None) -> Task[Any, Any]:
    """``task`` as a materializing task of ``outputs``, whose upstream assets are what ``args`` names."""
    if not outputs:
        return task
    own = {_within(o, group) for o in outputs}
    deps = sorted({_within(p, group) for p in read_paths(args)} - own)
    options = {name: getattr(task, _ATTRIBUTE.get(name, name))
               for name in inspect.signature(Task.__init__).parameters if name not in ("self", "fn")}
    options["asset_deps"] = [asset_key(experiment, p) for p in deps]
    properties = AssetProperties(description=description) if description else None
    assets = [Asset(key=asset_key(experiment, o), properties=properties) for o in sorted(own)]
    return MaterializingTask(fn=task.fn, assets=assets, materialized_by=BY, **options)




def registering(experiment: str, name: str, alias: str, merged_path: str) -> Any:
    """Decorator: the registration of a merged variant as a materializing task of ``name@alias``."""
    from prefect.assets import materialize
    from prefect.cache_policies import NO_CACHE

    return materialize(Asset(key=registered_key(name, alias)), asset_deps=[asset_key(experiment, merged_path)],
                       by="mlflow", name=f"register-{alias}", cache_policy=NO_CACHE, persist_result=False)


def results_artifact(experiment: str, table: str) -> None:
    """The results table as a Markdown artifact of the flow run (the run's Artifacts tab; latest under its key)."""
    from prefect.artifacts import create_markdown_artifact

    key = re.sub(r"[^a-z0-9-]", "-", f"results-{experiment}".lower())
    create_markdown_artifact(markdown=table, key=key, description=f"Results of experiment {experiment}")


__all__ = ["asset_key", "materializing", "read_paths", "registered_key", "registering", "results_artifact"]
