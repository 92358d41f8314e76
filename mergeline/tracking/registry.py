"""Register a merged model in the MLflow Model Registry with its lineage, and look versions up.

A version is an MLflow logged model holding the Hugging Face files as written by the merge, plus
``lineage.json`` and ``lineage.mmd`` beside the weights and an ``MLmodel`` file (``mlmodel.py``), so
``mlflow.transformers.load_model("models:/NAME@champion")`` loads it. It is registered from
``models:/<model_id>``: MLflow's own link from the version to its logged model, whose source run
is the registering run. We do not call ``mlflow.transformers.log_model``: it loads the model and
runs it to infer a signature (6.4 s for a 135k-parameter model, much more for 135M on 2 cores) and
writes the weights again; here they are copied once. The datasets, base, checkpoints and task
vectors it was built from are logged too (``lineage_objects.py``), and the registered model and
version carry a description (``describe.py``).

Order of registration (a version never points at a missing or partial artifact):
1. every weight file in ``lineage.weights`` exists in ``model_dir`` with that sha256, and no
   ``*.safetensors`` there is unlisted;
2. the files are logged to a new logged model, on a local artifact store re-hashed where they
   landed, and only then is the logged model READY (FAILED otherwise);
3. only then the version is created, with its tags in the same call; aliases last (undone on failure).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities import LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_file
from mergeline.io.hashing import sha256_file
from mergeline.io.safe_read import read_text_file
from mergeline.lineage.record import Lineage
from mergeline.lineage.render import render_mermaid
from mergeline.lineage.verify import Problem, artifact_problems, stored_weight_problems
from mergeline.names import alias_problem, model_name_problem
from mergeline.tracking.anchors import (
    REGISTERED_VERSION_TAG, WORK_DIR_TAG, anchor_problems, logged_model_id, registry_tags, weights_digest,
)
from mergeline.tracking.describe import merged_label, merged_params, model_description, version_description
from mergeline.tracking.lineage_objects import (
    KIND_TAG, SHA256_TAG, UPSTREAM_TAG, LineageObjects, link_models, log_model_metrics, model_name,
    record_lineage_objects,
)
from mergeline.tracking.mlflow_setup import NOTE_TAG, current_experiment_id, param_strings
from mergeline.tracking.mlmodel import write_mlmodel

LINEAGE_FILE = "lineage.json"
MERMAID_FILE = "lineage.mmd"
LINEAGE_LIMIT = 64 * 2**20  # per-file hashes of large models stay far below this


def check_weights(model_dir: Path, weights: dict[str, str]) -> None:
    """MergelineError naming the first weight file that is missing, altered or unlisted."""
    model_dir = Path(model_dir)
    if not weights:
        raise MergelineError(f"{model_dir}: lineage.weights is empty; refusing to register a model without weights")
    for rel, expected in sorted(weights.items()):
        path = model_dir / rel
        if not path.is_file():
            raise MergelineError(f"{path}: weight file named in lineage.weights is missing; nothing registered")
        actual = sha256_file(path)
        if actual != expected:
            raise MergelineError(f"{path}: sha256 {actual[:12]}… differs from lineage.weights {expected[:12]}…; nothing registered")
    unlisted = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in weights)
    if unlisted:
        raise MergelineError(f"{model_dir / unlisted[0]}: weight file not listed in lineage.weights; nothing registered")


def _check_aliases(aliases: list[str]) -> None:
    for alias in aliases:
        if (problem := alias_problem(alias)) is not None:
            raise MergelineError(f"alias {alias!r}: {problem}")


def local_path(uri: str) -> Path | None:
    """The filesystem path of a ``file://`` (or scheme-less) artifact URI, else None (remote store)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _write_lineage_files(lineage: Lineage, folder: Path) -> None:
    with atomic_file(folder / LINEAGE_FILE) as handle:
        handle.write(lineage.to_json())
    with atomic_file(folder / MERMAID_FILE) as handle:
        handle.write(render_mermaid(lineage))


def _start_run(client: MlflowClient, name: str, lineage: Lineage) -> str:
    active = mlflow.active_run()
    experiment_id = active.info.experiment_id if active else current_experiment_id()
    parent = lineage.mlflow.parent_run_id or (active.info.run_id if active else None)
    tags = {"mlflow.parentRunId": parent} if parent else {}
    return client.create_run(experiment_id, run_name=f"register-{name}", tags=tags).info.run_id


def _log_merged_model(client: MlflowClient, run_id: str, experiment_id: str, model_dir: Path, lineage: Lineage,
                      upstream: LineageObjects, description: str) -> str:
    """The files as a logged model of ``run_id`` (READY only once they landed intact); returns its id."""
    model = mlflow.initialize_logged_model(
        name=model_name(merged_label(lineage)), source_run_id=run_id, model_type="merged", experiment_id=experiment_id,
        params=param_strings(merged_params(lineage)),
        tags={KIND_TAG: "merged", SHA256_TAG: weights_digest(lineage.weights), NOTE_TAG: description,
              UPSTREAM_TAG: ",".join(upstream.vectors.values()) or "-"})
    try:
        client.log_model_artifacts(model.model_id, str(model_dir))
        with tempfile.TemporaryDirectory(prefix="mergeline-lineage-") as tmp:
            _write_lineage_files(lineage, Path(tmp))
            write_mlmodel(model_dir, Path(tmp), lineage.base_model.id, run_id, model.model_id)
            client.log_model_artifacts(model.model_id, tmp)
        landed = local_path(model.artifact_location)
        if landed is not None:
            # A short copy (full disk, killed writer) must fail here, before any version exists.
            check_weights(landed, lineage.weights)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    log_model_metrics(client, run_id, model.model_id, lineage.evaluation, upstream.datasets)
    link_models(client, run_id, outputs=[model.model_id])
    if upstream.parent_run:
        link_models(client, upstream.parent_run, outputs=[model.model_id])
    return model.model_id


def _describe_registered_model(client: MlflowClient, name: str, lineage: Lineage) -> None:
    try:
        client.create_registered_model(name, description=model_description(name, lineage))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_registered_model(name, description=model_description(name, lineage))


def register_merged_model(
    model_dir: Path, name: str, lineage: Lineage, aliases: list[str], run_id: str | None = None,
    work_dir: str | Path | None = None,
) -> str:
    """Log ``model_dir`` with its lineage as a logged model of a run; register it as a new version of ``name``.

    The datasets, base, checkpoints and vectors of ``lineage`` are logged as MLflow datasets and
    logged models first (``lineage_objects.py``), the version and the model get their descriptions.

    ``run_id``: log into that run (e.g. the pipeline's register-stage run); None creates a run in
    the configured experiment, nested under ``lineage.mlflow.parent_run_id`` or the active run.
    ``work_dir``: the folder the lineage's relative paths start from (tag ``mergeline.work_dir``), so
    ``lineage --verify`` finds the artifacts from any folder sharing the tracking store.
    Returns the new version number. Raises MergelineError (nothing registered) when a weight file
    is missing, altered or unlisted, or an alias or the name is invalid.
    """
    model_dir = Path(model_dir)
    if (problem := model_name_problem(name)) is not None:
        raise MergelineError(f"registered model name {name!r}: {problem}")
    _check_aliases(aliases)
    check_weights(model_dir, lineage.weights)
    client = MlflowClient()
    own_run = run_id is None
    run = run_id or _start_run(client, name, lineage)
    lineage = lineage.model_copy(deep=True)
    lineage.mlflow.registered_run_id = run
    try:
        experiment_id = client.get_run(run).info.experiment_id
        upstream = record_lineage_objects(client, lineage, run, experiment_id, Path(work_dir or Path.cwd()))
        description = version_description(lineage, name)
        model_id = _log_merged_model(client, run, experiment_id, model_dir, lineage, upstream, description)
        _describe_registered_model(client, name, lineage)
        tags = registry_tags(lineage) | ({WORK_DIR_TAG: str(Path(work_dir).resolve())} if work_dir else {})
        version = client.create_model_version(name, f"models:/{model_id}", run_id=run, tags=tags, model_id=model_id,
                                              description=description).version
        try:
            for alias in aliases:
                client.set_registered_model_alias(name, alias, version)
        except BaseException:
            client.delete_model_version(name, version)
            raise
        # MLflow's own back-link from the logged model to the versions registered from it.
        client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps([{"name": name,
                                                                                   "version": version}])})
        client.set_tag(run, REGISTERED_VERSION_TAG, f"{name}/{version}")
    except BaseException:
        if own_run:
            client.set_terminated(run, "FAILED")
        raise
    if own_run:
        client.set_terminated(run, "FINISHED")
    return str(version)


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``NAME[@VERSION|@ALIAS]`` (``models:/`` prefix allowed) -> (name, version, alias)."""
    body = spec.removeprefix("models:/")
    if "/" in body and "@" not in body:
        body = body.replace("/", "@", 1)  # models:/NAME/VERSION
    name, _, ref = body.partition("@")
    if not name or (("@" in spec) and not ref):
        raise MergelineError(f"{spec!r}: expected NAME, NAME@VERSION or NAME@ALIAS")
    if not ref:
        return name, None, None
    return (name, ref, None) if ref.isdigit() else (name, None, ref)


def resolve_version(spec: str) -> ModelVersion:
    """The model version ``NAME[@VERSION|@ALIAS]`` names (the latest version for a bare NAME).

    Unknown name, version or alias -> MergelineError (CLI exit 2).
    """
    name, version, alias = parse_spec(spec)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise MergelineError(f"{spec}: no registered model named {name!r} at {mlflow.get_tracking_uri()}") from exc
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        if version is not None:
            return client.get_model_version(name, version)
    except MlflowException as exc:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise MergelineError(f"{spec}: registered model {name!r} has no {what}") from exc
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise MergelineError(f"{spec}: registered model {name!r} has no versions")
    # Search results carry neither aliases nor a str version: fetch the full record.
    return client.get_model_version(name, str(max(int(v.version) for v in versions)))


def model_artifact_dir(version: ModelVersion, dest: Path | None = None) -> Path:
    """A local folder with the version's files: the store's own folder when it is local, else a download.

    A local folder is returned even when it was deleted, so callers can name what is missing.
    """
    files = files_uri(version)
    local = local_path(files)
    if local is not None:
        return local
    dest = Path(dest or tempfile.mkdtemp(prefix="mergeline-model-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=files, dst_path=str(dest)))


def files_uri(version: ModelVersion) -> str:
    """Where the version's files are: its logged model's artifacts (as the registry resolved them when
    the version was created), or, for a version registered from run artifacts, its source."""
    if logged_model_id(version.source) is None:
        return version.source
    return MlflowClient().get_model_version_download_uri(version.name, version.version)


def load_lineage(version: ModelVersion) -> Lineage:
    """The version's ``lineage.json``. FileNotFoundError (naming it) when the artifact is gone."""
    files = files_uri(version)
    local = local_path(files)
    if local is not None:
        path = local / LINEAGE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: lineage.json of {version.name} version {version.version} is missing")
        return _parse_lineage(path)
    tmp = tempfile.mkdtemp(prefix="mergeline-lineage-")
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{files}/{LINEAGE_FILE}", dst_path=tmp)
        return _parse_lineage(Path(path))
    except MlflowException as exc:
        raise FileNotFoundError(f"{files}/{LINEAGE_FILE}: cannot fetch lineage.json ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parse_lineage(path: Path) -> Lineage:
    """``lineage.json`` read back: a record that is not UTF-8, not JSON or not the schema is bad input
    (one line naming the file and the first field at fault), never a traceback."""
    text = read_text_file(path, "lineage record", limit=LINEAGE_LIMIT)
    try:
        return Lineage.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise MergelineError(f"{path}: invalid lineage record: {where}: {first['msg']}") from None


def verify_lineage(lineage: Lineage, version: ModelVersion, root: str | os.PathLike[str] = ".") -> list[Problem]:
    """Every mismatch or missing file of ``lineage`` (registered as ``version``); [] when all match.

    The registry's anchors, the registered weight files, then every artifact and the params file
    (``root``: where relative artifact paths start and whose DVC cache/remotes are searched).
    """
    problems = anchor_problems(lineage, version)
    problems.extend(stored_weight_problems(lineage, version, model_artifact_dir(version)))
    problems.extend(artifact_problems(lineage, root))
    return problems
