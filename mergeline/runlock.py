"""One pipeline run per work folder, and proof of which processes a dead run left behind.

``<root>/.mergeline/run.lock`` is held with ``flock`` by the supervising ``mergeline run``/``stage``
process for as long as the run or any process of it lives; the kernel releases it when that process
dies, however it dies, so a lock is never stale. ``run.json`` beside it names the holder: its pid and
start time (``/proc/<pid>/stat``, so a recycled pid is never mistaken for it), the process group of
the pipeline worker, the MLflow store and whether the run ended cleanly. A later run that takes the
lock and finds a record that did not end cleanly owns what that record names: the surviving
processes of its worker's group (a process group id is not reused while any member lives) and the
MLflow runs tagged with its owner id.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mergeline.errors import MergelineError

STATE_DIR = ".mergeline"
_owner: list[str] = []


def set_owner(owner: str) -> None:
    """Record, in the pipeline worker, the owner id its MLflow runs are tagged with."""
    _owner[:] = [owner]


def current_owner() -> str | None:
    """The owner id of this process's run (None outside a supervised ``mergeline run``/``stage``)."""
    return _owner[0] if _owner else None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return raw[raw.rindex(")") + 2:].split()


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None when no such process)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (zombies, already dead, are left out)."""
    members: list[int] = []
    if not Path("/proc").is_dir():
        return members  # no process table to read (not Linux): only the group kill applies
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return sorted(members)


def alive(pid: int, start: int | None) -> bool:
    """``pid`` runs and is the process that started at ``start`` (not a recycled pid)."""
    now = process_start(pid)
    return now is not None and (start is None or now == start)


@dataclass
class Holder:
    """What ``run.json`` records about the run that holds (or held) the lock."""

    pid: int
    start: int | None
    host: str
    command: str
    since: float
    tracking_uri: str | None = None
    worker_pgid: int | None = None
    worker_start: int | None = None
    ended: bool = False

    @property
    def owner(self) -> str:
        """The id this run's MLflow runs are tagged with (``mergeline.owner``)."""
        return f"{self.host}:{self.pid}:{self.start}"

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, `{self.command}`, since {started}"


def leftover_processes(holder: Holder) -> list[int]:
    """Processes of ``holder``'s worker group that are still alive, provably the worker's own."""
    pgid = holder.worker_pgid
    if pgid is None or pgid == os.getpgrp():
        return []
    leader_start = process_start(pgid)
    if leader_start is not None and leader_start != holder.worker_start:
        return []  # the group id now belongs to a new process: not ours
    return [pid for pid in group_members(pgid) if pid != os.getpid()]


class RunLock:
    """``with RunLock(root, command) as lock:`` holds the work folder; refuses (exit 2) when taken."""

    def __init__(self, root: Path, command: str) -> None:
        self.folder = Path(root) / STATE_DIR
        self.lock_path = self.folder / "run.lock"
        self.record_path = self.folder / "run.json"
        self.command = command
        self.holder: Holder | None = None
        self.previous: Holder | None = None
        self._fd: int | None = None

    def read_record(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write_record(self) -> None:
        assert self.holder is not None
        tmp = self.record_path.with_name(f".run.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self.holder), indent=1))
        os.replace(tmp, self.record_path)

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = self.read_record()
            who = other.describe() if other else "another process"
            raise MergelineError(f"{self.lock_path}: this work folder is in use by another mergeline run ({who}); "
                                 "wait for it to finish or stop it, then run again") from None
        self._fd = fd
        previous = self.read_record()
        self.previous = previous if previous is not None and not previous.ended else None
        pid = os.getpid()
        self.holder = Holder(pid=pid, start=process_start(pid), host=socket.gethostname(), command=self.command,
                             since=time.time())
        self.write_record()
        return self

    def release(self, ended: bool = True) -> None:
        if self._fd is None:
            return
        if self.holder is not None:
            self.holder.ended = ended
            self.write_record()
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["Holder", "RunLock", "alive", "current_owner", "set_owner", "group_members", "leftover_processes", "process_group", "process_start"]
