"""The registry's anchors of trust for a model version, and every way they can fail to hold.

``lineage.json`` is an artifact file anyone with write access to the store can edit, so it is only
trusted through what the registry recorded when the version was created:
- every model-version tag of ARCHITECTURE.md, recomputed from the lineage (``mergeline.lineage_sha256``
  is the canonical hash of the whole file; the others repeat parts of it); a missing tag is a failure,
  never a reason to skip the check;
- ``mergeline.weights_sha256``: one digest over the weight files' (name, sha256) pairs;
- the version's source run: it must be the run the lineage names as ``registered_run_id``, exist,
  and say it registered this version; the version's files are the logged model it was registered
  from (``models:/<model_id>``), made by that run (or, for a version registered before logged
  models, that run's ``model/`` artifacts).
"""

from __future__ import annotations

import hashlib

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mergeline.lineage.record import Lineage, version_tags
from mergeline.lineage.verify import Problem

WEIGHTS_TAG = "mergeline.weights_sha256"
LINEAGE_TAG = "mergeline.lineage_sha256"
REGISTERED_VERSION_TAG = "mergeline.registered_version"
# Where the registering run's relative artifact paths start: a location hint for verify and reproduce
# (what is found there is still checked against the lineage's hashes), so it is not an anchor.
WORK_DIR_TAG = "mergeline.work_dir"
MODEL_ARTIFACT_PATH = "model"


def weights_digest(weights: dict[str, str]) -> str:
    """One sha256 over the (file, sha256) pairs of a model's weight files."""
    return hashlib.sha256("".join(f"{f}\0{h}\n" for f, h in sorted(weights.items())).encode()).hexdigest()


def registry_tags(lineage: Lineage) -> dict[str, str]:
    """Every tag a version registered with ``lineage`` carries: the contract's, plus the weights digest."""
    return {**version_tags(lineage), WEIGHTS_TAG: weights_digest(lineage.weights)}


def _label(version: ModelVersion) -> str:
    return f"{version.name} v{version.version}"


def tag_problems(lineage: Lineage, version: ModelVersion) -> list[Problem]:
    """Each registry tag that is missing or differs from what ``lineage`` gives."""
    tags = version.tags or {}
    problems = []
    for key, expected in registry_tags(lineage).items():
        actual = tags.get(key)
        if actual is None:
            problems.append(Problem(f"tag {key}", "missing", f"on {_label(version)}: lineage.json cannot be "
                                                              "checked against the registry without it"))
        elif actual != expected and key == LINEAGE_TAG:
            problems.append(Problem("lineage.json", "mismatch", f"sha256 {lineage.sha256()[:12]}…, version tag "
                                                                f"{LINEAGE_TAG} says {actual[:12]}…"))
        elif actual != expected:
            problems.append(Problem(f"tag {key}", "mismatch", f"{actual[:60]!r} on {_label(version)}, "
                                                              f"lineage.json gives {expected[:60]!r}"))
    return problems


def logged_model_id(source: str) -> str | None:
    """``m-…`` of a ``models:/<model_id>`` source, None for any other source."""
    body = source.removeprefix("models:/")
    return body if body != source and body.startswith("m-") and "/" not in body else None


def _files_problems(client: MlflowClient, version: ModelVersion, run: Run, what: str) -> list[Problem]:
    """The version's files are the registering run's: its logged model's, or its ``model/`` artifacts."""
    model_id = logged_model_id(version.source)
    if model_id is None:
        expected_source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
        if version.source in (expected_source, f"runs:/{version.run_id}/{MODEL_ARTIFACT_PATH}"):
            return []
        return [Problem(what, "mismatch", f"files at {version.source}, not the run's {expected_source}")]
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        return [Problem(what, "missing", f"logged model {model_id} of {_label(version)} is not in the tracking store")]
    if model.source_run_id != version.run_id:
        return [Problem(what, "mismatch", f"logged model {model_id} was made by run {model.source_run_id}, "
                                          f"not {version.run_id}")]
    return []


def source_run_problems(lineage: Lineage, version: ModelVersion) -> list[Problem]:
    """The version's source run is the lineage's registering run, exists, and made the version's files."""
    what = f"source run of {_label(version)}"
    if not version.run_id:
        return [Problem(what, "missing", "the version names no run")]
    problems = []
    if lineage.mlflow.registered_run_id != version.run_id:
        problems.append(Problem(what, "mismatch", f"run {version.run_id}, lineage.json says "
                                                  f"{lineage.mlflow.registered_run_id}"))
    client = MlflowClient()
    try:
        run = client.get_run(version.run_id)
    except MlflowException:
        return [*problems, Problem(what, "missing", f"run {version.run_id} is not in the tracking store")]
    problems.extend(_files_problems(client, version, run, what))
    claimed = run.data.tags.get(REGISTERED_VERSION_TAG)
    if claimed != f"{version.name}/{version.version}":
        problems.append(Problem(what, "mismatch" if claimed else "missing",
                                f"run {version.run_id} tag {REGISTERED_VERSION_TAG} is {claimed!r}"))
    return problems


def anchor_problems(lineage: Lineage, version: ModelVersion) -> list[Problem]:
    """Every anchor of trust of ``version`` that does not hold for ``lineage`` ([] when all do)."""
    return tag_problems(lineage, version) + source_run_problems(lineage, version)
