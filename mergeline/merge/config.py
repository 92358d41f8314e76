"""Merge configs in mergekit's YAML schema, and per-tensor resolution of their parameters.

Schema (mergekit 0.1.5; ``models:`` form, or ``slices:`` below)::

    merge_method: ties
    base_model: path/to/base
    models:
      - model: path/to/ft_a
        parameters: {weight: 1.0, density: [0.2, 0.8]}      # gradient over layers
      - model: path/to/ft_b
        parameters:
          weight: [{filter: self_attn, value: 0.5}, {value: 1.0}]   # filter list
    parameters: {lambda: 1.0, normalize: true}
    dtype: float32            # compute dtype (default float32)
    out_dtype: bfloat16       # default: ``dtype`` when given (mergekit), else each tensor keeps the base's
    tokenizer_source: union   # base | union | a model path (or a ``tokenizer: {source: ...}`` block)
    chat_template: auto       # auto | Jinja text
    seed: 0                   # mergeline: seed of random methods (DARE), passed as their ``seed``

``slices:`` (instead of ``models:``) stacks layer ranges: each output slice lists ``sources`` (``model``,
``layer_range: [a, b)``, ``parameters``) of equal length, merged with ``merge_method`` (one source:
passthrough / frankenmerge), with an optional per-slice ``base_model`` and ``parameters``; see
``mergeline.merge.slices`` for the planning. mergekit's ``modules:`` form is refused with one line naming
the key.

Parameter values follow mergekit's ``evaluate_setting`` (``mergeline.parameters``): a scalar, a
*gradient* interpolated at ``t = layer / (num_layers − 1)`` (t = 0 outside transformer blocks, t = 1
when the model has one block; in a slice, the layer's place in its slice), or a *filter list*.
Precedence, as in mergekit: a model's own ``parameters``, then the slice's, then the global ones (so a
global ``weight`` is every model's default); method-wide parameters come from the slice's and global
``parameters`` only. Values are validated by the method's pydantic ``Parameters`` / ``PerModel`` models.

Errors (MergelineError, one line): unreadable file or YAML (not a regular file, not UTF-8, too large,
aliases expanding without bound: ``mergeline.io.safe_read``), unknown key, unknown merge_method,
unknown parameter (naming it and the method), missing or out-of-range value (naming parameter, model,
tensor), a NaN/Inf value or one beyond the compute dtype's range anywhere in the parameters, a seed
outside [0, 2**63), unsupported dtype or mergekit key, wrong number of models, missing base_model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from mergeline.errors import MergelineError
from mergeline.methods import MergeMethod, get_method, method_names
from mergeline.parameters import (  # noqa: F401 - re-exported: callers import them from here
    ConditionalParameter,
    ParameterSetting,
    ScopedResolver,
    _floatable,
    config_keys,
    evaluate_setting,
    known_keys,
)

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
}


class InputModel(BaseModel):
    """One entry of ``models:``: a local checkpoint path and its per-model parameters."""

    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, ParameterSetting] | None = None


class InputSlice(BaseModel):
    """One source of an output slice: layers ``layer_range[0] .. layer_range[1] - 1`` of ``model``."""

    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[StrictInt, StrictInt]
    parameters: dict[str, ParameterSetting] | None = None


class OutputSlice(BaseModel):
    """One entry of ``slices:``: its sources (equal layer counts) are merged layer by layer."""

    model_config = ConfigDict(extra="forbid")
    sources: list[InputSlice]
    base_model: str | None = None
    parameters: dict[str, ParameterSetting] | None = None
    # mergekit 0.1.5 accepts it and never reads it; so do we, and the report says so.
    residual_weight: float | None = None


class ModelToken(BaseModel):
    """A token's embedding taken from another token of a model (by id or by token text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["model_token"]
    model: str
    token_id: StrictInt | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelToken:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("a model_token source takes exactly one of token_id and token")
        return self


class ZeroToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["zero"]


class TokenSource(BaseModel):
    """One entry of ``tokenizer.tokens``: where the token's embedding comes from; ``force`` uses it in
    every model, even one that has the token."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: ModelToken | ZeroToken | str
    force: bool = False


class TokenizerSettings(BaseModel):
    """mergekit's ``tokenizer:`` block."""

    model_config = ConfigDict(extra="forbid")
    source: str = "union"
    tokens: dict[str, TokenSource] | None = None
    pad_to_multiple_of: StrictInt | None = None


# Keys of mergekit 0.1.5's schema that mergeline does not implement: one line each, exit 2.
UNSUPPORTED_KEYS = {
    "modules": "mergekit's per-module form is not supported; use models: or slices:",
}


class MergeConfig(BaseModel):
    """A merge config (mergekit's schema plus ``seed``). Paths are local folders or files."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    parameters: dict[str, ParameterSetting] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    seed: int = Field(0, ge=0, lt=2**63, description="seed of random methods (DARE)")

    @model_validator(mode="after")
    def _one_input_form(self) -> MergeConfig:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of models: or slices: (non-empty)")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give tokenizer_source or a tokenizer: block, not both")
        return self

    def method_class(self) -> type[MergeMethod]:
        return get_method(self.merge_method)

    def compute_dtype(self) -> torch.dtype:
        """``dtype`` (default float32: mergekit computes in the inputs' own dtype, we in float32)."""
        return _dtype("dtype", self.dtype or "float32")

    def output_dtype(self) -> torch.dtype | None:
        """mergekit's rule: ``out_dtype``, else the method's own result dtype (``result_dtype``: float32 for
        arcee_fusion and ramplus_tl), else ``dtype``; None: each tensor keeps the base's."""
        if self.out_dtype is None and self.method_class().result_dtype is not None:
            return self.method_class().result_dtype
        name = self.out_dtype or self.dtype
        return None if name is None else _dtype("out_dtype" if self.out_dtype else "dtype", name)

    def tokenizer_choice(self) -> str | None:
        """Where the output tokenizer comes from: "base", "union", a model path, or None (copied)."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    def all_models(self) -> list[str]:
        """Every model path the config names (base, models or slice sources, slice bases), in order."""
        paths = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            paths.append(entry.model)
        for piece in self.slices or []:
            paths += ([piece.base_model] if piece.base_model else []) + [src.model for src in piece.sources]
        out: list[str] = []
        for path in paths:
            if not any(same_path(path, seen) for seen in out):
                out.append(path)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _dtype(key: str, name: str) -> torch.dtype:
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise MergelineError(f"{key}: unsupported dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}") from None


def _first_error(exc: ValidationError, where: str) -> MergelineError:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return MergelineError(f"{where}: unknown key {loc!r}")
    if not err["loc"]:  # a whole-config rule (model_validator)
        return MergelineError(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return MergelineError(f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})")


def refuse_unsupported(data: dict[str, Any], where: str) -> None:
    """One line naming the first mergekit key mergeline does not implement (before schema validation)."""
    for key, why in UNSUPPORTED_KEYS.items():
        if key in data:
            raise MergelineError(f"{where}: {key}: not supported ({why})")


def parse_merge_config(data: Any, where: str) -> MergeConfig:
    """Validate data read from ``where`` against the schema (:func:`~mergeline.merge.checks.check_config`
    checks it against its method)."""
    if not isinstance(data, dict):
        raise MergelineError(f"{where}: a merge config must be a YAML mapping")
    refuse_unsupported(data, where)
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where) from None


def same_path(a: str, b: str | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def input_indices(config: MergeConfig, method: type[MergeMethod]) -> list[int]:
    """Indices of ``config.models`` the method receives as inputs.

    A base model listed in ``models`` is not an input of a method that requires a base or takes an
    optional one (it arrives as ``base``; mergekit likewise gives it no weight); other methods treat it
    as any model.
    """
    origin = method.requires_base or method.base_optional
    return [
        i for i, m in enumerate(config.models)
        if not (origin and same_path(m.model, config.base_model))
    ]


def input_paths(config: MergeConfig) -> list[str]:
    """Every file or folder the merge reads: base, models, and parameters naming existing paths
    (importance files, masks, ``pretrained_model``): what an output must never overwrite."""
    found = list(config.all_models())

    def walk(setting: Any) -> None:
        if isinstance(setting, ConditionalParameter):
            walk(setting.value)
        elif isinstance(setting, dict):
            for value in setting.values():
                walk(value)
        elif isinstance(setting, list):
            for value in setting:
                walk(value)
        elif isinstance(setting, str) and setting and os.path.exists(setting):
            found.append(setting)

    walk(config.parameters)
    for entry in config.models or []:
        walk(entry.parameters)
    for piece in config.slices or []:
        walk(piece.parameters)
        for source in piece.sources:
            walk(source.parameters)
    return found


def with_base_input(config: MergeConfig) -> MergeConfig:
    """For methods whose ``base_model`` is one more input (``base_is_input``: karcher, passthrough), the
    config with the base appended to ``models`` when it is not listed, as mergekit plans it."""
    method = config.method_class()
    # (mergekit adds the base only to a ``models:`` list, never to explicit slices)
    if not method.base_is_input or not config.base_model or not config.models:
        return config
    if any(same_path(m.model, config.base_model) for m in config.models):
        return config
    return config.model_copy(update={"models": [*config.models, InputModel(model=config.base_model)]})


def check_model_count(method: type[MergeMethod], n: int, where: str) -> None:
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        limit = method.min_models if method.max_models == method.min_models else (
            f"{method.min_models}..{method.max_models if method.max_models is not None else ''}"
        )
        raise MergelineError(f"{where}merge_method {method.name!r} takes {limit} model(s) besides the base, got {n}")


def foreign_model_keys(method: type[MergeMethod]) -> set[str]:
    """Per-model parameters of other methods that ``method`` does not take (``weight`` for slerp, …).

    mergekit configs often give them (its own tests do); mergekit ignores them, so they are accepted
    with a warning (:func:`ignored_parameters`). Any other unknown key is a typo and refused.
    """
    own = set(config_keys(method.PerModel)) | set(config_keys(method.Parameters))
    return {key for name in method_names() for key in config_keys(get_method(name).PerModel)} - own


def check_parameter_keys(method: type[MergeMethod], settings: dict[str, Any] | None, where: str) -> None:
    """Keys of a shared ``parameters:`` block (method-wide or per-model defaults) must be the method's
    (or another method's per-model parameter, ignored with a warning)."""
    shared, per_model = config_keys(method.Parameters), config_keys(method.PerModel)
    foreign = foreign_model_keys(method)
    for key in settings or {}:
        if key not in shared and key not in per_model and key not in foreign:
            known = f"{known_keys(method.Parameters)}; per model: {known_keys(method.PerModel)}"
            raise MergelineError(f"{where}: unknown parameter {key!r} for merge_method {method.name!r} (known: {known})")


def check_model_keys(method: type[MergeMethod], settings: dict[str, Any] | None, where: str) -> None:
    per_model = config_keys(method.PerModel)
    foreign = foreign_model_keys(method)
    for key in settings or {}:
        if key not in per_model and key not in foreign:
            raise MergelineError(
                f"{where}: unknown per-model parameter {key!r} for merge_method {method.name!r} "
                f"(known: {known_keys(method.PerModel)})"
            )


def ignored_parameters(config: MergeConfig) -> list[str]:
    """One line per per-model parameter the config gives that its method does not use (mergekit
    ignores them too), naming where it is given."""
    method = config.method_class()
    foreign = foreign_model_keys(method)
    found: dict[str, list[str]] = {}

    def scan(settings: dict[str, Any] | None, where: str) -> None:
        for key in settings or {}:
            if key in foreign:
                found.setdefault(key, []).append(where)

    scan(config.parameters, "parameters")
    for i in input_indices(config, method) if config.models else []:
        scan(config.models[i].parameters, f"models[{i}]")  # type: ignore[index]
    for k, piece in enumerate(config.slices or []):
        scan(piece.parameters, f"slices[{k}].parameters")
        for j, source in enumerate(piece.sources):
            scan(source.parameters, f"slices[{k}].sources[{j}]")
    return [f"parameter {key!r} ({', '.join(wheres)}) is not used by merge_method {method.name!r}; "
            "ignored, as mergekit ignores it" for key, wheres in found.items()]


def check_numbers(where: str, settings: dict[str, Any] | None, largest: float) -> None:
    """Refuse, up front, a parameter value that is NaN/Inf or beyond the compute dtype's range
    (``largest``) anywhere in a setting (scalar, gradient, filter list): it can only produce a
    non-finite model. Strings count when they read as numbers ("1e400")."""
    def walk(key: str, setting: Any) -> None:
        if isinstance(setting, ConditionalParameter):
            walk(key, setting.value)
        elif isinstance(setting, list):
            for value in setting:
                walk(key, value)
        elif isinstance(setting, (float, int, str)) and not isinstance(setting, bool) and _floatable(str(setting)):
            number = float(setting)
            if not math.isfinite(number) or abs(number) > largest:
                raise MergelineError(
                    f"{where}: parameter {key!r} = {setting!r}: must be a finite number within ±{largest:.3g} "
                    "(the compute dtype's range)"
                )

    for key, setting in (settings or {}).items():
        walk(key, setting)


class ParameterResolver(ScopedResolver):
    """The resolver of a ``models:`` config: ``inputs`` are the indices into ``config.models`` that the
    method receives; ``t`` comes from the tensor's layer (``layer_fraction``)."""

    def __init__(self, config: MergeConfig, num_layers: int | None) -> None:
        method = config.method_class()
        models = config.models or []
        inputs = input_indices(config, method) if config.models else []
        self.setup(method, config.seed, [config.parameters],
                   [[models[i].parameters, config.parameters] for i in inputs],
                   [f"models[{i}] ({models[i].model})" for i in inputs])
        self.inputs = inputs
        self.num_layers = num_layers
