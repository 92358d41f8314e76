"""``mergeline run`` and ``mergeline stage`` as a supervisor and a worker: stoppable, never left behind.

The command the user starts is a small supervisor. It takes the project folder's, the work folder's
and the data folder's locks (:func:`held`, ``mergeline.runlock``: a second run in the same project,
or naming the same ``work_dir`` or ``data_dir`` from another project, exits 2), cleans up after a
previous run that died (its surviving processes, its RUNNING MLflow runs), and starts the pipeline as
a worker process in a session and process group of its own, so the Prefect server and everything
else the worker starts can be killed as one group, and a terminal's Ctrl-C reaches only the
supervisor.

Stopping (Ctrl-C, SIGTERM, SIGHUP): the supervisor sends SIGTERM to the worker, which raises
SystemExit in the pipeline (Prefect raises its own termination signal while a flow runs; MLflow
runs end KILLED either way), and the worker exits; if it is not gone after
``MERGELINE_STOP_GRACE_SECONDS`` (default 10; a second signal: at once) its whole group is killed.
Then whatever the worker left RUNNING is marked KILLED and any version it registered is deleted, the
group is killed, and the supervisor exits 130 (SIGINT) or 128 + the signal. A worker whose
supervisor dies (kill -9) gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and stops the same way;
the next run in the folder marks its MLflow runs KILLED.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mergeline.runlock import Folders, Holder, RunLock, leftover_processes, process_start, set_owner

OWNER_ENV = "MERGELINE_RUN_OWNER"
GRACE_SECONDS = float(os.environ.get("MERGELINE_STOP_GRACE_SECONDS", "10"))
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    return OWNER_ENV in os.environ


def become_worker() -> None:
    """In the worker: die with the supervisor, turn stop signals into SystemExit."""
    owner = os.environ.pop(OWNER_ENV)  # children of the worker are not workers
    set_owner(owner)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's group kill still applies
    if str(os.getppid()) != owner.split(":")[-2]:
        raise SystemExit(143)  # the supervisor (owner "host:pid:start") died before the prctl took effect
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        threading.Thread(target=_kill_own_group_after, args=(GRACE_SECONDS,), daemon=True).start()
        raise SystemExit(128 + signum)  # a BaseException: not caught as an error by the pipeline

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def exit_stopped_worker() -> None:
    """In a stopped worker (a stop signal became a BaseException): end the whole group now.

    Its MLflow runs are already closed KILLED on the way out; Prefect's shutdown (stopping its
    server, flushing logs) is skipped because it can hang once stopped. Returns outside a worker.
    """
    from mergeline.runlock import current_owner

    if current_owner() is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _kill_own_group_after(seconds: float) -> None:
    # Prefect's shutdown can hang once its server is gone; nothing of the run may outlive the grace.
    time.sleep(seconds)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _kill_group(holder: Holder, grace: float = 3.0) -> int:
    """SIGTERM then SIGKILL every process left in the worker's group; returns how many there were."""
    members = leftover_processes(holder)
    if not members or holder.worker_pgid is None:
        return 0
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(holder.worker_pgid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while leftover_processes(holder) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not leftover_processes(holder):
            break
    return len(members)


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()


def _close_records(holder: Holder, root: Path):  # type: ignore[no-untyped-def]
    """Mark the holder's unfinished MLflow runs KILLED and delete what they registered (None: no store)."""
    from mergeline.tracking.mlflow_setup import default_tracking_uri
    from mergeline.tracking.orphans import close_owner_runs

    uri = holder.tracking_uri or default_tracking_uri(root)
    return close_owner_runs(holder.owner, uri) if _store_exists(uri) else None


def _clean_up_previous(previous: Holder, root: Path) -> None:
    killed = _kill_group(previous)
    closed = _close_records(previous, root)
    if killed or (closed and (closed.killed_runs or closed.deleted_versions)):
        print(f"note: cleaned up after an earlier run that did not end ({previous.describe()}): "
              f"{killed} process(es) killed" + (f"; {closed}" if closed else ""), file=sys.stderr, flush=True)


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, tuple[int, float] | None]:
    """The worker's exit status, and the stop signal received meanwhile with when (None: not stopped)."""
    received: list[tuple[int, float]] = []
    deadline = [float("inf")]

    def on_signal(signum: int, _frame: object) -> None:
        if received:  # a second signal: no more grace
            deadline[0] = 0.0
            return
        received.append((signum, time.monotonic()))
        deadline[0] = time.monotonic() + GRACE_SECONDS
        proc.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        while True:
            try:
                return proc.wait(timeout=0.1), (received[0] if received else None)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline[0]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def held(root: Path, command: str, work_dirs: Folders, data_dirs: Folders) -> Iterator[RunLock]:
    """The project folder's, work folders' and data folders' locks (:class:`RunLock`; taken: exit 2),
    after cleaning up behind a previous run that did not end. A body that raises leaves the record
    not ended: the next run cleans up behind this one."""
    lock = RunLock(root, command, work_dirs, data_dirs).acquire()
    ended = False
    try:
        if lock.previous is not None:
            _clean_up_previous(lock.previous, root)
        yield lock
        ended = True
    finally:
        lock.release(ended=ended)


def supervise(argv: list[str], root: Path, work_dir: Path, data_dir: Path) -> int:
    """Run ``mergeline <argv>`` as the worker under the project's, the work folder's and the data
    folder's locks; returns its exit code."""
    with held(root, "mergeline " + " ".join(argv), work_dir, data_dir) as lock:
        holder = lock.holder
        assert holder is not None
        holder.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        proc = subprocess.Popen([sys.executable, "-m", "mergeline", *argv], env={**os.environ, OWNER_ENV: holder.owner},
                                start_new_session=True)
        holder.worker_pgid, holder.worker_start = proc.pid, process_start(proc.pid)
        lock.write_record()
        code, stopped = _wait(proc)
        # Should this cleanup fail, the record stays not ended: the next run in this folder finishes it.
        _kill_group(holder)
        closed = _close_records(holder, root) if code != 0 else None
        if stopped is not None:
            signum, when = stopped
            deleted = f" (deleted {', '.join(closed.deleted_versions)})" if closed and closed.deleted_versions else ""
            print(f"error: stopped by {signal.Signals(signum).name}: the run ended {time.monotonic() - when:.1f} s "
                  f"after the signal; its MLflow runs are closed KILLED, nothing is registered{deleted}, and no "
                  "process of it is left", file=sys.stderr, flush=True)
            return 128 + signum
        return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + N


__all__ = ["become_worker", "held", "is_worker", "supervise"]
