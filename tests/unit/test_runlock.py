"""The work-folder lock and the proof of which leftover processes belong to a dead run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mergeline.commands._supervise import _kill_group
from mergeline.errors import MergelineError
from mergeline.runlock import Holder, RunLock, group_members, leftover_processes, process_start


def test_second_run_in_a_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path, "mergeline run") as first:
        with pytest.raises(MergelineError, match=rf"in use by another mergeline run \(pid {os.getpid()} on .*`mergeline run`"):
            RunLock(tmp_path, "mergeline run --set merge.lambda=0.5").acquire()
        assert first.holder is not None and first.holder.pid == os.getpid()
    # Released: the next run takes it, and a clean end leaves nothing to clean up.
    with RunLock(tmp_path, "mergeline run") as second:
        assert second.previous is None


def test_two_projects_naming_one_work_folder_are_one_run_at_a_time(tmp_path: Path) -> None:
    work = tmp_path / "shared-work"
    with RunLock(tmp_path / "a", "mergeline run", work) as first:
        assert first.holder is not None
        # Another project folder (its own project lock is free) naming the same work folder, by
        # another path to it: refused, naming the holder and its project.
        (tmp_path / "link").symlink_to(work)
        with pytest.raises(MergelineError, match=rf"link/\.mergeline-work: this work folder is in use by "
                                                 rf"another mergeline run \(pid {os.getpid()} on .*, project "
                                                 rf"{tmp_path / 'a'}\); .*a work_dir of its own"):
            RunLock(tmp_path / "b", "mergeline run", tmp_path / "link").acquire()
        # The refused run took nothing: its project lock is free, no record was written for it.
        assert not (tmp_path / "b" / ".mergeline" / "run.json").exists()
        with RunLock(tmp_path / "b", "mergeline run", tmp_path / "b" / "work"):
            pass
    with RunLock(tmp_path / "b", "mergeline run", work) as later:
        assert later.previous is None


def test_a_run_that_did_not_end_is_handed_to_the_next_one(tmp_path: Path) -> None:
    lock = RunLock(tmp_path, "mergeline run").acquire()
    assert lock.holder is not None
    lock.holder.worker_pgid, lock.holder.worker_start = 12345, 678
    lock.write_record()
    lock.release(ended=False)  # as if the supervisor were killed: the kernel drops the flock
    with RunLock(tmp_path, "mergeline run") as later:
        assert later.previous is not None and later.previous.owner == lock.holder.owner
        assert later.previous.worker_pgid == 12345


def test_leftover_processes_are_killed_only_when_provably_the_runs_own(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        start = process_start(child.pid)
        assert group_members(child.pid) == [child.pid]
        recycled = Holder(pid=1, start=None, host="h", command="c", since=0.0, worker_pgid=child.pid,
                          worker_start=(start or 0) + 1)
        assert leftover_processes(recycled) == []  # same group id, another process: not ours
        ours = Holder(pid=1, start=None, host="h", command="c", since=0.0, worker_pgid=child.pid, worker_start=start)
        assert leftover_processes(ours) == [child.pid]
        assert _kill_group(ours) == 1
        child.wait(timeout=10)
        assert leftover_processes(ours) == []
    finally:
        if child.poll() is None:
            child.kill()


def test_two_projects_naming_one_data_folder_are_one_run_at_a_time(tmp_path: Path) -> None:
    # data_dir is not inside work_dir (defaults data/tasks and data/work): its own lock keeps two
    # projects from writing one set of task splits at once.
    data = tmp_path / "shared-tasks"
    with RunLock(tmp_path / "a", "mergeline run", tmp_path / "a" / "work", data):
        (tmp_path / "link").symlink_to(data)
        with pytest.raises(MergelineError, match=rf"^data_dir {tmp_path / 'link'}: this data folder is in use by "
                                                 r"another mergeline run .*a data_dir of its own$"):
            RunLock(tmp_path / "b", "mergeline run", tmp_path / "b" / "work", tmp_path / "link").acquire()
        # The refused run holds nothing: its project and work folder are free for a run of its own.
        assert not (tmp_path / "b" / ".mergeline" / "run.json").exists()
        with RunLock(tmp_path / "b", "mergeline run", tmp_path / "b" / "work", tmp_path / "b" / "tasks"):
            pass
        # One folder named twice (a sweep's points, or data_dir spelled two ways) is one lock, not a refusal.
        with RunLock(tmp_path / "c", "mergeline sweep", (), [tmp_path / "c" / "t", tmp_path / "c" / "t" / "."]):
            pass
    assert list(data.iterdir()) == []  # nothing written into it: the folder is a DVC output, hashed whole
    with RunLock(tmp_path / "b", "mergeline run", tmp_path / "b" / "work", data):
        pass
