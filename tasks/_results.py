"""Persisted task and flow results that cannot run code when they are read back.

Prefect's default result file is a pickle, and even a JSON result names the callables that decode
it (``jsonlib``, ``object_decoder``) and the serializer to use (``pickle`` among them): a planted
file in the result folder ran its payload on the next cache hit. Here:

- every stage task and flow persists with :data:`PLAIN_JSON` (the stdlib ``json``, no object
  encoder or decoder: a record that is not plain JSON data fails to write, and nothing is imported
  when one is read);
- :class:`VerifiedResultStorage` writes each result file atomically with a sha256 of its content,
  and on reading refuses any file that is not exactly that shape: not UTF-8 JSON, extra or missing
  fields, a serializer other than :data:`PLAIN_JSON`, or a digest that does not match. Prefect
  treats a refused file as a cache miss (it checks existence by reading), so the stage is computed
  again and the file replaced; one ``warning:`` line on stderr names the file and the reason.

The digest is not keyed: it catches edits and corruption, while the plain-JSON rule is what keeps
a deliberately forged file from executing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem
from prefect.serializers import JSONSerializer

PLAIN_JSON = JSONSerializer(object_encoder=None, object_decoder=None)
DIGEST_FIELD = "mergeline_sha256"
# Stage records are a few kB; anything this large is not one of ours and is not parsed.
MAX_RESULT_BYTES = 64 << 20


class RefusedResult(ValueError):
    """A result file that is not a verified plain-JSON record (the message names file and reason)."""


RECORD_FIELDS = {"metadata", "result"}  # a task's record: Prefect writes metadata and result together
BARE_FIELD = "bare"  # a flow's result: Prefect keeps its metadata (the serializer) in the run's state


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(content: bytes, name: str) -> bytes:
    """What Prefect wrote, wrapped with its digest; refuses to write anything but plain JSON."""
    try:
        record = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RefusedResult(f"{name}: refusing to persist a result that is not JSON; stage tasks and flows "
                            "must use tasks._results.PLAIN_JSON") from None
    if isinstance(record, dict) and set(record) == RECORD_FIELDS:
        serializer = record["metadata"].get("serializer") if isinstance(record["metadata"], dict) else None
        if serializer != PLAIN_JSON.model_dump(mode="json"):
            raise RefusedResult(f"{name}: refusing to persist a result with serializer {serializer!r}; "
                                "stage tasks must use tasks._results.PLAIN_JSON")
        body = {"metadata": record["metadata"], "result": record["result"]}
    else:
        body = {BARE_FIELD: content.decode()}
    return json.dumps({**body, DIGEST_FIELD: _digest(body)}, sort_keys=True).encode()


def unseal(raw: bytes, name: str) -> bytes:
    """The bytes Prefect wrote, after checking shape, serializer and digest (else RefusedResult)."""
    if len(raw) > MAX_RESULT_BYTES:
        raise RefusedResult(f"{name}: result file of {len(raw)} bytes is larger than any stage record")
    try:
        sealed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RefusedResult(f"{name}: result file is not UTF-8 JSON (a pickle or a damaged file)") from None
    if not isinstance(sealed, dict) or not ({"metadata", BARE_FIELD} & set(sealed)):
        raise RefusedResult(f"{name}: result file is not a result record")
    metadata = sealed.get("metadata", {})
    if BARE_FIELD not in sealed and (not isinstance(metadata, dict)
                                     or metadata.get("serializer") != PLAIN_JSON.model_dump(mode="json")):
        found = metadata.get("serializer") if isinstance(metadata, dict) else None
        raise RefusedResult(f"{name}: result file names serializer {found!r}, not plain JSON")
    fields = {BARE_FIELD} if BARE_FIELD in sealed else RECORD_FIELDS
    if set(sealed) != {*fields, DIGEST_FIELD} or not all(isinstance(sealed[f], str) for f in fields - {"metadata"}):
        raise RefusedResult(f"{name}: result file does not have the fields of a sealed record")
    body = {f: sealed[f] for f in fields}
    if sealed[DIGEST_FIELD] != _digest(body):
        raise RefusedResult(f"{name}: result file content does not match its sha256")
    return body[BARE_FIELD].encode() if BARE_FIELD in body else json.dumps(body).encode()


def warn_refused(problem: Exception) -> None:
    print(f"warning: {problem}; the stage is computed again", file=sys.stderr, flush=True)


class VerifiedResultStorage(LocalFileSystem):
    """Local result storage (``PREFECT_RESULTS_LOCAL_STORAGE_PATH``) that seals and verifies each file."""

    _block_type_name = "Mergeline Verified Results"

    def _resolve_path(self, path: str) -> Path:
        if not self.basepath:
            from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

            # Resolved per call: commands set the project's result folder after this module is imported.
            return LocalFileSystem(basepath=str(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()))._resolve_path(path)
        return super()._resolve_path(path)

    def _read(self, path: str) -> bytes:
        target = self._resolve_path(path)
        if not target.is_file():
            raise ValueError(f"Path {target} does not exist.")
        with open(target, "rb") as handle:
            raw = handle.read(MAX_RESULT_BYTES + 1)
        try:
            return unseal(raw, str(target))
        except RefusedResult as problem:
            warn_refused(problem)
            raise

    def _write(self, path: str, content: bytes) -> str:
        target = self._resolve_path(path)
        sealed = seal(content, str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(sealed)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(target)

    # Prefect calls the a-prefixed methods from async code and the plain ones with _sync=True.
    async def aread_path(self, path: str) -> bytes:  # type: ignore[override]
        return self._read(path)

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        return self._read(path)

    async def awrite_path(self, path: str, content: bytes) -> str:  # type: ignore[override]
        return self._write(path, content)

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:  # type: ignore[override]
        return self._write(path, content)


RESULTS = VerifiedResultStorage()
# Prefect 3.8.8 refuses a block instance as result storage unless it was saved on a server. This one
# needs no server (local, resolved per call), so it carries a fixed id that names no server document;
# records written with it are read back by the task that wrote them or by read_state_result, which
# never looks the id up.
RESULTS._block_document_id = uuid.uuid5(uuid.NAMESPACE_URL, "mergeline:verified-results")
PERSIST = {"persist_result": True, "result_storage": RESULTS, "result_serializer": PLAIN_JSON}


def read_state_result(state: Any) -> Any:
    """The persisted result of a finished (e.g. pooled) flow run, read through :data:`RESULTS`.

    The serializer named by the run's state (kept on the Prefect server) must be :data:`PLAIN_JSON`
    too: the file is then parsed as plain JSON and nothing named in it is imported.
    """
    from prefect.results import ResultRecordMetadata

    metadata = state.data
    if not isinstance(metadata, ResultRecordMetadata) or not metadata.storage_key:
        return state.result()  # in memory: this process ran it
    if metadata.serializer.model_dump(mode="json") != PLAIN_JSON.model_dump(mode="json"):
        raise RefusedResult(f"{metadata.storage_key}: the flow run's state names serializer "
                            f"{metadata.serializer.type!r}, not plain JSON; its result is not read")
    content = json.loads(RESULTS.read_path(metadata.storage_key))
    if isinstance(content, dict) and set(content) == RECORD_FIELDS:
        return json.loads(content["result"])
    return content


__all__ = ["PERSIST", "PLAIN_JSON", "RESULTS", "RefusedResult", "VerifiedResultStorage", "read_state_result"]
