"""Stage files and records between machines through the MLflow tracking server, over HTTP only.

A worker of a work pool that runs in its own folder (its own checkout, not the project folder of
the run that submitted the work) shares no file system with that run. What a pooled call reads and
writes then travels as artifacts of the experiment's parent MLflow run, through the tracking
server (which proxies the artifact store, ``mlflow server --serve-artifacts``):

- ``transfer/files/<path>/…``: a stage file or folder, by its path relative to the project root,
  with ``transfer/manifests/<path>.json`` listing the sha256 of every file in it;
- ``transfer/records/<key>.json``: the record a pooled call returned (``key``: its Prefect flow run id).

Each side shares what the other needs and fetches what it lacks: a file already there with the
manifest's content is neither sent nor fetched again, and a fetched file is checked against the
manifest before it is moved into place (atomically), so a damaged transfer never becomes a stage
output. Records name their files as ``{"path": …, "sha256": …}`` pairs, found by :func:`file_refs`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir, atomic_file
from mergeline.io.hashing import file_hashes, sha256_file
from mergeline.io.outputs import KIND_NAMES, MARKER

FILES = "transfer/files"
MANIFESTS = "transfer/manifests"
RECORDS = "transfer/records"
SINGLE_FILE = ""  # manifest key of a path that is one file, not a folder


def is_server(tracking_uri: str) -> bool:
    """A tracking server (HTTP): the store through which machines without a shared disk exchange files."""
    return urlparse(tracking_uri).scheme in ("http", "https")


def file_refs(record: Any, also: tuple[str, ...] = ()) -> list[str]:
    """Every ``path`` of a ``{"path": str, "sha256": str}`` (or ``"weights"``) pair in a JSON-like record, once
    each; with ``also``, the string values of those keys too (a merge config's ``base_model``, ``model``)."""
    found: dict[str, None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            # a file or folder by content: its sha256, or (a merged model) its weight files' sha256
            if isinstance(node.get("path"), str) and (isinstance(node.get("sha256"), str)
                                                      or isinstance(node.get("weights"), dict)):
                found[node["path"]] = None
            found.update(dict.fromkeys(v for k, v in node.items() if k in also and isinstance(v, str)))
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(record)
    return list(found)


def _relative(path: str) -> str:
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise MergelineError(f"{path}: only paths inside the project folder travel between workers")
    return rel.as_posix()


def _each(root: Path, paths: Iterable[str]) -> Iterator[tuple[str, Path]]:
    for path in dict.fromkeys(paths):
        rel = _relative(path)
        yield rel, root / rel


def _manifest(local: Path) -> dict[str, str]:
    return {SINGLE_FILE: sha256_file(local)} if local.is_file() else file_hashes(local)


def _kind(local: Path) -> str | None:
    """The output kind a folder's marker names (it is written again on arrival, for the files that came)."""
    if local.is_file():
        return None
    try:
        kind = json.loads((local / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in KIND_NAMES:
        raise MergelineError(f"{local}: not a mergeline output folder (no {MARKER} naming its kind); not shared")
    return str(kind)


def _shared_manifest(client: MlflowClient, run_id: str, rel: str, scratch: Path) -> tuple[dict[str, str], Any] | None:
    """(sha256 per file, output kind) of what was shared as ``rel``, or None when nothing was."""
    try:
        path = client.download_artifacts(run_id, f"{MANIFESTS}/{rel}.json", str(scratch))
    except (MlflowException, OSError):
        return None
    listing = json.loads(Path(path).read_text(encoding="utf-8"))
    return listing["files"], listing["kind"]


def share_files(run_id: str, root: Path, paths: Iterable[str]) -> list[str]:
    """Upload each path (relative to ``root``) to ``run_id`` unless it is there with this content; returns those sent."""
    client = MlflowClient()
    sent = []
    with tempfile.TemporaryDirectory(prefix="mergeline-transfer-") as tmp:
        for rel, local in _each(root, paths):
            if not local.exists():
                raise MergelineError(f"{local}: a stage file to share with the pool's workers is missing")
            manifest, kind = _manifest(local), _kind(local)
            if _shared_manifest(client, run_id, rel, Path(tmp)) == (manifest, kind):
                continue
            parent = f"{FILES}/{Path(rel).parent.as_posix()}".rstrip("/.")
            if local.is_file():
                client.log_artifact(run_id, str(local), parent)
            else:
                client.log_artifacts(run_id, str(local), f"{FILES}/{rel}")
            listing = Path(tmp) / "manifest" / f"{Path(rel).name}.json"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text(json.dumps({"files": manifest, "kind": kind}, sort_keys=True), encoding="utf-8")
            # The manifest goes last: a reader that finds it finds every file it lists.
            client.log_artifact(run_id, str(listing), f"{MANIFESTS}/{Path(rel).parent.as_posix()}".rstrip("/."))
            sent.append(rel)
    return sent


def _check_download(local: Path, manifest: dict[str, str], rel: str) -> None:
    got = _manifest(local)
    if got != manifest:
        bad = sorted(k for k in set(got) | set(manifest) if got.get(k) != manifest.get(k))
        raise MergelineError(f"{rel}: transferred copy differs from what was shared ({', '.join(bad[:3]) or rel})")


def fetch_files(run_id: str, root: Path, paths: Iterable[str]) -> list[str]:
    """Download each path that is missing under ``root`` or differs from what was shared; returns those fetched.

    A path that was never shared and is not here is an error naming it (the sender did not share it).
    """
    client = MlflowClient()
    fetched = []
    with tempfile.TemporaryDirectory(prefix="mergeline-transfer-") as tmp:
        for rel, local in _each(root, paths):
            shared = _shared_manifest(client, run_id, rel, Path(tmp))
            if shared is None:
                if local.exists():
                    continue
                raise MergelineError(f"{rel}: not in the project folder and not shared through MLflow run {run_id}")
            manifest, kind = shared
            if local.exists() and _manifest(local) == manifest:
                continue
            download = Path(client.download_artifacts(run_id, f"{FILES}/{rel}", str(Path(tmp) / "files")))
            _check_download(download, manifest, rel)
            if SINGLE_FILE in manifest:
                with atomic_file(local, "wb") as handle, open(download, "rb") as source:
                    shutil.copyfileobj(source, handle)
            else:
                with atomic_dir(local, kind=kind) as out:
                    shutil.copytree(download, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
            fetched.append(rel)
    return fetched


def share_record(run_id: str, key: str, record: Any) -> None:
    """The JSON record of one pooled call, under ``transfer/records/<key>.json`` of ``run_id``."""
    mlflow.MlflowClient().log_text(run_id, json.dumps(record, sort_keys=True), f"{RECORDS}/{key}.json")


def fetch_record(run_id: str, key: str) -> Any | None:
    """The record :func:`share_record` stored under ``key``, or None when there is none."""
    with tempfile.TemporaryDirectory(prefix="mergeline-transfer-") as tmp:
        try:
            path = MlflowClient().download_artifacts(run_id, f"{RECORDS}/{key}.json", tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))


__all__ = ["fetch_files", "fetch_record", "file_refs", "is_server", "share_files", "share_record"]
