"""Shared plumbing of the stage functions: paths, device choice, stage records."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeline.io.atomic import atomic_file
from mergeline.params import ExperimentParams

LogFn = Callable[[str, float, int | None], None]
ProgressFn = Callable[[str], None]
ParamsFn = Callable[[Mapping[str, Any]], None]
ArtifactFn = Callable[[Path, str], None]


def resolve_device(preference: str) -> str:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    import torch

    from mergeline.errors import MergelineError

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise MergelineError("device: 'cuda' requested but torch sees no CUDA device")
    return preference


@dataclass
class StageContext:
    """What every stage needs: validated params, where to write, how to report."""

    params: ExperimentParams
    root: Path = field(default_factory=Path.cwd)
    device: str = "cpu"
    log: LogFn | None = None
    progress: ProgressFn | None = None
    log_params: ParamsFn | None = None
    log_artifact: ArtifactFn | None = None

    @property
    def work(self) -> Path:
        return self.root / self.params.work_dir

    @property
    def data(self) -> Path:
        return self.root / self.params.data_dir

    def say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        if self.log:
            self.log(name, float(value), step)

    def used(self, values: Mapping[str, Any]) -> None:
        """Report the settings a stage call runs with, as it uses them (tracked as the run's params).

        Stages report what they pass on, not the params sections they were given: a TaLoS
        fine-tune reports ``lr`` = ``talos.lr``, the step its optimizer takes.
        """
        if self.log_params:
            self.log_params(values)

    def artifact(self, path: Path, folder: str) -> None:
        """Keep a file the call wrote (a plot) with its tracked run, under ``folder``."""
        if self.log_artifact:
            self.log_artifact(path, folder)


def rel(path: Path, root: Path) -> str:
    """Paths in records are relative to the project root, so records survive a move of the checkout."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_json(path: Path, payload: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)


@dataclass
class Clock:
    seconds: float = 0.0


@contextmanager
def timed() -> Iterator[Clock]:
    """Wall time of the block, in ``clock.seconds`` once it ends (rounded to ms)."""
    clock = Clock()
    start = time.perf_counter()
    yield clock
    clock.seconds = round(time.perf_counter() - start, 3)
