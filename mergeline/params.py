"""Experiment parameters (``params/*.yaml``): schema, loading, ``--set key=value`` overrides.

Everything here is checked before any heavy work starts, so a typo in a task or method name, a
λ or density out of range, or a missing/empty dataset fails in a second with one line (exit 2).
The same file is DVC's params file, so ``dvc exp run -S merge.lambda=0.5`` edits these keys.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mergeline.errors import MergelineError
from mergeline.io.safe_read import load_yaml_file, load_yaml_text
from mergeline.methods import PipelineEntry, pipeline_method, pipeline_methods
from mergeline.names import alias_problem, experiment_name_problem, model_name_problem
from mergeline.parameters import config_keys
from mergeline.pipeline.sweeps import STRICT, AnalogyParams, MethodSweep, NegationParams
from mergeline.task_params import TaskEntry, TaskParam, as_entry


def vector_mode(method: str) -> str:
    """``full``, ``talos`` or ``lora``: which fine-tune's vectors pipeline method ``method`` merges."""
    return pipeline_method(method)[1].vectors


# Bounds that keep a params file's cost proportionate: each task is fine-tuned and merged, each
# variant merged and evaluated, and a params file of a few hundred lines is far below the node bound.
MAX_TASKS = 64
MAX_VARIANTS = 10_000
PARAMS_YAML_NODES = 20_000

Seed = Annotated[int, Field(ge=0, lt=2**63, description="a seed: non-negative, below 2**63")]


class _Strict(BaseModel):
    model_config = STRICT


class DataParams(_Strict):
    n_train: int = Field(64, ge=1, description="training examples per task")
    n_validation: int = Field(16, ge=1, description="validation examples per task (λ/sparsity selection)")
    n_test: int = Field(32, ge=1, description="test examples per task (reported numbers)")
    seed: Seed = Field(0, description="seed of the split/sampling")
    sizes: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per-task overrides {task: {train, validation, test}} of the sizes "
        "above, where a task's source holds more (or fewer) examples than the others")


# The user's settings of fine-tuning, TaLoS, LoRA and importance. Each is the one schema of its
# quantities: the library's configs (mergeline.finetune, mergeline.importance) extend these with what
# the caller sets, so a default or a bound cannot differ between a params file and a library call.
class FinetuneParams(_Strict):
    steps: int = Field(10, ge=1, description="optimizer steps per task")
    batch_size: int = Field(8, ge=1, description="examples per step")
    lr: float = Field(1e-4, gt=0, lt=1, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled (AdamW) weight decay")
    warmup: int = Field(0, ge=0, description="linear warm-up steps before the cosine decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate shape after warm-up")
    max_length: int = Field(64, ge=8, description="tokens per example, prompt + answer (prompt cut from the left)")
    freeze_embeddings: bool = Field(
        True, description="freeze the input embedding (and the LM head tied to it), which dominates cost on small LMs")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip; 0 disables")
    seed: Seed = Field(0, description="seed for data order and any randomness in the model")


class TalosMask(_Strict):
    """Which entries a TaLoS fine-tune trains (METHODS.md §5)."""

    keep: float = Field(0.1, gt=0, le=1, description="fraction of prunable entries left trainable (1 - sparsity)")
    rounds: int = Field(2, ge=1, description="iterative masking rounds; round r keeps keep^(r/rounds)")
    calib_examples: int | None = Field(16, ge=1, description="examples scored for gradient sensitivity "
                                                             "(the first N of the calibration split; null: all)")


class TalosParams(TalosMask):
    enabled: bool = Field(True, description="also fine-tune a TaLoS-sparse model per task")
    lr: float | None = Field(
        None, gt=0, lt=1, description="peak learning rate of the masked fine-tune (None: finetune.lr); training a "
        "small fraction of the entries needs a larger step to move as far in the same number of steps")


class LoraSettings(_Strict):
    """The shape of a LoRA adapter."""

    rank: int = Field(8, ge=1, description="r, the rank of B A")
    alpha: float = Field(16.0, gt=0, description="α; the update is scaled by α / r")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      min_length=1, description="module names (suffixes) that get an adapter")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input during training")


class LoraParams(LoraSettings):
    enabled: bool = Field(False, description="also fine-tune a LoRA adapter per task (PEFT); its vector is the fold")
    lr: float | None = Field(
        None, gt=0, lt=1, description="peak learning rate of the LoRA fine-tune (None: finetune.lr); adapters start "
        "at zero and usually need a larger step than a full fine-tune")


class ImportanceParams(_Strict):
    """STA's Taylor importance (METHODS.md §3)."""

    calib_examples: int | None = Field(16, ge=1, description="calibration records scored (the first N; null: all)")
    importance_of: Literal["task_vector", "weight"] = Field("task_vector", description="|g·τ| (default) or |g·θ|")
    grad_at: Literal["finetuned", "pretrained"] = Field("finetuned", description="where the loss gradient g is taken")


class MergeParams(_Strict):
    methods: dict[str, MethodSweep] = Field(default_factory=dict)
    # One-line experiments (`dvc exp run -S merge.lambda=0.5`): when set, every method uses this λ.
    lambda_: float | None = Field(None, alias="lambda", ge=-3.0, le=3.0)
    seed: Seed = Field(0, description="seed of random sparsifiers (DARE)")

    model_config = ConfigDict(**STRICT, populate_by_name=True)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: dict[str, MethodSweep]) -> dict[str, MethodSweep]:
        known = pipeline_methods()
        for name, sweep in methods.items():
            if name not in known:
                raise ValueError(f"unknown method {name!r}; known: {', '.join(known)}")
            _check_sweep(name, known[name][1], sweep)
        if not methods:
            raise ValueError("needs at least one method")
        return methods


def _check_sweep(name: str, entry: PipelineEntry, sweep: MethodSweep) -> None:
    """A grid may only vary what the method's pipeline entry says it sweeps."""
    if sweep.densities is not None and "density" not in entry.sweeps:
        raise ValueError(f"{name}.densities: {name} does not sweep density")
    if "lambda" not in entry.sweeps and sweep.lambdas != [1.0]:
        raise ValueError(f"{name}.lambdas: {name} does not sweep λ (its coefficients are closed-form)")
    for key in sweep.grid:
        if key in ("lambda", "density") or key not in entry.sweeps:
            others = [k for k in entry.sweeps if k not in ("lambda", "density")]
            raise ValueError(f"{name}.grid.{key}: not swept by {name} (grid takes: {', '.join(others) or 'nothing'}; "
                             "λ and density go in lambdas / densities)")
        if key in sweep.options:
            raise ValueError(f"{name}.grid.{key}: also given in options")


class EvaluateParams(_Strict):
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=16)
    singles: Literal["all", "own"] = Field(
        "all", description="sets a single-task model is scored on: every task and the control, or its own task "
        "only (all that normalized accuracy needs; saves most of the evaluation time on a CPU)")
    validation_control: bool = Field(
        True, description="score merged variants on the control set's validation split too (selection does not "
        "use it; the test split always includes it)")
    select_by: Literal["norm_acc/mean", "acc/mean"] = Field(
        "norm_acc/mean", description="validation score that picks each method's best variant and the champion; "
        "with acc/mean the single-task models are scored on test only")


class RegisterParams(_Strict):
    model_name: str = Field("mergeline-demo", min_length=1, description="MLflow registered model name")
    champion_alias: str = "champion"
    candidate_alias: str = "candidate"
    candidates: int = Field(1, ge=0, description="runner-up variants registered as candidates")
    keep_merged: Literal["registered", "all"] = Field(
        "registered", description="merged variant folders kept once scored: the registered ones (the others are "
        "rebuilt from work_dir/merged.json when needed again), or all")

    @model_validator(mode="after")
    def _valid_names(self) -> "RegisterParams":
        if (problem := model_name_problem(self.model_name)) is not None:
            raise ValueError(f"model_name {self.model_name!r}: {problem}")
        for key in ("champion_alias", "candidate_alias"):
            if (problem := alias_problem(getattr(self, key))) is not None:
                raise ValueError(f"{key} {getattr(self, key)!r}: {problem}")
        if self.champion_alias == self.candidate_alias:
            raise ValueError(f"champion_alias and candidate_alias are both {self.champion_alias!r}")
        return self


class ExperimentParams(_Strict):
    experiment: str = Field("mergeline-demo", min_length=1, description="MLflow experiment name")
    base_model: str = Field("smollm2-135m-instruct", description="packaged model id, HF folder or hub id")
    tasks: list[TaskParam] = Field(
        default_factory=lambda: ["news", "sentiment", "code"],
        description="built-in task names or task mappings (mergeline/task_params.py)")
    control: str = "control"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    work_dir: str = Field("data/work", description="stage outputs (git-ignored, DVC-tracked)")
    data_dir: str = Field("data/tasks", description="task JSONL splits (DVC-tracked)")
    data: DataParams = Field(default_factory=DataParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    talos: TalosParams = Field(default_factory=TalosParams)
    lora: LoraParams = Field(default_factory=LoraParams)
    importance: ImportanceParams = Field(default_factory=ImportanceParams)
    merge: MergeParams = Field(default_factory=MergeParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    registry: RegisterParams = Field(default_factory=RegisterParams)
    negation: NegationParams = Field(default_factory=NegationParams)
    analogy: AnalogyParams | None = Field(None, description="the task analogy A:B::C:D (null: none)")

    @field_validator("tasks", mode="before")
    @classmethod
    def _few_tasks(cls, tasks: Any) -> Any:
        # Before the items are validated: a million entries are refused by their count alone.
        if isinstance(tasks, list) and len(tasks) > MAX_TASKS:
            raise ValueError(f"{len(tasks)} tasks; at most {MAX_TASKS} (each is fine-tuned and merged)")
        return tasks

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentParams":
        if (problem := experiment_name_problem(self.experiment)) is not None:
            raise ValueError(f"experiment: {problem}")
        if len(self.tasks) < 1:
            raise ValueError("tasks: needs at least one task")
        if not self.merge.methods:
            raise ValueError("merge.methods: needs at least one method")
        if (count := self.variant_count()) > MAX_VARIANTS:
            raise ValueError(f"merge.methods: the sweep has {count} variants; at most {MAX_VARIANTS} "
                             "(each is merged and evaluated)")
        names = self.task_names
        if len(set(names)) != len(names):
            raise ValueError("tasks: duplicate task names")
        if self.control in names:
            raise ValueError(f"control {self.control!r} must not be a training task")
        for name in self.merge.methods:
            mode = vector_mode(name)
            if mode != "full" and not getattr(self, mode).enabled:
                raise ValueError(f"merge.methods.{name} needs {mode}.enabled: true")
        self._check_edits()
        return self

    def _check_edits(self) -> None:
        """Negation negates one task's vector by a per-model weight of −1, so its methods must take one;
        its tasks and the analogy's must be training tasks."""
        names = self.task_names
        for task in self.negation.tasks:
            if task not in names:
                raise ValueError(f"negation.tasks: {task!r} is not one of tasks {names}")
        known = pipeline_methods()
        for name, sweep in self.negation.methods.items() if self.negation.tasks else ():
            if name not in known:
                raise ValueError(f"negation.methods: unknown method {name!r}; known: {', '.join(known)}")
            method_cls, entry = known[name]
            if "weight" not in config_keys(method_cls.PerModel) or "lambda" not in entry.sweeps:
                raise ValueError(f"negation.methods.{name}: {name} takes no per-model weight and λ to negate with")
            _check_sweep(f"negation.methods.{name}", entry, sweep)
            if entry.vectors != "full" and not getattr(self, entry.vectors).enabled:
                raise ValueError(f"negation.methods.{name} needs {entry.vectors}.enabled: true")
        if self.analogy is not None:
            for key in ("a", "b", "c", "d"):
                if getattr(self.analogy, key) not in names:
                    raise ValueError(f"analogy.{key}: {getattr(self.analogy, key)!r} is not one of tasks {names}")

    @property
    def negation_methods(self) -> dict[str, MethodSweep]:
        """The negation's methods and grids (none without negation tasks)."""
        return dict(self.negation.methods) if self.negation.tasks else {}

    @property
    def importance_needed(self) -> bool:
        """Whether a swept method needs the tasks' importance scores (the compute-importance stage)."""
        return any(pipeline_method(name)[1].importance for name in [*self.merge.methods, *self.negation_methods])

    @property
    def gram_needed(self) -> bool:
        """Whether a swept method needs the tasks' Gram matrices of linear-layer inputs (RegMean)."""
        return any(pipeline_method(name)[1].gram for name in self.merge.methods)

    @property
    def task_entries(self) -> list[TaskEntry]:
        """Every task as an entry of the one mechanism (a string is a built-in task)."""
        return [as_entry(task) for task in self.tasks]

    @property
    def task_names(self) -> list[str]:
        return [entry.name for entry in self.task_entries]

    def sweep_grid(self, method: str, sweep: MethodSweep | None = None) -> list[list[Any]]:
        """The values ``method`` sweeps (in ``merge.methods``, or ``sweep``), one list per swept quantity:
        λ, density, then each ``grid`` parameter in order (every combination is a variant). Without
        ``lambda`` in the method's ``sweeps`` (closed-form coefficients) λ is 1; ``merge.lambda`` pins the
        λ of ``merge.methods`` only."""
        pinned = self.merge.lambda_ if sweep is None else None
        sweep = sweep or self.merge.methods[method]
        if "lambda" not in pipeline_method(method)[1].sweeps:
            lambdas = [1.0]
        else:
            lambdas = [pinned] if pinned is not None else sweep.lambdas
        return [lambdas, list(sweep.densities or [None]), *sweep.grid.values()]

    def variant_count(self) -> int:
        """How many variants the merge sweep expands to, without expanding it."""
        additions = sum(math.prod(len(v) for v in self.sweep_grid(method)) for method in self.merge.methods)
        negations = len(self.negation.tasks) * sum(math.prod(len(v) for v in self.sweep_grid(method, sweep))
                                                   for method, sweep in self.negation_methods.items())
        analogy = 0 if self.analogy is None else len(self.analogy.lambdas) * (2 + len(self.analogy.mus))
        return additions + negations + analogy

    def task_entry(self, name: str) -> TaskEntry:
        return next(entry for entry in self.task_entries if entry.name == name)

    def sha256(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise MergelineError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    value = load_yaml_text(raw, f"--set {assignment}", PARAMS_YAML_NODES) if raw else None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MergelineError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    loc = list(first["loc"])
    if len(loc) > 2 and loc[0] == "tasks" and loc[2] in ("task", "name"):
        del loc[2]  # the tag of the tasks union (mergeline/task_params.py), not a key the user wrote
    where = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}: {where}: {first['msg'].removeprefix('Value error, ')}"


_VALIDATED: dict[str, ExperimentParams] = {}


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentParams:
    """Read a params YAML (default ``params/default.yaml``), apply ``key=value`` overrides, validate.

    Validated once per process: the same content (after overrides) returns the same frozen object.
    """
    path = Path(path or "params/default.yaml")
    tree = load_yaml_file(path, "params file", PARAMS_YAML_NODES)
    if tree is None:  # an empty file, or comments only
        raise MergelineError(f"{path}: params file is empty; expected experiment params (see params/default.yaml)")
    if not isinstance(tree, dict):
        raise MergelineError(f"{path}: expected a mapping at the top level")
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    return params_from_tree(tree, str(path))


def params_from_tree(tree: dict[str, Any], source: str = "params") -> ExperimentParams:
    """Validate params already read (``source`` names them in an error); once per process per content."""
    content = json.dumps(tree, sort_keys=True, default=str)
    if content not in _VALIDATED:
        try:
            _VALIDATED[content] = ExperimentParams.model_validate(tree)
        except ValidationError as exc:
            raise MergelineError(_format_error(source, exc)) from None
    return _VALIDATED[content]
