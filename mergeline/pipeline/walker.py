"""Run the stage table in order, up to a named stage, through a pluggable executor.

The executor decides how calls run: :class:`InProcess` calls the library functions in this
process, one after the other (tests, timing); the product's executor (``tasks/executor.py``)
submits them as Prefect tasks on a task runner, or as flow runs on a work pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergeline.pipeline.records import Experiment
from mergeline.pipeline.steps import Call, Executor
from mergeline.pipeline.table import STAGE_NAMES, stages_until
from mergeline.stages.common import StageContext

LAST_WALKED = "evaluate"  # register writes the model registry: the tracking side runs it after the walk


def walk(ctx: StageContext, executor: Executor, until: str = LAST_WALKED) -> Experiment:
    """The records of every stage up to ``until`` (at most ``evaluate``), each stage planned by the table."""
    if until not in STAGE_NAMES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGE_NAMES)}")
    exp = Experiment()
    for stage in stages_until(until):
        if stage.advance is None:
            break
        exp = stage.advance(stage, ctx, exp, executor)
    return exp


@dataclass
class Timing:
    step: str
    label: str
    seconds: float


@dataclass
class InProcess:
    """Each call as a plain function call, in order, with the walk's context; every call is timed."""

    ctx: StageContext
    timings: list[Timing] = field(default_factory=list)
    context_for: Callable[[Call], StageContext] | None = None

    def run(self, calls: Sequence[Call]) -> list[Any]:
        records = []
        for call in calls:
            ctx = self.context_for(call) if self.context_for else self.ctx
            start = time.perf_counter()
            records.append(call.step.fn(ctx, *call.args))
            self.timings.append(Timing(call.step.name, call.label, time.perf_counter() - start))
        return records


__all__ = ["InProcess", "LAST_WALKED", "Timing", "walk"]
