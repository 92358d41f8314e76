"""Write outputs to a temporary path beside the target and rename when complete, never over user data.

A crash or a bad input therefore never leaves a half-written output at the target path, and no
temporary folder survives a failure (an exception in the body, in the swap, Ctrl-C, or SIGTERM/SIGHUP,
which the CLI turns into an exit through this cleanup). What ``kill -9`` leaves behind, the next
atomic write in the same folder removes (:mod:`mergeline.io.owned_temps`: the temporaries' names
prove their writer is gone).

Every output folder ends with mergeline's marker (``mergeline.io.outputs``: its kind and the files
written), and an existing target is replaced only when ``replace_problem`` finds it empty or a previous
output of the same kind holding nothing else; anything else is refused with a one-line
:class:`MergelineError`. :func:`check_output_dir` adds the checks that need to know the inputs: an
output equal to, inside, or holding an input, the current folder, or a place in a work folder is
refused before any work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.outputs import OutputKind, replace_problem, work_folder_of, write_marker
from mergeline.io.owned_temps import remove_abandoned, temp_dir, temp_file


def _check_replaceable(target: Path, kind: OutputKind, overwrite: bool, flag: str | None) -> None:
    problem = replace_problem(target, kind, overwrite, flag)
    if problem is not None:
        raise MergelineError(problem)


def check_output_dir(target: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (), *,
                     kind: OutputKind, overwrite: bool = False, flag: str | None = "--overwrite",
                     work_folder_ok: bool = False) -> Path:
    """Refuse an output folder that would destroy user data, before any work starts.

    Refused: the current folder or one holding it; a folder equal to, inside, or holding one of
    ``inputs`` (model folders, weight files, configs); a pipeline's work folder or a place inside one
    (its stage outputs are the pipeline's; unless ``work_folder_ok``, for the stages themselves);
    whatever ``replace_problem`` refuses; a place that cannot be written.
    """
    target = Path(target)
    if target.is_symlink():
        raise MergelineError(f"{target}: is a symbolic link; give the folder itself as the output")
    where = target.resolve()
    cwd = Path.cwd().resolve()
    if cwd == where or cwd.is_relative_to(where):
        raise MergelineError(f"{target}: is the current folder or holds it; choose a new output folder")
    for item in inputs:
        source = Path(item).resolve()
        if where == source or where.is_relative_to(source) or source.is_relative_to(where):
            raise MergelineError(
                f"{target}: is, is inside or holds the input {item}; choose another output folder"
            )
    work = None if work_folder_ok else work_folder_of(where)
    if work is not None:
        inside = "is" if work == where else f"is inside {work},"
        raise MergelineError(f"{target}: {inside} a mergeline work folder (a pipeline's stage outputs); "
                             "choose an output folder outside it")
    _check_replaceable(target, kind, overwrite, flag)
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MergelineError(f"{target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MergelineError(f"{target}: cannot write in {parent} (permission denied)")
    return target


def _remove_created(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: something else lives there now


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, kind: OutputKind, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    The finished folder gets the marker of a ``kind`` output. ``target`` may be replaced only when it
    is absent, empty or a previous output of ``kind`` holding nothing else (and, for a non-empty one,
    ``overwrite``); checked before the body runs and again before the swap. On any exception the
    temporary directory (and any parent folder made for it) is removed and ``target`` is left as it was.
    """
    target = Path(os.path.abspath(target))  # "." has no name to put a sibling beside
    _check_replaceable(target, kind, overwrite, None)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(target.parent)
        _check_replaceable(target, kind, overwrite, None)  # an abandoned swap may have put a previous output back
        tmp = temp_dir(target)
        yield tmp
        write_marker(tmp, kind)
        _check_replaceable(target, kind, overwrite, None)  # the body took time: look again
        if target.exists():
            # Move the old output aside first so the rename below is a single atomic step.
            old = temp_dir(target, "old")
            try:
                os.replace(target, old)
            except BaseException:
                old.rmdir()
                raise
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike[str], mode: str = "w") -> Iterator:
    """Open a temporary file beside ``target`` for writing; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent)
    tmp_name = temp_file(target)
    try:
        with open(tmp_name, mode) as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
