"""One entry of ``tasks:`` in params: a built-in task's name, or a mapping that declares a task.

Every form resolves to a :class:`TaskEntry`, the one mechanism the pipeline knows; a bare string
``news`` is ``TaskEntry(name="news")``, a built-in task (``mergeline/data/tasks.py``)::

    tasks:
      - news                                     # built-in
      - name: tickets                            # multiple choice from a local JSONL or CSV file
        data: {path: my/tickets.jsonl}           # or splits: {train: a.jsonl, validation: b.jsonl, test: c.jsonl}
        type: multiple_choice
        fields: {text: body, choices: options, label: answer}   # label: an index or the choice's text
        prompt: "Ticket: {text}\\nCategory:"
        split: {validation: 0.1, test: 0.2, seed: 0}            # when splits are not given
      - name: titles                             # generation: the model writes the target
        data: {path: my/titles.csv}
        type: generation
        fields: {text: abstract, target: title}
        prompt: "Abstract: {text}\\nTitle:"
        metric: exact_match
      - name: arc                                # an lm-eval task whose data is available offline
        lm_eval: {task: arc_easy}                # or {include_path: dir_or_yaml, task: my_task}
                                                 # (+ trust_code: true if its YAML runs !function code)
      - name: sentiment                          # an existing task model instead of a fine-tune
        checkpoint: models/sentiment-ft          # HF folder fine-tuned from base_model (safetensors)
      - name: code
        adapter: adapters/code-lora              # or a PEFT LoRA adapter folder of base_model

Only the schema lives here (checked when params load); whether files exist and hold the named
fields is checked by ``mergeline.data.user`` in preflight, before any heavy work.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator, model_validator,
)

TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Metrics of lm-eval's generate_until tasks that score one prediction against one reference.
GENERATION_METRICS = ("exact_match", "bleu", "chrf")  # higher is better, as selection assumes


def prompt_parts(template: str) -> list[tuple[str, str | None]]:
    """``(literal text, field name or None)`` pieces of a prompt template; ValueError when it asks for more
    than substitution. ``str.format`` would run attribute and index access (``{x.y}``, ``{x[0]}``: a
    way into the row's objects) and format specifications (``{text:>1000000000}`` pads to a
    gigabyte), so a prompt field is a column name in braces and nothing else (``{{``/``}}``: braces)."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name:
            raise ValueError(f"{shown}: name the column to fill in, e.g. {{text}}")
        if any(c in name for c in ".[]"):
            raise ValueError(f"{shown}: attribute or index access is not supported; a field is a column name")
        if conversion or spec:
            raise ValueError(f"{shown}: conversions and format specifications are not supported; "
                             "a field is a column name")
        parts.append((literal, name))
    return parts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskData(_Strict):
    """Where a user task's examples are: one file to split, or one file per split."""

    path: str | None = Field(None, description="a local .jsonl or .csv file, split by `split:`")
    splits: dict[Literal["train", "validation", "test"], str] | None = Field(
        None, description="one local .jsonl or .csv file per split (train, validation and test)")

    @model_validator(mode="after")
    def _one_source(self) -> "TaskData":
        if (self.path is None) == (self.splits is None):
            raise ValueError("give exactly one of data.path or data.splits")
        if self.splits is not None and set(self.splits) != {"train", "validation", "test"}:
            missing = sorted({"train", "validation", "test"} - set(self.splits))
            raise ValueError(f"data.splits needs train, validation and test (missing: {', '.join(missing)})")
        return self


class TaskFields(_Strict):
    """Which column of the data file holds what."""

    text: str = Field("text", description="the input text, {text} in the prompt")
    choices: str | None = Field(None, description="multiple choice: a list of strings")
    label: str | None = Field(None, description="multiple choice: index into choices, or the right choice's text")
    target: str | None = Field(None, description="generation: the text the model should write")


class SplitFractions(_Strict):
    """The seeded splitter for ``data.path``: fractions of the examples held out."""

    validation: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _train_left(self) -> "SplitFractions":
        if self.validation + self.test >= 1:
            raise ValueError("split.validation + split.test must leave examples to train on (< 1)")
        return self


class LmEvalTask(_Strict):
    """A task of lm-eval: from its registry by name, or from a task YAML (``include_path``)."""

    task: str = Field(min_length=1, description="lm-eval task name")
    include_path: str | None = Field(None, description="folder or YAML file holding the task's config")
    # Strict: only a real YAML boolean consents to running a task folder's code, not "yes" or 1.
    trust_code: StrictBool = Field(False, description="run the task folder's Python (!function) and render its "
                                                      "templates unsandboxed")

    @model_validator(mode="after")
    def _trust_needs_folder(self) -> "LmEvalTask":
        if self.trust_code and self.include_path is None:
            raise ValueError("lm_eval.trust_code applies to a task folder (include_path); "
                             "lm-eval's own tasks are code of the installed package")
        return self


class TaskEntry(_Strict):
    """One task of the experiment. A name alone is a built-in task."""

    name: str
    data: TaskData | None = None
    type: Literal["multiple_choice", "generation"] | None = None
    fields: TaskFields = Field(default_factory=TaskFields)
    prompt: str = Field("{text}", description="template; {text} and any other field name in braces")
    split: SplitFractions = Field(default_factory=SplitFractions)
    metric: str | None = Field(None, description="generation: lm-eval metric (default exact_match)")
    lm_eval: LmEvalTask | None = None
    checkpoint: str | None = Field(None, description="HF model folder fine-tuned from base_model: not fine-tuned again")
    adapter: str | None = Field(None, description="PEFT LoRA adapter folder of base_model: folded, not fine-tuned")

    @field_validator("prompt")
    @classmethod
    def _substitution_only(cls, prompt: str) -> str:
        prompt_parts(prompt)
        return prompt

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not TASK_NAME.match(name):
            raise ValueError(f"task name {name!r}: letters, digits, '_' or '-', starting with a letter")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "TaskEntry":
        if self.data is not None and self.lm_eval is not None:
            raise ValueError(f"task {self.name!r}: give data or lm_eval, not both")
        if self.checkpoint is not None and self.adapter is not None:
            raise ValueError(f"task {self.name!r}: give checkpoint or adapter, not both")
        if self.data is not None:
            if self.type is None:
                raise ValueError(f"task {self.name!r}: type is required with data (multiple_choice or generation)")
            if self.type == "multiple_choice" and (self.fields.choices is None or self.fields.label is None):
                raise ValueError(f"task {self.name!r}: multiple_choice needs fields.choices and fields.label")
            if self.type == "generation" and self.fields.target is None:
                raise ValueError(f"task {self.name!r}: generation needs fields.target")
        if self.metric is not None:
            if self.type != "generation":
                raise ValueError(f"task {self.name!r}: metric applies to generation tasks only")
            if self.metric not in GENERATION_METRICS:
                raise ValueError(f"task {self.name!r}: metric {self.metric!r}; use one of {', '.join(GENERATION_METRICS)}")
        return self

    @property
    def kind(self) -> Literal["builtin", "file", "lm_eval"]:
        """Where the examples come from."""
        if self.data is not None:
            return "file"
        if self.lm_eval is not None:
            return "lm_eval"
        return "builtin"


    @property
    def source(self) -> Literal["finetune", "checkpoint", "adapter"]:
        """Where the task's model comes from: fine-tuned by the pipeline, or given."""
        if self.checkpoint is not None:
            return "checkpoint"
        return "adapter" if self.adapter is not None else "finetune"


def _form(value: Any) -> str:
    return "name" if isinstance(value, str) else "task"


# Tagged so that a bad mapping is reported against the entry's own fields, not as "not a string".
TaskParam = Annotated[Union[Annotated[str, Tag("name")], Annotated[TaskEntry, Tag("task")]], Discriminator(_form)]


def as_entry(task: TaskParam) -> TaskEntry:
    """A params ``tasks:`` item as an entry (a string is a built-in task's name)."""
    return task if isinstance(task, TaskEntry) else TaskEntry(name=task)
