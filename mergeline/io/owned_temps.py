"""Temporaries beside an output, named so that a later process can prove them abandoned.

A stop signal ends a command through its cleanup (``mergeline.cli``), but ``kill -9``, an OOM kill
or a power cut leave a half-written temporary behind, as large as the output. Every temporary
:mod:`mergeline.io.atomic` makes is therefore named
``.<target>.mergeline-<kind>-<host>-<pid>-<start>-<random>``: ``kind`` is ``tmp`` (being written) or
``old`` (the previous output, moved aside for the swap); ``host`` a short hash of the host name;
``pid`` and ``start`` the writing process and its start time (``/proc/<pid>/stat``, so a recycled
pid is never mistaken for it). Before writing beside other files, :func:`remove_abandoned` removes
the temporaries there whose writer is provably gone: same host, and no process with that pid
started at that time. An ``old`` folder is the previous output: it is put back when its target is
missing (the writer died between the two renames of the swap), else removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from mergeline.runlock import alive, process_start

_NAME = re.compile(r"^\.(?P<target>.+)\.mergeline-(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _prefix(target: Path, kind: str) -> str:
    pid = os.getpid()
    return f".{target.name}.mergeline-{kind}-{_host()}-{pid}-{process_start(pid) or 0}-"


def temp_dir(target: Path, kind: str = "tmp") -> Path:
    """A new empty folder beside ``target``, named as this process's ``kind`` temporary of it."""
    return Path(tempfile.mkdtemp(prefix=_prefix(target, kind), dir=target.parent))


def temp_file(target: Path) -> Path:
    """A new empty file beside ``target``, named as this process's temporary of it."""
    fd, name = tempfile.mkstemp(prefix=_prefix(target, "tmp"), dir=target.parent)
    os.close(fd)
    return Path(name)


def _abandoned(match: re.Match[str]) -> bool:
    if match["host"] != _host() or process_start(os.getpid()) is None:
        return False  # another machine's, or no process table to prove a writer gone
    return not alive(int(match["pid"]), int(match["start"]))


def remove_abandoned(folder: Path) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer is gone; returns what was removed or restored."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []  # not there yet, or not readable: nothing of ours to find
    handled = []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or not _abandoned(match):
            continue
        path = Path(entry.path)
        target = path.with_name(match["target"])
        if match["kind"] == "old" and not target.exists() and not target.is_symlink():
            os.replace(path, target)  # the writer died mid-swap: the previous output goes back
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        handled.append(path)
    return handled


__all__ = ["remove_abandoned", "temp_dir", "temp_file"]
