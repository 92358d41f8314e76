"""Point MLflow at a store and log params, metrics and artifacts safely.

Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``;
``MLFLOW_TRACKING_URI`` (or the ``uri`` argument) overrides. The logging helpers take an explicit
``run_id`` (else the active run) so Prefect tasks running in threads never depend on MLflow's
process-global active run.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from mergeline.errors import MergelineError

# MLflow's limits (mlflow.utils.validation): param values 6000 chars, keys 250, batches 100 params /
# 1000 metrics per call. Stay under them rather than let a long config fail a run.
PARAM_VALUE_LIMIT = 6000
KEY_LIMIT = 250
_PARAM_BATCH = 100
_METRIC_BATCH = 1000
_TRUNCATED = "…[truncated]"


def default_tracking_uri(cwd: str | os.PathLike[str] | None = None) -> str:
    """``sqlite:///`` + absolute path of ``mlflow.db`` (four slashes for an absolute path, G14)."""
    return f"sqlite:///{(Path(cwd or Path.cwd()) / 'mlflow.db').resolve()}"


def _local_store_dir(uri: str) -> Path | None:
    """The folder of a local sqlite or file store, where artifacts go beside it."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = uri[len("sqlite:///"):]
        return Path(db).resolve().parent if db and db != ":memory:" else None
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).resolve().parent
    return None


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:" else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive while held, across processes, for a local SQLite store (``<db>.lock`` beside it)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.with_name(db.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_store(uri: str) -> None:
    """Create or migrate the store's tables under :func:`store_lock`.

    MLflow creates and migrates a SQLite schema on first use without a lock of its own: two processes
    opening one new database raced and one failed. MLflow keeps the opened store per process, so
    later calls do not migrate again.
    """
    if _sqlite_file(uri) is None:
        return  # a server or a file store migrates on its own side
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def use_store(uri: str | None = None, must_exist: bool = False) -> str:
    """Point MLflow at ``uri`` (else ``MLFLOW_TRACKING_URI``, else the default) without touching experiments.

    ``must_exist``: for read-only commands, a local SQLite file that is not there is a bad input
    (MLflow would silently create an empty store and then report every model as unknown).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    _check_scheme(uri)
    if must_exist:
        _check_existing_store(uri)
    open_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


# Schemes MLflow's model registry accepts (a database URI may name its driver: postgresql+psycopg2).
_REGISTRY_SCHEMES = ("", "file", "sqlite", "http", "https", "databricks", "databricks-uc", "uc",
                     "postgresql", "mysql", "mssql")


def _check_scheme(uri: str) -> None:
    """A URI MLflow's tracking and registry can use: another scheme is one line (exit 2), not MLflow's traceback."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in _REGISTRY_SCHEMES:
        raise MergelineError(f"{uri}: not an MLflow tracking URI (scheme {scheme!r}; use sqlite:///, http(s)://, ...)")


def _check_existing_store(uri: str) -> None:
    """A store a read-only command can open: a bad one is one line (exit 2), not MLflow's traceback."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            raise MergelineError(f"{db}: no MLflow store here; run the pipeline first or set MLFLOW_TRACKING_URI")
        if not db.is_file():
            raise MergelineError(f"{db}: not an SQLite file (a folder or device); not an MLflow store")
        with open(db, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise MergelineError(f"{db}: not an SQLite database; not an MLflow store")
    elif urlparse(uri).scheme in ("", "file") and not Path(urlparse(uri).path).is_dir():
        raise MergelineError(f"{uri}: no MLflow file store (folder) here")


def configure_tracking(uri: str | None = None, experiment: str = "mergeline") -> str:
    """Set the tracking URI and the active experiment; returns the URI in use.

    Order matters: the active experiment is process-global, so set_experiment must follow every
    set_tracking_uri or a later call resolves an experiment id from another store (STACK.md G11).
    A new experiment on a local store keeps its artifacts in ``mlartifacts`` beside the database.
    """
    uri = use_store(uri)
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(experiment) is None:
        store_dir = _local_store_dir(uri)
        location = (store_dir / "mlartifacts").as_uri() if store_dir else None
        try:
            client.create_experiment(experiment, artifact_location=location)
        except MlflowException:
            # Another process or thread created it between the lookup and the create.
            if client.get_experiment_by_name(experiment) is None:
                raise
    _current.update(uri=uri, experiment=experiment, experiment_id=mlflow.set_experiment(experiment).experiment_id)
    return uri


_current: dict[str, str] = {}


def current_experiment_id() -> str:
    """The experiment :func:`configure_tracking` set (configuring the default store if none was)."""
    if "experiment_id" not in _current:
        configure_tracking()
    elif _current["uri"] != mlflow.get_tracking_uri():
        # Someone switched stores behind our back: the cached id belongs to the old store.
        configure_tracking(mlflow.get_tracking_uri(), _current["experiment"])
    return _current["experiment_id"]


@contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """Inside ``with mlflow.start_run(...)``: a stop ends the active run KILLED, not FAILED.

    A stop is any BaseException that is not an Exception: KeyboardInterrupt, SystemExit, and the
    termination signal Prefect raises from its own SIGTERM handler while a flow runs.
    """
    try:
        yield
    except Exception:
        raise
    except BaseException:
        mlflow.end_run("KILLED")
        raise


def _run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is None:
        raise MergelineError("mlflow: no run_id given and no active run to log to")
    return active.info.run_id


def flatten(values: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings to one level: ``{"merge": {"lambda": 0.4}}`` -> ``{"merge.lambda": 0.4}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - len(_TRUNCATED)] + _TRUNCATED


def param_strings(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A (nested) dict as MLflow params: keys ``prefix.key.sub``, values stringified and truncated.

    Keys longer than MLflow's limit are errors (a silently cut key could collide with another).
    """
    strings = {key: _param_value(value) for key, value in flatten(params, prefix).items()}
    for key in strings:
        if len(key) > KEY_LIMIT:
            raise MergelineError(f"mlflow param {key[:60]}…: key longer than {KEY_LIMIT} characters")
    return strings


def log_params(params: Mapping[str, Any], prefix: str = "", run_id: str | None = None) -> dict[str, str]:
    """Log a (nested) dict as params (:func:`param_strings`); returns what was logged."""
    run = _run_id(run_id)
    logged = param_strings(params, prefix)
    items = [Param(key, value) for key, value in logged.items()]
    client = MlflowClient()
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run, params=items[start : start + _PARAM_BATCH])
    return logged


def log_params_flat(params: Mapping[str, Any], run_id: str | None = None) -> dict[str, str]:
    """:func:`log_params` without a prefix: nested keys joined with '.' (the pipeline's spelling)."""
    return log_params(params, run_id=run_id)


def log_metrics(
    metrics: Mapping[str, Any], step: int | None = None, prefix: str = "", run_id: str | None = None
) -> dict[str, float]:
    """Log a (nested) dict of numbers as metrics; non-numeric values are skipped, NaN/inf kept as-is."""
    run = _run_id(run_id)
    logged: dict[str, float] = {}
    for key, value in flatten(metrics, prefix, sep="/").items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        logged[key] = float(value)
    now = get_current_time_millis()
    items = [Metric(key, value, now, step or 0) for key, value in logged.items()]
    client = MlflowClient()
    for start in range(0, len(items), _METRIC_BATCH):
        client.log_batch(run, metrics=items[start : start + _METRIC_BATCH])
    return logged


def log_artifacts(path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None) -> None:
    """Log a file or a whole folder (its contents, under ``artifact_path``) to the run."""
    run = _run_id(run_id)
    p = Path(path)
    client = MlflowClient()
    if p.is_dir():
        client.log_artifacts(run, str(p), artifact_path)
    elif p.is_file():
        client.log_artifact(run, str(p), artifact_path)
    else:
        raise MergelineError(f"{path}: no such file or folder to log as an MLflow artifact")


NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description (Markdown)


def describe_run(markdown: str, run_id: str | None = None) -> None:
    """Set the run's description, e.g. an experiment's results table on its parent run."""
    MlflowClient().set_tag(_run_id(run_id), NOTE_TAG, markdown)
