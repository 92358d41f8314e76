"""The shapes the stage table is made of: steps, stages, calls, and what runs calls (an executor).

A *stage* is what a user names (``mergeline stage NAME``, a ``dvc.yaml`` stage); it is made of
*steps*, each one library function called once or fanned out (per task × mode, per variant, ...).
Each call of a step is one Prefect task run and one nested MLflow run in the product, and one
plain function call in-process.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mergeline.pipeline.records import Experiment
    from mergeline.stages.common import StageContext


class Fanout(str, Enum):
    """What a step's calls range over."""

    ONCE = "once"
    PER_FIT = "per task × mode"
    PER_GIVEN = "per task given as a model"
    PER_VECTOR = "per task vector"
    PER_TASK = "per task (methods that need importance)"
    PER_VARIANT = "per variant"
    PER_SCORING = "per model × split"


def resolve(target: str) -> Any:
    """The object ``module:name`` names (the table names functions, so reading it imports no stage code)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Step:
    """One library function of a stage (``target``, ``module:name``): ``fn(ctx, *inputs) -> record``.

    ``reads`` are the params sections (dotted keys) one call reads: a call's cache key is made of
    them and of its inputs, and they are among its stage's DVC params.
    """

    name: str
    target: str
    reads: tuple[str, ...]
    fanout: Fanout
    pool: bool = False  # calls may run as flow runs on a work pool (GPU work)

    @cached_property
    def fn(self) -> Callable[..., Any]:
        return resolve(self.target)  # type: ignore[no-any-return]

    @property
    def output(self) -> Any:
        """The record type a call returns (the function's return annotation)."""
        return typing.get_type_hints(self.fn)["return"]

    @property
    def inputs(self) -> tuple[Any, ...]:
        """The annotated types of the function's inputs after the stage context."""
        hints = typing.get_type_hints(self.fn)
        names = list(inspect.signature(self.fn).parameters)[1:]
        return tuple(hints[name] for name in names)


@dataclass(frozen=True)
class Out:
    """A path a stage writes (``{work_dir}`` / ``{data_dir}`` filled from params)."""

    path: str
    persist: bool = True   # DVC keeps it while the stage runs (each folder is replaced atomically)
    metric: bool = False   # a DVC metrics file (small, not cached)


@dataclass(frozen=True)
class Call:
    """One call of a step: its inputs and a label naming it (``fine-tune:news-talos`` in MLflow)."""

    step: Step
    label: str
    args: tuple[Any, ...]
    outputs: tuple[str, ...] = ()  # root-relative paths its record points at: a cached record without them recomputes
    pooled: bool = False           # may run on the work pool (the step allows it and the plan wants it)


class Executor(Protocol):
    """Runs independent calls (at once, where it can) and returns their records in order."""

    def run(self, calls: Sequence[Call]) -> list[Any]: ...


# A stage's plan: which calls, from params and the records so far; returns the experiment with its records.
Advance = Callable[["Stage", "StageContext", "Experiment", Executor], "Experiment"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: its steps, how it fans out and what DVC needs to know about it."""

    name: str
    steps: tuple[Step, ...]
    plans: tuple[str, ...]     # params sections that decide which calls run (beyond what each call reads)
    needs: tuple[str, ...]     # upstream stages whose outputs it reads
    outs: tuple[Out, ...]
    code: tuple[str, ...]      # library code it runs besides its steps' own modules (DVC deps)
    plan: str | None           # its plan (``module:name`` of an :data:`Advance`); None: the register
                               # stage, run by the tracking side after the walk (it writes the registry)

    @cached_property
    def advance(self) -> Advance | None:
        return resolve(self.plan) if self.plan else None

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def params(self) -> tuple[str, ...]:
        """Every params section the stage reads: its steps' and its plan's (DVC's ``params:``)."""
        ordered: list[str] = []
        for section in [*(r for s in self.steps for r in s.reads), *self.plans]:
            if section not in ordered:
                ordered.append(section)
        # a dotted key inside a listed section adds nothing
        return tuple(s for s in ordered if not any(s.startswith(f"{other}.") for other in ordered))


__all__ = ["Advance", "Call", "Executor", "Fanout", "Out", "Stage", "Step", "resolve"]
