"""Robustness cases: caches that would run code.

The cases drive Prefect's own ResultStore on the verified result storage (``tasks/_results.py``): a
planted pickle, a record naming another serializer, ``jsonlib`` or object decoder, an edited or cut
record, a huge file: each is a cache miss and nothing it names runs. One case poisons every result file
of a finished tiny ``mergeline run`` and runs it again (slow: two real runs).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer, PickleSerializer

from tasks._results import PLAIN_JSON, VerifiedResultStorage
from tests.robustness.kit import Case, params
from tests.robustness.runtime_kit import env_for, new_project, run_statuses

MISS = "cache miss, payload not run"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def decoder_payload(obj: dict) -> dict:  # a forged serializer's object_decoder / jsonlib stand-in
    Path(obj.get("marker", "/nonexistent/x")).write_text("ran")
    return obj


loads = decoder_payload  # with ``dumps``: this module passes for the ``jsonlib`` a forged record names
dumps = json.dumps


def _stores(folder: Path):  # type: ignore[no-untyped-def]
    safe = ResultStore(result_storage=VerifiedResultStorage(basepath=str(folder)), serializer=PLAIN_JSON)
    return safe, lambda serializer: ResultStore(result_storage=LocalFileSystem(basepath=str(folder)),
                                                serializer=serializer)


def _cache_case(name: str, plant: Callable[[Path, Path, Callable], object], expected: str = MISS) -> Case:
    """``plant(folder, marker, plain_store)`` writes the file ``key``; a fresh safe store looks it up."""
    def check(folder: Path) -> str:
        marker = folder / "PAYLOAD-RAN"
        _, plain = _stores(folder)
        plant(folder, marker, plain)
        safe, _ = _stores(folder)
        hit = safe.exists("key")
        value = safe.read("key").result if hit else None
        ran = marker.exists()
        if hit:
            return f"cache hit {value!r}" + (", payload ran" if ran else "")
        return "cache miss, payload ran" if ran else MISS
    return Case("cache", name, expected, check)


def _pickle_record(folder: Path, marker: Path, plain) -> None:  # type: ignore[no-untyped-def]
    store = plain(PickleSerializer())
    store.persist_result_record(store.create_result_record(_Payload(marker), key="key"))


def _json_record(**serializer: str) -> Callable[[Path, Path, Callable], None]:
    def plant(folder: Path, marker: Path, plain) -> None:  # type: ignore[no-untyped-def]
        store = plain(JSONSerializer(**serializer))
        store.persist_result_record(store.create_result_record({"marker": str(marker)}, key="key"))
    return plant


def _sealed(edit: Callable[[bytes], bytes]) -> Callable[[Path, Path, Callable], None]:
    def plant(folder: Path, marker: Path, plain) -> None:  # type: ignore[no-untyped-def]
        safe, _ = _stores(folder)
        safe.persist_result_record(safe.create_result_record({"sha256": "00", "path": "data/work/base"}, key="key"))
        (folder / "key").write_bytes(edit((folder / "key").read_bytes()))
    return plant


def _huge(folder: Path, marker: Path, plain) -> None:  # type: ignore[no-untyped-def]
    with open(folder / "key", "wb") as handle:
        handle.truncate(100 << 20)  # sparse: read only up to the size limit


def _unwritable_record(folder: Path) -> str:
    safe, _ = _stores(folder)
    try:
        safe.persist_result_record(safe.create_result_record({"path": folder}, key="key"))
    except Exception as exc:  # noqa: BLE001 - which error is what the case reports
        return f"not written ({type(exc).__name__})" + (", file left" if (folder / "key").exists() else "")
    return "written"


@cache
def _finished_run() -> Path:
    """A tiny project after one complete ``mergeline run`` (built once per process)."""
    root = new_project(Path(tempfile.mkdtemp(prefix="mergeline-robust-run-")))
    done = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root,
                          env=env_for(root), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the tiny run failed: {done.stderr[-300:]}")
    return root


def _poisoned_rerun(folder: Path) -> str:
    root = _finished_run()
    marker = folder / "PAYLOAD-RAN"
    results = [p for p in (root / ".prefect" / "results").iterdir() if p.is_file()]
    for path in results:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    def stage_runs() -> int:
        return sum(1 for name, _ in run_statuses(root / "mlflow.db") if not name.startswith(("pipeline:", "register:")))

    before = stage_runs()
    rerun = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root,
                           env=env_for(root), capture_output=True, text=True, timeout=1800)
    recomputed = stage_runs() - before
    # Inside a flow Prefect turns the warning into a log line ("Task run … - warning: …").
    warned = sum(1 for line in rerun.stderr.splitlines() if "warning:" in line and "computed again" in line)
    return (f"exit {rerun.returncode}, payload {'ran' if marker.exists() else 'not run'}, "
            f"{'stages recomputed' if recomputed > 0 and warned > 0 else 'nothing recomputed'}")


CASES: list[Case] = [
    _cache_case("raw pickle planted at a cache key", lambda f, m, p: (f / "key").write_bytes(pickle.dumps(_Payload(m)))),
    _cache_case("Prefect pickle result record planted", _pickle_record),
    _cache_case("JSON record naming a payload as object_decoder",
                _json_record(object_decoder=f"{__name__}.decoder_payload")),
    _cache_case("JSON record naming a payload module as jsonlib", _json_record(jsonlib=__name__)),
    _cache_case("Prefect's default JSON record (object encoder and decoder)", _json_record()),
    _cache_case("sealed record edited, digest not updated", _sealed(lambda raw: raw.replace(b'\\"00\\"', b'\\"11\\"'))),
    _cache_case("sealed record cut in half", _sealed(lambda raw: raw[: len(raw) // 2])),
    _cache_case("result file of 100 MB", _huge),
    _cache_case("intact sealed record", _sealed(lambda raw: raw), "cache hit {'sha256': '00', 'path': 'data/work/base'}"),
    Case("cache", "record that is not plain JSON (a Path)", "not written (SerializationError)", _unwritable_record),
    Case("cache", "every result file of a finished run replaced by a pickle, run again",
         "exit 0, payload not run, stages recomputed", _poisoned_rerun, slow=True),
]

REPRESENTATIVE: set[str] = set()  # CI: tests/unit/test_result_safety.py


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
