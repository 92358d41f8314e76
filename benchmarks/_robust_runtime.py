"""Robustness cases: poisoned caches, a tampered registry, signals and concurrent runs.

Cache cases drive Prefect's own ResultStore on the verified result storage (``tasks/_results.py``),
and one poisons every result file of a finished tiny ``mergeline run`` before running it again.
Registry cases tamper with a version of the fixture model registered for that case only. Signal and
concurrency cases start real ``mergeline run`` processes on ``params/tiny.yaml`` (a minute or more
each) and read the tracking store and the process table afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from _robust_case import Case
from _runtime_kit import (
    env_for, lines, new_project, register_own, run_main, run_statuses, start_run, stop_outcome, store_args,
    versions, wait_for_stage,
)

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


# --- cache ------------------------------------------------------------------------------------------

def _stores(folder: Path):  # type: ignore[no-untyped-def]
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    from tasks._results import PLAIN_JSON, VerifiedResultStorage

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
    from prefect.serializers import PickleSerializer

    store = plain(PickleSerializer())
    store.persist_result_record(store.create_result_record(_Payload(marker), key="key"))


def _json_record(**serializer: str) -> Callable[[Path, Path, Callable], None]:
    def plant(folder: Path, marker: Path, plain) -> None:  # type: ignore[no-untyped-def]
        from prefect.serializers import JSONSerializer

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
    import tempfile

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


# --- registry ---------------------------------------------------------------------------------------

def _client():  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _verdict(command: str, spec: str, folder: Path, key: str) -> str:
    extra = ["--out", str(folder / "out")] if command == "reproduce" else []
    code, out, err = run_main([command, spec, *extra, *(["--verify"] if command == "lineage" else []), *store_args()])
    seen = f"exit {code}"
    if code != 0:
        seen += f", names {key}" if key in err else f", does not name {key}"
    return seen + (", says bit for bit" if "bit for bit" in out else "")


def _tamper_case(command: str, name: str, tamper: Callable, key: str) -> Case:  # type: ignore[type-arg]
    """Register a version for this case, ``tamper(version, stored folder)``, run the command on it."""
    def check(folder: Path) -> str:
        spec, version, stored = register_own(f"robust-{abs(hash((command, name))) % 10**8}")
        tamper(version, stored)
        return _verdict(command, spec, folder, key)
    return Case(command if command == "reproduce" else "lineage", name, f"exit 1, names {key}", check)


def _edit_lineage(stored: Path, edit: Callable) -> str:  # type: ignore[type-arg]
    from mergeline.lineage.record import Lineage

    lineage = Lineage.model_validate_json((stored / "lineage.json").read_text())
    edit(lineage)
    (stored / "lineage.json").write_text(lineage.to_json())
    return lineage.sha256()


def _drop_tag(key: str, edit_lineage: bool = False) -> Callable:  # type: ignore[type-arg]
    def tamper(version, stored: Path) -> None:  # type: ignore[no-untyped-def]
        if edit_lineage:
            _edit_lineage(stored, lambda lin: lin.evaluation.update({"validation/alpha/acc": 1.0}))
        _client().delete_model_version_tag(version.name, version.version, key)
    return tamper


def _set_tag(key: str, value: str) -> Callable:  # type: ignore[type-arg]
    return lambda version, stored: _client().set_model_version_tag(version.name, version.version, key, value)


def _forge(edit: Callable) -> Callable:  # type: ignore[type-arg]
    """Rewrite lineage.json and the lineage hash tag to match it: a consistent forgery."""
    def tamper(version, stored: Path) -> None:  # type: ignore[no-untyped-def]
        digest = _edit_lineage(stored, edit)
        _client().set_model_version_tag(version.name, version.version, "mergeline.lineage_sha256", digest)
    return tamper


def _flip(stored: Path, name: str = "model.safetensors") -> None:
    raw = bytearray((stored / name).read_bytes())
    raw[-1] ^= 0xFF
    (stored / name).write_bytes(bytes(raw))


def _other_run(lin) -> None:  # type: ignore[no-untyped-def]
    lin.mlflow.registered_run_id = "0" * 32


def _relambda(lin) -> None:  # type: ignore[no-untyped-def]
    lin.merge.config["parameters"]["lambda"] = 0.6


def _intact_reproduce(folder: Path) -> str:
    spec, _, _ = register_own("robust-intact")
    return _verdict("reproduce", spec, folder, "-")


# --- signals and concurrency ------------------------------------------------------------------------

def _signal_case(name: str, signum: int, stage: str, expected: str, whom: str = "supervisor") -> Case:
    def check(folder: Path) -> str:
        root = new_project(folder)
        proc = start_run(root)
        if not wait_for_stage(proc, root / "mlflow.db", stage):
            proc.kill()
            return f"never reached {stage} (exit {proc.wait()})"
        return stop_outcome(root, proc, signum, whom)
    return Case("signal", name, expected, check)


def _second_run_same_folder(folder: Path) -> str:
    root = new_project(folder)
    first = start_run(root)
    try:
        if not wait_for_stage(first, root / "mlflow.db", "pipeline:"):
            return "first run never started"
        second = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root,
                                env=env_for(root), capture_output=True, text=True, timeout=300)
        first_err = first.communicate(timeout=1800)[1]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    named = f"pid {first.pid}" in second.stderr
    return (f"second exit {second.returncode}, {len(lines(second.stderr))} line{', names holder' if named else ''}; "
            f"first exit {first.returncode}, {versions(root / 'mlflow.db')} versions" + (f" {first_err[-200:]}" if first.returncode else ""))


def _two_folders_one_store(folder: Path) -> str:
    db = folder / "shared" / "mlflow.db"
    db.parent.mkdir()
    roots = [new_project(folder, "a"), new_project(folder, "b")]
    procs = [start_run(root, env_for(root, db)) for root in roots]
    codes = [proc.wait(timeout=3600) for proc in procs]
    verified = []
    for root in roots:
        check = subprocess.run([sys.executable, "-m", "mergeline", "lineage", "mergeline-tiny@champion", "--verify"],
                               cwd=root, env=env_for(root, db), capture_output=True, text=True, timeout=600)
        verified.append(check.returncode)
    return f"runs exit {codes}, verify of @champion from each folder exit {verified}"


def _parallel_store_opening(folder: Path) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = "from mergeline.tracking.mlflow_setup import open_store; import sys; open_store(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(proc.wait(timeout=600), proc.stderr.read() if proc.stderr else "") for proc in procs]
    failed = sum(1 for rc, _ in results if rc != 0)
    return f"{4 - failed} of 4 opened"


def _stage_while_locked(folder: Path) -> str:
    from mergeline.runlock import RunLock

    root = new_project(folder)  # valid params: the lock is what refuses
    with RunLock(root, "mergeline run"):
        code, _, err = run_main(["stage", "merge", "--params", "params.yaml"], cwd=root)
    return f"exit {code}, {len(lines(err))} line" + (", names holder" if f"pid {os.getpid()}" in err else "")


def _orphans_of_a_dead_run(folder: Path) -> str:
    """A run.json left by a 'dead' run: a live process of its group and a RUNNING MLflow run of its owner.

    The next run fails in its worker (a work pool without a server: exit 2), after the cleanup.
    """
    from mergeline.runlock import Holder, RunLock, process_start
    from mergeline.tracking import configure_tracking
    from mergeline.tracking.orphans import OWNER_TAG

    root = new_project(folder)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    uri = configure_tracking(f"sqlite:///{root / 'mlflow.db'}", "robust-orphans")
    lock = RunLock(root, "mergeline run").acquire()
    lock.holder = Holder(pid=999999, start=1, host="ghost", command="mergeline run", since=time.time(),
                         tracking_uri=uri, worker_pgid=orphan.pid, worker_start=process_start(orphan.pid))
    lock.write_record()
    lock.release(ended=False)
    run = _client().create_run(_client().get_experiment_by_name("robust-orphans").experiment_id,
                               tags={OWNER_TAG: lock.holder.owner}).info.run_id
    env = {**env_for(root), "MLFLOW_TRACKING_URI": uri, "MERGELINE_WORK_POOL": "gpu"}
    later = subprocess.run([sys.executable, "-m", "mergeline", "run", "--params", "params.yaml"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    time.sleep(0.5)
    gone = orphan.poll() is not None
    if not gone:
        orphan.kill()
    seen = f"exit {later.returncode}, orphan {'killed' if gone else 'left'}, its run {_client().get_run(run).info.status}"
    return seen if gone else f"{seen}: {later.stderr.strip()[-200:]}"


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
         "exit 0, payload not run, stages recomputed", _poisoned_rerun),
    _tamper_case("lineage", "lineage.json edited, mergeline.lineage_sha256 tag deleted",
                 _drop_tag("mergeline.lineage_sha256", edit_lineage=True), "mergeline.lineage_sha256"),
    _tamper_case("lineage", "mergeline.base_model_sha256 tag deleted", _drop_tag("mergeline.base_model_sha256"),
                 "mergeline.base_model_sha256"),
    _tamper_case("lineage", "mergeline.weights_sha256 tag deleted", _drop_tag("mergeline.weights_sha256"),
                 "mergeline.weights_sha256"),
    _tamper_case("lineage", "mergeline.method tag changed", _set_tag("mergeline.method", "ties"), "mergeline.method"),
    _tamper_case("lineage", "lineage.json and its hash tag rewritten: other weights",
                 _forge(lambda lin: lin.weights.update({k: "ab" * 32 for k in lin.weights})), "mergeline.weights_sha256"),
    _tamper_case("lineage", "lineage.json and its hash tag rewritten: other source run", _forge(_other_run),
                 "source run"),
    _tamper_case("lineage", "source run's registered_version tag deleted",
                 lambda v, s: _client().delete_tag(v.run_id, "mergeline.registered_version"), "registered_version"),
    _tamper_case("lineage", "stored weight file corrupted", lambda v, s: _flip(s), "model.safetensors"),
    _tamper_case("lineage", "unlisted weight file added to the stored folder",
                 lambda v, s: (s / "extra.safetensors").write_bytes(b"\0" * 16), "extra.safetensors"),
    _tamper_case("reproduce", "stored weight file corrupted", lambda v, s: _flip(s), "the registered artifact stores"),
    _tamper_case("reproduce", "merge rewritten to λ=0.6, lineage hash tag deleted",
                 lambda v, s: (_edit_lineage(s, _relambda), _client().delete_model_version_tag(
                     v.name, v.version, "mergeline.lineage_sha256")), "cannot be trusted"),
    _tamper_case("reproduce", "merge rewritten to λ=0.6 with a matching hash tag", _forge(_relambda),
                 "the registered artifact stores"),
    Case("reproduce", "intact version (control)", "exit 0, says bit for bit", _intact_reproduce),
    Case("concurrency", "mergeline stage while a run holds the folder", "exit 2, 1 line, names holder",
         _stage_while_locked),
    Case("concurrency", "4 processes open one new SQLite store at once", "4 of 4 opened", _parallel_store_opening),
    Case("concurrency", "a dead run's leftover process and RUNNING run, then a run (fails in its worker)",
         "exit 2, orphan killed, its run KILLED",
         _orphans_of_a_dead_run),
    Case("concurrency", "second mergeline run in the same folder while the first runs",
         "second exit 2, 1 line, names holder; first exit 0, 2 versions", _second_run_same_folder),
    Case("concurrency", "two folders, one MLflow store, runs at the same time",
         "runs exit [0, 0], verify of @champion from each folder exit [0, 0]", _two_folders_one_store),
    _signal_case("Ctrl-C (SIGINT) during a fine-tune", signal.SIGINT, "fine-tune",
                 "exit 130, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("SIGTERM during a merge", signal.SIGTERM, "merge:",
                 "exit 143, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("SIGHUP (terminal closed) during an evaluation", signal.SIGHUP, "evaluate:",
                 "exit 129, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left"),
    _signal_case("kill -9 of mergeline run during a fine-tune", signal.SIGKILL, "fine-tune",
                 "killed, stopped within 30 s, no run RUNNING, 0 versions, 0 processes left", whom="group"),
]
