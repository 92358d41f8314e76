"""Persisted stage results cannot run code: planted pickles and forged JSON are refused, not loaded.

Prefect's own ResultStore is driven here (no flow, no server): ``exists`` is what a cache lookup
calls, and it reads the file. The control case shows the same planted file runs its payload under
Prefect's default pickle storage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.exceptions import SerializationError
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer, PickleSerializer

from tasks._results import PLAIN_JSON, RESULTS, RefusedResult, VerifiedResultStorage


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _decoder_payload(obj: dict) -> dict:  # named by a forged JSON serializer as its object_decoder
    Path(obj.get("marker", "/nonexistent/x")).write_text("ran")
    return obj


def _safe_store(folder: Path) -> ResultStore:
    return ResultStore(result_storage=VerifiedResultStorage(basepath=str(folder)), serializer=PLAIN_JSON)


def _plant(folder: Path, key: str, value: object, serializer) -> None:  # type: ignore[no-untyped-def]
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(folder)), serializer=serializer)
    store.persist_result_record(store.create_result_record(value, key=key))


def test_sealed_record_round_trips_and_non_json_records_are_not_written(tmp_path: Path) -> None:
    store = _safe_store(tmp_path)
    record = {"path": "data/work/base", "sha256": "ab" * 32, "metrics": {"acc": 0.5}, "files": ["a", "b"]}
    store.persist_result_record(store.create_result_record(record, key="k"))
    assert store.exists("k") and store.read("k").result == record
    assert "mergeline_sha256" in json.loads((tmp_path / "k").read_text())
    with pytest.raises(SerializationError):  # no object encoder: a Path in a record is a bug, not a pickle
        store.persist_result_record(store.create_result_record({"path": tmp_path}, key="p"))
    assert not (tmp_path / "p").exists()


def test_planted_pickles_and_forged_json_never_run_and_are_cache_misses(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    results, marker = tmp_path / "results", tmp_path / "PAYLOAD-RAN"
    # Control: Prefect's default pickle storage runs the payload on a cache lookup.
    _plant(results, "control", _Payload(marker), PickleSerializer())
    ResultStore(result_storage=LocalFileSystem(basepath=str(results)), serializer=PickleSerializer()).exists("control")
    assert marker.exists()
    marker.unlink()

    store = _safe_store(results)
    _plant(results, "pickle-record", _Payload(marker), PickleSerializer())
    (results / "raw-pickle").write_bytes(__import__("pickle").dumps(_Payload(marker)))
    forged = JSONSerializer(object_decoder=f"{__name__}._decoder_payload")
    _plant(results, "forged-decoder", {"marker": str(marker)}, forged)
    store.persist_result_record(store.create_result_record({"sha256": "00"}, key="edited"))
    (results / "edited").write_text((results / "edited").read_text().replace('\\"00\\"', '\\"11\\"'))
    store = _safe_store(results)  # a new process: nothing cached in memory
    for key in ("pickle-record", "raw-pickle", "forged-decoder", "edited"):
        assert not store.exists(key), key  # a miss: the task computes again and replaces the file
        with pytest.raises(RefusedResult, match=key):
            store.read(key)
    assert not marker.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 8 and all("computed again" in line for line in warnings)
    assert any("serializer" in line and "pickle" in line for line in warnings)
    assert any("does not match its sha256" in line for line in warnings)


def test_every_stage_task_and_flow_persists_through_the_verified_storage() -> None:
    import importlib
    import pkgutil

    import tasks
    from flows import pipeline, stage_flows, sweep
    from mergeline.pipeline.table import STEPS
    from prefect import Flow, Task
    from tasks.stages import TASKS

    runnables = [obj for info in pkgutil.iter_modules(tasks.__path__)
                 for obj in vars(importlib.import_module(f"tasks.{info.name}")).values() if isinstance(obj, Task)]
    assert set(TASKS) == set(STEPS)  # one task per step of the stage table
    flows = [obj for obj in vars(stage_flows).values() if isinstance(obj, Flow)]
    assert len(flows) >= 1
    for runnable in [*runnables, *TASKS.values(), *flows, pipeline.pipeline, sweep.sweep]:
        assert runnable.result_storage is RESULTS, runnable.name
        assert runnable.result_serializer is PLAIN_JSON, runnable.name


def test_flow_results_are_sealed_bare_and_read_back_only_as_plain_json(tmp_path: Path) -> None:
    from prefect.results import ResultRecordMetadata
    from prefect.states import Completed

    storage = VerifiedResultStorage(basepath=str(tmp_path))
    # A flow's result file holds only the serialized value; its metadata stays in the run's state.
    storage.write_path("flow", PLAIN_JSON.dumps({"champion": "ta_l0.5", "metrics": [0.5]}))
    state = Completed(data=ResultRecordMetadata(storage_key="flow", serializer=PLAIN_JSON))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tasks._results.RESULTS", storage)
        from tasks._results import read_state_result

        assert read_state_result(state) == {"champion": "ta_l0.5", "metrics": [0.5]}
        forged = Completed(data=ResultRecordMetadata(storage_key="flow", serializer=PickleSerializer()))
        with pytest.raises(RefusedResult, match="names serializer 'pickle'"):
            read_state_result(forged)
        (tmp_path / "flow").write_text((tmp_path / "flow").read_text().replace("ta_l0.5", "ties_l1"))
        with pytest.raises(RefusedResult, match="does not match its sha256"):
            read_state_result(state)
