"""The quality scripts keep records as plain dicts (their JSON shape); the pipeline passes typed records.

This is the one place the two meet: a step of the stage table called on dict records (inputs decoded
by the step's own annotations, the record encoded back), an experiment's records as one dict, and
the library's scoring helpers on dicts.
"""

from __future__ import annotations

from typing import Any

from mergeline.params import ExperimentParams, params_from_tree
from mergeline.pipeline.records import (
    BaseRecord, Evaluation, Experiment, Fit, Importance, Variant, Vector, decode, encode,
)
from mergeline.pipeline.table import STEPS
from mergeline.stages.common import StageContext
from mergeline.stages.evaluate import select_best, summarize
from mergeline.stages.merge import merge_config


def params_of(params: dict[str, Any]) -> ExperimentParams:
    return params_from_tree(params, "quality params")


def typed_args(step: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Dict records as the typed inputs of ``step`` (by the annotations of its function).

    A fine-tuned model given where a base goes (LATA's experts start from θ_inst) is a base record of
    the same folder and content.
    """
    return tuple(decode(kind, _as_base(value) if kind is BaseRecord else value)
                 for kind, value in zip(STEPS[step].inputs, args))


def _as_base(record: dict[str, Any]) -> dict[str, Any]:
    if "task" not in record:
        return record
    return encode(BaseRecord(id=f"{record['task']}-{record['mode']}", path=record["path"], sha256=record["sha256"],
                             meta=record.get("meta") or {}))


def call(step: str, ctx: StageContext, *args: Any) -> dict[str, Any]:
    """One call of ``step``'s library function, in this process, on dict records."""
    return encode(STEPS[step].fn(ctx, *typed_args(step, args)))


def as_dict(exp: Experiment) -> dict[str, Any]:
    """An experiment's records in the quality scripts' shape (``checkpoints["news:full"]``, ``variants``, ...)."""
    by_fit = {group: {f"{f.task}:{f.mode}": encode(r) for f, r in records.items()}
              for group, records in (("checkpoints", exp.checkpoints), ("vectors", exp.vectors))}
    return {"data": encode(exp.data), "base": encode(exp.base), **by_fit, "importance": encode(exp.importance),
            "diagnostics": encode(exp.diagnostics), "variants": encode(exp.variants),
            "configs": {name: rec.config for name, rec in exp.merged.items()}, "merged": encode(exp.merged),
            **(encode(exp.scores) if exp.scores is not None else {})}


def correctness(evaluation: dict[str, Any]) -> dict[str, str]:
    """``{set: "0110..."}`` of an evaluation record (empty for a placeholder)."""
    return {t: m.get("correct", "") for t, m in (evaluation.get("raw") or {}).items()}


def _scores(evaluation: dict[str, Any]) -> Evaluation:
    return Evaluation(name=evaluation.get("name", ""), split=evaluation.get("split", ""),
                      metrics=evaluation["metrics"])


def summarize_dicts(ctx: StageContext, evaluation: dict[str, Any], base: dict[str, Any],
                    singles: dict[str, dict[str, Any]] | None) -> dict[str, float]:
    return summarize(ctx, _scores(evaluation), _scores(base),
                     None if singles is None else {t: _scores(e) for t, e in singles.items()})


def merge_config_dicts(ctx: StageContext, spec: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's merge config of ``spec`` over the experiment's (dict) records."""
    vectors = {Fit(*key.split(":")): decode(Vector, v) for key, v in records["vectors"].items()}
    return merge_config(ctx, decode(Variant, spec), decode(BaseRecord, records["base"]), vectors,
                        {t: decode(Importance, i) for t, i in records["importance"].items()})


def select_best_dicts(rows: dict[str, dict[str, float]], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return encode(select_best(rows, {name: decode(Variant, v) for name, v in variants.items()}))


__all__ = ["as_dict", "call", "correctness", "merge_config_dicts", "params_of", "select_best_dicts",
           "summarize_dicts", "typed_args"]
