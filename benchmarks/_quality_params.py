"""The quality benchmark's params file: a pipeline params file plus a ``quality:`` section.

    experiment: mergeline-quality        # every key of params/default.yaml (ExperimentParams) ...
    tasks: [news, sentiment, code, docstring]
    merge: {methods: {task_arithmetic: {lambdas: [0.0, 0.05, ..., 1.0]}, ...}}
    quality:                             # ... plus what only the benchmark reads (QualityParams)
      seed_keys: [data.seed, finetune.seed, merge.seed]
      lata: {...}  negation: {...}  analogy: {...}  cost: {...}

The pipeline part walks the pipeline's stage table unchanged (addition: every method of
``merge.methods``); ``quality`` adds LATA, negation, analogy and cost. Per seed, the keys named in
``seed_keys`` are set to the seed, and ``work_dir``/``data_dir`` move under ``<out>/seed<N>/``, so
seeds never share outputs.

Errors (MergelineError, one line naming the file and key): unreadable YAML, a bad pipeline key (the
same checks as ``mergeline run``), a bad ``quality`` key, a negation method the pipeline does not
prepare (``sta`` needs ``merge.methods.sta`` for its importance, ``talos`` needs ``talos.enabled``),
a negation task that is not a training task.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mergeline.errors import MergelineError
from mergeline.methods import pipeline_method
from mergeline.params import ExperimentParams, MethodSweep

NEGATION_METHODS = ("task_arithmetic", "sta", "talos")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstructParams(_Strict):
    """The stand-in instruction model θ_inst: the base fine-tuned on a generic instruction-format set."""

    n_train: int = Field(64, ge=1, description="instruction-format training examples")
    n_validation: int = Field(16, ge=1)
    n_test: int = Field(16, ge=1)
    finetune: dict[str, Any] = Field(default_factory=dict, description="overrides of the finetune section")


class LataParams(_Strict):
    enabled: bool = True
    instruct: InstructParams = Field(default_factory=InstructParams)
    lambdas: list[float] = Field(default_factory=lambda: [1.0])
    options: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"scheme": "linear_rank"}],
        description="LATA parameter sets (scheme, delta, ...); each is swept over every λ")

    @model_validator(mode="after")
    def _ranges(self) -> "LataParams":
        MethodSweep(lambdas=self.lambdas)  # same λ range check as the pipeline's sweeps
        if not self.options:
            raise ValueError("options: needs at least one parameter set")
        return self


class NegationParams(_Strict):
    enabled: bool = True
    tasks: list[str] | None = Field(None, description="tasks to forget (default: every training task)")
    control_ratio: float = Field(0.95, gt=0, le=1, description="control acc must stay ≥ ratio × base's")
    methods: dict[str, MethodSweep] = Field(default_factory=lambda: {m: MethodSweep() for m in NEGATION_METHODS})

    @model_validator(mode="after")
    def _known(self) -> "NegationParams":
        for name in self.methods:
            if name not in NEGATION_METHODS:
                raise ValueError(f"methods: unknown negation method {name!r}; known: {', '.join(NEGATION_METHODS)}")
        return self


class AnalogyParams(_Strict):
    """Sentiment on airline tweets : sentiment on other tweets :: LM on airline : LM on other tweets."""

    enabled: bool = True
    n_train: int = Field(64, ge=1)
    n_validation: int = Field(16, ge=1)
    n_test: int = Field(32, ge=1)
    lambdas: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    lm_weights: list[float] = Field(default_factory=lambda: [1.0], description="μ of the LM pair (τ_B − τ_A)")
    finetune: dict[str, Any] = Field(default_factory=dict, description="overrides of the finetune section")

    @model_validator(mode="after")
    def _ranges(self) -> "AnalogyParams":
        MethodSweep(lambdas=self.lambdas)
        MethodSweep(lambdas=self.lm_weights)
        return self


class CostParams(_Strict):
    enabled: bool = True
    seeds: list[int] | None = Field(None, description="seeds whose costs are measured (default: every seed)")


class QualityParams(_Strict):
    seed_keys: list[str] = Field(default_factory=lambda: ["data.seed", "finetune.seed", "merge.seed"])
    prune_merged: bool = Field(False, description="delete merged models once evaluated (disk; re-runs re-merge)")
    prune_work: bool = Field(False, description="delete a seed's work folder once its results are written "
                                                "(disk; a re-run then recomputes that seed)")
    lata: LataParams = Field(default_factory=LataParams)
    negation: NegationParams = Field(default_factory=NegationParams)
    analogy: AnalogyParams = Field(default_factory=AnalogyParams)
    cost: CostParams = Field(default_factory=CostParams)


def _one_line(source: str, error: ValidationError, prefix: str = "") -> MergelineError:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return MergelineError(f"{source}: {prefix}{where}: {first['msg']}")


def load_quality(path: str | Path) -> tuple[dict[str, Any], QualityParams]:
    """(pipeline params as a dict, quality params) of ``path``; bad input: one-line MergelineError."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise MergelineError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise MergelineError(f"{path}: unreadable YAML ({exc.__class__.__name__})") from None
    if not isinstance(tree, dict):
        raise MergelineError(f"{path}: expected a mapping at the top level")
    quality_tree = tree.pop("quality", None) or {}
    try:
        pipeline = ExperimentParams.model_validate(tree)
    except ValidationError as exc:
        raise _one_line(str(path), exc) from None
    try:
        quality = QualityParams.model_validate(quality_tree)
    except ValidationError as exc:
        raise _one_line(str(path), exc, "quality.") from None
    _check_consistent(path, pipeline, quality)
    return pipeline.model_dump(mode="json", by_alias=True), quality


def _check_consistent(path: Path, p: ExperimentParams, q: QualityParams) -> None:
    neg = q.negation
    if neg.enabled:
        for name in neg.methods:
            entry = pipeline_method(name)[1]
            if entry.importance and not p.importance_needed:
                raise MergelineError(f"{path}: quality.negation.methods.{name} needs importance scores: "
                                     "list a method that computes them (sta) under merge.methods")
            if entry.vectors != "full" and not getattr(p, entry.vectors).enabled:
                raise MergelineError(f"{path}: quality.negation.methods.{name} needs {entry.vectors}.enabled: true")
        for task in neg.tasks or []:
            if task not in p.tasks:
                raise MergelineError(f"{path}: quality.negation.tasks: {task!r} is not one of tasks {p.tasks}")
    with_finetune(p.model_dump(mode="json", by_alias=True), q.lata.instruct.finetune, f"{path}: quality.lata.instruct")
    with_finetune(p.model_dump(mode="json", by_alias=True), q.analogy.finetune, f"{path}: quality.analogy")
    for key in q.seed_keys:
        section, _, leaf = key.partition(".")
        if section not in ("data", "finetune", "merge") or leaf != "seed":
            raise MergelineError(f"{path}: quality.seed_keys: {key!r} is not one of data.seed, finetune.seed, merge.seed")


def seed_params(pipeline: dict[str, Any], quality: QualityParams, seed: int, out: str) -> dict[str, Any]:
    """The pipeline params of one seed: its seed keys set, its own work and data folders under ``out``."""
    params = copy.deepcopy(pipeline)
    for key in quality.seed_keys:
        section, leaf = key.split(".")
        params[section][leaf] = seed
    params["work_dir"] = f"{out}/seed{seed}/work"
    params["data_dir"] = f"{out}/seed{seed}/data"
    return ExperimentParams.model_validate(params).model_dump(mode="json", by_alias=True)


def with_finetune(params: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """``params`` with some finetune keys replaced (validated: a bad key fails with one line)."""
    if not overrides:
        return params
    changed = copy.deepcopy(params)
    changed["finetune"].update(overrides)
    try:
        return ExperimentParams.model_validate(changed).model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MergelineError(f"{where}.finetune: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def only_tasks(params: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """``params`` restricted to ``tasks``: the evaluate stage then scores only them and the control set."""
    changed = copy.deepcopy(params)
    changed["tasks"] = list(tasks)
    return changed
