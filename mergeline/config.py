"""Merge configs in mergekit's YAML schema, and per-tensor resolution of their parameters.

Schema (mergekit 0.1.5, ``models:`` form)::

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
    out_dtype: bfloat16       # default: each tensor keeps the base's dtype
    tokenizer_source: base    # only "base" (or absent) is supported
    seed: 0                   # mergeline: seed of random methods (DARE), passed as their ``seed``

Parameter values follow mergekit's ``evaluate_setting``: a scalar; a *gradient* (list of numbers)
interpolated piecewise-linearly at ``t = layer / (num_layers − 1)`` (t = 0 outside transformer blocks,
t = 1 when the model has one block), where a list of booleans/strings picks ``values[int(t·(n−1))]``;
or a *filter list* ``[{filter, value}, ...]`` whose first entry with ``filter`` a substring of the
tensor name (or no filter / ``*``) wins. Precedence, as in mergekit: a model's own ``parameters``, then
the global ``parameters`` (so a global ``weight`` is every model's default); method-wide parameters
come from the global ``parameters`` only. Values are validated by the method's pydantic
``Parameters`` / ``PerModel`` models.

Errors (MergelineError, one line): unreadable file or YAML (not a regular file, not UTF-8, too large,
aliases expanding without bound: ``mergeline.io.safe_read``), unknown key, unknown merge_method,
unknown parameter (naming it and the method), missing or out-of-range value (naming parameter, model,
tensor), a NaN/Inf value or one beyond the compute dtype's range anywhere in the parameters, a seed
outside [0, 2**63), unsupported dtype or tokenizer_source, wrong number of models, missing base_model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from mergeline.errors import MergelineError
from mergeline.io.safe_read import load_yaml_file
from mergeline.methods import MergeMethod, MethodParameters, ModelParameters, get_method

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class ConditionalParameter(BaseModel):
    """One entry of a filter list: ``value`` applies to tensors whose name contains ``filter``."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: str | None = None


ParameterSetting = Union[ScalarOrGradient, ConditionalParameter, list[ConditionalParameter]]

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


class MergeConfig(BaseModel):
    """A merge config (mergekit's schema plus ``seed``). Paths are local folders or files."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[InputModel]
    parameters: dict[str, ParameterSetting] | None = None
    dtype: str = "float32"
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    seed: int = Field(0, ge=0, lt=2**63, description="seed of random methods (DARE)")

    def method_class(self) -> type[MergeMethod]:
        return get_method(self.merge_method)

    def compute_dtype(self) -> torch.dtype:
        return _dtype("dtype", self.dtype)

    def output_dtype(self) -> torch.dtype | None:
        return None if self.out_dtype is None else _dtype("out_dtype", self.out_dtype)

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
    return MergelineError(f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})")


def load_merge_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Read and validate a merge YAML (schema only; :func:`check_config` checks it against its method)."""
    path = Path(path)
    data = load_yaml_file(path, "config")
    if not isinstance(data, dict):
        raise MergelineError(f"{path}: a merge config must be a YAML mapping")
    try:
        config = MergeConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, str(path)) from None
    check_config(config)
    return config


def _known(model: type[BaseModel]) -> str:
    return ", ".join(sorted(info.alias or name for name, info in model.model_fields.items())) or "none"


def _keys(model: type[BaseModel]) -> dict[str, str]:
    """Config key → field name, for field names and aliases."""
    keys = {}
    for name, info in model.model_fields.items():
        keys[name] = name
        if info.alias:
            keys[info.alias] = name
    return keys


def same_path(a: str, b: str | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def input_indices(config: MergeConfig, method: type[MergeMethod]) -> list[int]:
    """Indices of ``config.models`` the method receives as inputs.

    A base model listed in ``models`` is not an input of a method that requires a base (it arrives as
    ``base``; mergekit likewise gives it no weight); methods without a base treat it as any model.
    """
    return [
        i for i, m in enumerate(config.models)
        if not (method.requires_base and same_path(m.model, config.base_model))
    ]


def input_paths(config: MergeConfig) -> list[str]:
    """Every file or folder the merge reads: base, models, and parameters naming existing paths
    (importance files, masks, ``pretrained_model``): what an output must never overwrite."""
    found = [p for p in (config.base_model, *(m.model for m in config.models)) if p]

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
    for entry in config.models:
        walk(entry.parameters)
    return found


def check_parameter_names(method: type[MergeMethod], parameters: dict[str, Any], where: str) -> None:
    """Every key of a config's global ``parameters`` (or a pipeline sweep's ``options``) must be a
    parameter of ``method``, method-wide or per model."""
    shared, per_model = _keys(method.Parameters), _keys(method.PerModel)
    for key in parameters:
        if key not in shared and key not in per_model:
            known = f"{_known(method.Parameters)}; per model: {_known(method.PerModel)}"
            raise MergelineError(f"{where}: unknown parameter {key!r} for merge_method {method.name!r} (known: {known})")


def check_config(config: MergeConfig) -> None:
    """Check a config against its method: known method, model count, base, parameter names, dtypes."""
    method = config.method_class()
    largest = torch.finfo(config.compute_dtype()).max
    _check_numbers("parameters", config.parameters, largest)
    for i, entry in enumerate(config.models):
        _check_numbers(f"models[{i}] ({entry.model})", entry.parameters, largest)
    config.output_dtype()
    if config.tokenizer_source not in (None, "base"):
        raise MergelineError(
            f"tokenizer_source: only 'base' is supported (got {config.tokenizer_source!r})"
        )
    if method.requires_base and not config.base_model:
        raise MergelineError(f"merge_method {method.name!r} needs base_model")
    n = len(input_indices(config, method))
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        limit = method.min_models if method.max_models == method.min_models else (
            f"{method.min_models}..{method.max_models if method.max_models is not None else ''}"
        )
        raise MergelineError(f"merge_method {method.name!r} takes {limit} model(s) besides the base, got {n}")
    check_parameter_names(method, config.parameters or {}, "parameters")
    per_model = _keys(method.PerModel)
    for i in input_indices(config, method):
        for key in config.models[i].parameters or {}:
            if key not in per_model:
                known = _known(method.PerModel)
                raise MergelineError(
                    f"models[{i}] ({config.models[i].model}): unknown per-model parameter {key!r} "
                    f"for merge_method {method.name!r} (known: {known})"
                )


def _check_numbers(where: str, settings: dict[str, Any] | None, largest: float) -> None:
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


def _is_numeric(model: type[BaseModel], field: str | None) -> bool:
    info = model.model_fields.get(field) if field else None
    return info is not None and info.annotation in (int, float)


def evaluate_setting(setting: Any, tensor_name: str, t: float, numeric: bool) -> Any:
    """mergekit's value of one parameter setting for ``tensor_name`` at layer fraction ``t`` (None: no match)."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if isinstance(setting[0], ConditionalParameter):
        for cond in setting:
            if cond.filter in (None, "*") or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(cond.value, tensor_name, t, numeric)
        return None
    values = list(setting)
    if numeric:  # YAML reads "1e-3" as a string; a numeric parameter interpolates it as a number
        values = [float(v) if isinstance(v, str) and _floatable(v) else v for v in values]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def _floatable(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ParameterResolver:
    """Resolves and validates a config's parameters for each tensor (gradients and filters applied).

    ``inputs`` are the indices into ``config.models`` that the method receives; ``resolve`` returns the
    method-wide parameters and one ``PerModel`` per input, in that order.
    """

    def __init__(self, config: MergeConfig, num_layers: int | None) -> None:
        self.config = config
        self.method = config.method_class()
        self.num_layers = num_layers
        self.inputs = input_indices(config, self.method)
        shared_keys, model_keys = _keys(self.method.Parameters), _keys(self.method.PerModel)
        glob = dict(config.parameters or {})
        if "seed" in shared_keys and "seed" not in glob:
            glob["seed"] = config.seed
        self._shared = {k: v for k, v in glob.items() if k in shared_keys}
        self._model_defaults = {k: v for k, v in glob.items() if k in model_keys}
        self._shared_fields = shared_keys
        self._model_fields = model_keys

    def layer_fraction(self, layer: int | None) -> float:
        """mergekit's ``t``: 0 outside blocks, layer/(L−1) inside, 1 for a one-block model."""
        if layer is None or not self.num_layers:
            return 0.0
        return layer / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def _evaluate(self, settings: dict[str, Any], model: type[BaseModel], keys: dict[str, str],
                  tensor_name: str, t: float) -> dict[str, Any]:
        out = {}
        for key, setting in settings.items():
            value = evaluate_setting(setting, tensor_name, t, _is_numeric(model, keys.get(key)))
            if value is not None:
                out[key] = value
        return out

    def resolve(self, tensor_name: str, layer: int | None) -> tuple[MethodParameters, list[ModelParameters]]:
        t = self.layer_fraction(layer)
        what = f" for tensor {tensor_name!r}" if tensor_name else ""
        values = self._evaluate(self._shared, self.method.Parameters, self._shared_fields, tensor_name, t)
        try:
            params = self.method.Parameters.model_validate(values)
        except ValidationError as exc:
            raise _param_error(exc, "parameters", what) from None
        model_params = []
        defaults = self._evaluate(self._model_defaults, self.method.PerModel, self._model_fields, tensor_name, t)
        for i in self.inputs:
            entry = self.config.models[i]
            own = self._evaluate(entry.parameters or {}, self.method.PerModel, self._model_fields, tensor_name, t)
            try:
                model_params.append(self.method.PerModel.model_validate({**defaults, **own}))
            except ValidationError as exc:
                raise _param_error(exc, f"models[{i}] ({entry.model})", what) from None
        return params, model_params


def _param_error(exc: ValidationError, where: str, what: str) -> MergelineError:
    err = exc.errors()[0]
    name = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return MergelineError(f"{where}: parameter {name!r} is required{what}")
    return MergelineError(f"{where}: parameter {name!r} = {err.get('input')!r}{what}: {err['msg']}")
