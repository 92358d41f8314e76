"""The records stages pass to each other: typed, frozen, plain data.

A stage returns one record per call; downstream stages take records as inputs. Every record names
what it points at by path (relative to the project root) and content (sha256), so a cache keyed on
a stage's inputs is keyed on content. Records cross process boundaries (Prefect's persisted
results, flow runs on a work pool) as plain JSON: :func:`encode` and :func:`decode`, driven by the
dataclasses' own type annotations, so the two directions cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

MODES = ("full", "talos", "lora")


def checkpoint_name(task: str, mode: str) -> str:
    """The folder name of a fine-tune's checkpoint and vector: the task, then its mode unless full."""
    return task if mode == "full" else f"{task}-{mode}"


@dataclass(frozen=True, order=True)
class Fit:
    """One model per task and mode: fine-tuned fully, on a TaLoS mask or as a LoRA adapter (or given)."""

    task: str
    mode: str

    @property
    def name(self) -> str:
        return checkpoint_name(self.task, self.mode)

    @property
    def label(self) -> str:
        return f"{self.task}-{self.mode}"


@dataclass(frozen=True, kw_only=True)
class FileRef:
    path: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class TaskKind:
    output: str
    metric: str


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """What every call's record carries: its wall time and, when tracked, its MLflow run."""

    seconds: float = 0.0
    mlflow_run_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataRecord(StageRecord):
    tasks: dict[str, dict[str, FileRef]]        # task -> split -> JSONL file
    sources: dict[str, dict[str, str]]          # task -> user data file -> sha256
    kinds: dict[str, TaskKind]

    def split(self, task: str, split: str) -> FileRef:
        return self.tasks[task][split]


@dataclass(frozen=True, kw_only=True)
class Stored(StageRecord):
    """A record of files a stage wrote: where (relative to the project root) and their content."""

    path: str
    sha256: str


@dataclass(frozen=True, kw_only=True)
class BaseRecord(Stored):
    id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FitStored(Stored):
    """Files that belong to one task and mode (a checkpoint, a task vector)."""

    task: str
    mode: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fit(self) -> Fit:
        return Fit(self.task, self.mode)


@dataclass(frozen=True, kw_only=True)
class Checkpoint(FitStored):
    """A task model: fine-tuned here (``source`` finetune) or given as a checkpoint or an adapter."""

    params: dict[str, Any] = field(default_factory=dict)  # the settings the fine-tune used (MLflow, lineage)
    source: str = "finetune"
    given: FileRef | None = None                          # the folder a given model came from


@dataclass(frozen=True, kw_only=True)
class Vector(FitStored):
    """A task vector τ = θ_ft − θ_base (or a LoRA adapter's fold)."""


@dataclass(frozen=True, kw_only=True)
class Importance(Stored):
    task: str
    kind: str
    plot: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Diagnostics(StageRecord):
    path: str
    summary: dict[str, Any]
    plot: str | None = None


EDITS = ("addition", "negation", "transfer", "analogy", "oracle")


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One point of a method's sweep: what the merge stage merges.

    ``edit`` says what the point is for: ``addition`` merges every task's vector with weight 1; the
    others (:mod:`mergeline.pipeline.edits`) merge the tasks named in ``weights`` with those weights
    (negation: the target's vector at −1; the analogy's settings: τ_C, τ_C + μτ_B − μτ_A, τ_D).
    """

    name: str
    method: str
    lam: float
    density: float | None
    options: dict[str, Any] = field(default_factory=dict)
    edit: str = "addition"
    weights: dict[str, float] = field(default_factory=dict)  # task -> per-model weight (edits only)
    target: str | None = None                                 # the task an edit is scored on


@dataclass(frozen=True, kw_only=True)
class Merged(StageRecord):
    variant: Variant
    config: dict[str, Any]                 # the mergekit-schema config, root-relative paths
    path: str
    weights: dict[str, str]                # weight file -> sha256
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Evaluation(StageRecord):
    name: str
    split: str
    metrics: dict[str, float]              # set -> accuracy (or the task's metric)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> dict[str, str]:
        """``{set: "0110..."}``: per-example correctness (for paired tests)."""
        return {t: m.get("correct", "") for t, m in self.raw.items()}


@dataclass(frozen=True, kw_only=True)
class Selection:
    best_per_method: dict[str, str]
    ranking: tuple[str, ...]
    by: str

    @property
    def champion(self) -> str:
        return self.ranking[0]


@dataclass(frozen=True, kw_only=True)
class EditPoint:
    """One validation point of an edit's sweep: its target-task and control accuracy."""

    variant: str
    lam: float
    density: float | None
    target: float
    control: float | None
    mu: float | None = None


@dataclass(frozen=True, kw_only=True)
class EditChoice:
    """The point an edit's rule chose on validation, scored on test (one per negated task × method,
    one per analogy setting)."""

    edit: str
    task: str                      # the target task
    method: str
    variant: str
    rule_met: bool                 # negation: the control rule had a qualifying point
    points: tuple[EditPoint, ...]  # the validation sweep
    test: dict[str, float]         # the chosen point on test: "target", "control"
    correct: dict[str, str] = field(default_factory=dict)

    @property
    def chosen(self) -> EditPoint:
        return next(p for p in self.points if p.variant == self.variant)


@dataclass(frozen=True, kw_only=True)
class Scores:
    """The evaluate stage's result: reference models, every variant on validation, the best on test."""

    reference: dict[str, dict[str, Evaluation]]   # "base" / "single-<task>-<mode>" -> split -> evaluation
    validation_rows: dict[str, dict[str, float]]
    test_rows: dict[str, dict[str, float]]
    test_correct: dict[str, dict[str, str]]
    selection: Selection
    edits: tuple[EditChoice, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """Every record of one experiment so far; each stage of the walk adds its own."""

    data: DataRecord | None = None
    base: BaseRecord | None = None
    checkpoints: dict[Fit, Checkpoint] = field(default_factory=dict)
    vectors: dict[Fit, Vector] = field(default_factory=dict)
    importance: dict[str, Importance] = field(default_factory=dict)
    grams: dict[str, Importance] = field(default_factory=dict)  # RegMean's Gram matrices, by task
    diagnostics: Diagnostics | None = None
    merged: dict[str, Merged] = field(default_factory=dict)
    scores: Scores | None = None

    def add(self, **records: Any) -> Experiment:
        return dataclasses.replace(self, **records)

    @property
    def variants(self) -> dict[str, Variant]:
        return {name: rec.variant for name, rec in self.merged.items()}

    @property
    def additions(self) -> dict[str, Merged]:
        """The merged variants of the addition sweep (the ones selection ranks and the registry keeps)."""
        return {name: rec for name, rec in self.merged.items() if rec.variant.edit == "addition"}


# ------------------------------------------------------------------------------------- JSON round trip
_JSON_NAMES = {"lam": "lambda"}  # field -> JSON key where the natural name is a Python keyword


def encode(value: Any) -> Any:
    """A record (or a structure of records) as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_JSON_NAMES.get(f.name, f.name): encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(kind: Any, value: Any) -> Any:
    """The inverse of :func:`encode` for the annotated type ``kind``."""
    if kind is Any or kind is object:
        return value
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(kind), value)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        hints = typing.get_type_hints(kind)
        names = {_JSON_NAMES.get(f.name, f.name): f.name for f in dataclasses.fields(kind)}
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"{kind.__name__}: unexpected fields {sorted(unknown)}")
        return kind(**{names[k]: decode(hints[names[k]], v) for k, v in value.items()})
    if origin in (dict, Mapping):
        key_type, value_type = typing.get_args(kind) or (Any, Any)
        return {decode(key_type, k): decode(value_type, v) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(kind)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(decode(item, v) for v in value)
    if origin is list:
        (item,) = typing.get_args(kind) or (Any,)
        return [decode(item, v) for v in value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _decode_union(options: tuple[Any, ...], value: Any) -> Any:
    if value is None and type(None) in options:
        return None
    records = [o for o in options if dataclasses.is_dataclass(o)]
    if isinstance(value, Mapping) and records:
        for option in records:  # the record type whose fields are exactly the keys
            names = {_JSON_NAMES.get(f.name, f.name) for f in dataclasses.fields(option)}
            required = {_JSON_NAMES.get(f.name, f.name) for f in dataclasses.fields(option)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            if required <= set(value) <= names:
                return decode(option, value)
        raise ValueError(f"no record type of {[o.__name__ for o in records]} has fields {sorted(value)}")
    plain = [o for o in options if o is not type(None)]
    return decode(plain[0], value) if len(plain) == 1 else value


__all__ = [
    "BaseRecord", "Checkpoint", "DataRecord", "Diagnostics", "EDITS", "EditChoice", "EditPoint", "Evaluation",
    "Experiment", "FileRef", "Fit", "FitStored",
    "Importance", "MODES", "Merged", "Scores", "Selection", "StageRecord", "Stored", "TaskKind", "Variant", "Vector",
    "checkpoint_name", "decode", "encode",
]
