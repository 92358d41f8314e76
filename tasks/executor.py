"""The product's executor: each call a Prefect task run on the flow's task runner, or a flow run on a pool.

All calls handed over together are submitted before any is awaited, so the flow's
``ThreadPoolTaskRunner`` overlaps them (fine-tunes, merges, a round of evaluations) up to its
``max_workers``; calls the plan marks ``pooled`` (fine-tunes, evaluations of variants) become flow
runs on the work pool when one is configured (``flows/deployments.py``), while the others run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mergeline.params import ExperimentParams
from mergeline.pipeline.records import decode, encode
from mergeline.pipeline.steps import Call
from tasks._stage import RunHandle, expected_output_missing
from tasks.assets import materializing
from tasks.stages import TASKS


class Pool(Protocol):
    """Flow runs on a work pool: which steps it takes, submit calls at once, then wait for their records."""

    def takes(self, call: Call) -> bool: ...

    def submit(self, calls: Sequence[Call]) -> Any: ...

    def gather(self, submitted: Any) -> list[dict[str, Any]]: ...


class PrefectExecutor:
    def __init__(self, params: ExperimentParams, run: RunHandle, pool: Pool | None = None) -> None:
        self.params = params
        self.run_handle = run
        self.pool = pool

    def run(self, calls: Sequence[Call]) -> list[Any]:
        pooled = [i for i, call in enumerate(calls) if call.pooled and self.pool is not None and self.pool.takes(call)]
        submitted = self.pool.submit([calls[i] for i in pooled]) if pooled and self.pool is not None else None
        futures = {}
        for i, call in enumerate(calls):
            if i in pooled:
                continue
            task = TASKS[call.step.name]
            if expected_output_missing(self.run_handle.root, *call.outputs):
                task = task.with_options(refresh_cache=True)
            # Each output a Prefect asset, upstream the files the call reads (tasks/assets.py).
            # A merge declares no outputs (its folder is a cache of merged.json), yet its folder is the asset.
            made = call.outputs or ((f"{self.params.work_dir}/merged/{call.label}",) if call.step.name == "merge" else ())
            task = materializing(task, self.params.experiment, made, encode(call.args), group=[self.params.data_dir])
            futures[i] = task.submit(self.params, call.label, call.args, self.run_handle)
        results: dict[int, dict[str, Any]] = {i: future.result() for i, future in futures.items()}
        if submitted is not None and self.pool is not None:
            results.update(zip(pooled, self.pool.gather(submitted)))
        return [decode(call.step.output, results[i]) for i, call in enumerate(calls)]


__all__ = ["Pool", "PrefectExecutor"]
