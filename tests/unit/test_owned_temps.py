"""Temporaries beside outputs: a dead writer's are removed by the next write, nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mergeline.io.atomic import atomic_dir, atomic_file
from mergeline.io.owned_temps import _host, remove_abandoned, temp_dir
from mergeline.runlock import process_start


def _dead_writer() -> tuple[int, int]:
    """(pid, start) of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = process_start(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    return proc.pid, start


def _temp(folder: Path, target: str, kind: str, pid: int, start: int, host: str | None = None) -> Path:
    path = folder / f".{target}.mergeline-{kind}-{host or _host()}-{pid}-{start}-x1y2"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"\0" * 1024)
    return path


def test_a_dead_writers_temporaries_go_and_live_or_foreign_ones_stay(tmp_path: Path) -> None:
    pid, start = _dead_writer()
    dead = _temp(tmp_path, "out", "tmp", pid, start)
    dead_file = tmp_path / f".merge.json.mergeline-tmp-{_host()}-{pid}-{start}-abc"
    dead_file.write_text("{")
    mine = _temp(tmp_path, "out", "tmp", os.getpid(), process_start(os.getpid()) or 0)
    recycled = _temp(tmp_path, "out2", "tmp", os.getpid(), start + 1)  # this pid, another start: dead
    foreign = _temp(tmp_path, "out", "tmp", pid, start, host="0" * 8 if _host() != "0" * 8 else "1" * 8)
    users = tmp_path / ".out.tmp-mine"  # the user's own folder, not named as ours
    users.mkdir()
    removed = remove_abandoned(tmp_path)
    assert sorted(removed) == sorted([dead, dead_file, recycled])
    assert not dead.exists() and not dead_file.exists() and not recycled.exists()
    assert mine.is_dir() and foreign.is_dir() and users.is_dir()


def test_an_interrupted_swap_puts_the_previous_output_back(tmp_path: Path) -> None:
    pid, start = _dead_writer()
    # Died after moving the previous output aside, before the new one took its place.
    previous = _temp(tmp_path, "model", "old", pid, start)
    # Died after the swap, before removing what it moved aside: the target is there.
    (tmp_path / "done").mkdir()
    stale_old = _temp(tmp_path, "done", "old", pid, start)
    remove_abandoned(tmp_path)
    assert (tmp_path / "model" / "model.safetensors").is_file() and not previous.exists()
    assert not stale_old.exists() and (tmp_path / "done").is_dir()


def test_atomic_writes_clear_what_a_killed_writer_left(tmp_path: Path) -> None:
    pid, start = _dead_writer()
    left = _temp(tmp_path, "variant_a", "tmp", pid, start)
    with atomic_dir(tmp_path / "variant_b", kind="merge") as tmp:
        assert tmp.name.startswith(f".variant_b.mergeline-tmp-{_host()}-{os.getpid()}-")
        (tmp / "w.bin").write_bytes(b"1")
    assert not left.exists()
    left = _temp(tmp_path, "index.json", "tmp", pid, start)
    with atomic_file(tmp_path / "other.json") as handle:
        handle.write("{}")
    assert not left.exists() and (tmp_path / "other.json").read_text() == "{}"


def test_temp_dir_names_prove_this_process(tmp_path: Path) -> None:
    made = temp_dir(tmp_path / "out")
    assert made.parent == tmp_path and made.is_dir()
    assert remove_abandoned(tmp_path) == [] and made.is_dir()  # this process is alive
