"""One pipeline run per project folder, work folder and data folder, and proof of which processes a dead run
left behind.

``<root>/.mergeline/run.lock`` is held with ``flock`` by the supervising ``mergeline run``/``stage``
process for as long as the run or any process of it lives; the kernel releases it when that process
dies, however it dies, so a lock is never stale. The run's work folder is locked the same way, through
``<work_dir>/.mergeline-work`` (which also marks the folder as a work folder, ``mergeline.io.outputs``,
and names the holder and its project): two projects naming one ``work_dir`` would otherwise share, and
mix, one set of stage outputs. The data folder (``data_dir``, by default a sibling of the work folder,
not inside it) is locked as well, by a ``flock`` of the folder itself: two projects naming one
``data_dir`` would otherwise race on ``prepare-data``. Nothing is written into it, because the whole
folder is a DVC output whose hash a lock file would change on every run; so a refused run learns
that the folder is taken, not by whom. ``run.json`` beside the project lock names the holder: its pid and
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.outputs import WORK_MARKER

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


def _work_holder(work_dir: Path) -> str:
    try:
        record = json.loads((work_dir / WORK_MARKER).read_text(encoding="utf-8"))
        return f"{Holder(**record['holder']).describe()}, project {record['project']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


def _flock(path: Path, folder: bool = False) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock`` (None: another process holds it).

    A lock file is never opened through a symbolic link; a ``folder`` is locked itself (-1: its file
    system cannot lock a folder, as some network ones cannot). Not inherited by children (Python's
    default)."""
    flags = os.O_RDONLY | os.O_DIRECTORY if folder else os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        what = "the data folder" if folder else "the run lock"
        raise MergelineError(f"{path}: cannot open {what} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        if not folder:
            raise
        return -1  # unlocked: the work folder's lock still keeps one run per work folder
    return fd


Folders = Path | Sequence[Path] | None


def _paths(folders: Folders) -> tuple[Path, ...]:
    """Each folder once (by where it resolves to): a second flock of one folder would refuse its own run."""
    given = () if folders is None else (folders,) if isinstance(folders, (str, Path)) else folders
    unique: dict[Path, Path] = {}
    for folder in given:
        unique.setdefault(Path(folder).resolve(), Path(folder))
    return tuple(unique.values())


def _make(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergelineError(f"{key} {folder}: cannot create it ({exc.strerror})") from None


class RunLock:
    """``with RunLock(root, command, work_dir, data_dir) as lock:`` holds the project folder, the work
    folder(s) and the data folder(s); refuses (exit 2) when any is taken, and then holds none."""

    def __init__(self, root: Path, command: str, work_dir: Folders = None, data_dir: Folders = None) -> None:
        self.root = Path(root)
        self.folder = self.root / STATE_DIR
        self.lock_path = self.folder / "run.lock"
        self.record_path = self.folder / "run.json"
        self.work_dirs = _paths(work_dir)
        self.data_dirs = _paths(data_dir)
        self.command = command
        self.holder: Holder | None = None
        self.previous: Holder | None = None
        self._fd: int | None = None
        self._work_fds: list[int] = []
        self._data_fds: list[int] = []

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

    def _lock_work_dir(self, work_dir: Path) -> int:
        """Take a work folder's lock; nothing is written yet, so a refusal leaves no trace."""
        _make(work_dir, "work_dir")
        fd = _flock(work_dir / WORK_MARKER)
        if fd is None:
            raise MergelineError(f"{work_dir / WORK_MARKER}: this work folder is in use by another mergeline run "
                                 f"({_work_holder(work_dir)}); wait for it to finish or stop it, or give this "
                                 "project a work_dir of its own")
        return fd

    def _lock_data_dir(self, data_dir: Path) -> int:
        _make(data_dir, "data_dir")
        fd = _flock(data_dir, folder=True)
        if fd is None:
            raise MergelineError(f"data_dir {data_dir}: this data folder is in use by another mergeline run (of "
                                 "another project naming the same data_dir); wait for it to finish or stop it, or "
                                 "give this project a data_dir of its own")
        return fd

    def _write_work_record(self, fd: int) -> None:
        # In place through the locked descriptor: a renamed-in file would be a new, unlocked inode.
        assert self.holder is not None
        payload = json.dumps({"written_by": "mergeline", "kind": "work", "project": str(self.root.resolve()),
                              "holder": asdict(self.holder)}, indent=1).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)

    def _close_folders(self) -> None:
        for fd in [*self._work_fds, *self._data_fds]:
            if fd >= 0:
                os.close(fd)
        self._work_fds, self._data_fds = [], []

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = _flock(self.lock_path)
        if fd is None:
            other = self.read_record()
            who = other.describe() if other else "another process"
            raise MergelineError(f"{self.lock_path}: this project folder is in use by another mergeline run ({who}); "
                                 "wait for it to finish or stop it, then run again")
        try:
            for work_dir in self.work_dirs:
                self._work_fds.append(self._lock_work_dir(work_dir))
            for data_dir in self.data_dirs:
                self._data_fds.append(self._lock_data_dir(data_dir))
        except BaseException:
            self._close_folders()
            os.close(fd)  # before any record is written: a dead run's record stays for the next one
            raise
        self._fd = fd
        previous = self.read_record()
        self.previous = previous if previous is not None and not previous.ended else None
        pid = os.getpid()
        self.holder = Holder(pid=pid, start=process_start(pid), host=socket.gethostname(), command=self.command,
                             since=time.time())
        self.write_record()
        for work_fd in self._work_fds:
            self._write_work_record(work_fd)
        return self

    def release(self, ended: bool = True) -> None:
        if self._fd is None:
            return
        if self.holder is not None:
            self.holder.ended = ended
            self.write_record()
        self._close_folders()
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["Holder", "RunLock", "alive", "current_owner", "set_owner", "group_members", "leftover_processes", "process_group", "process_start"]
