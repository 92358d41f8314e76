"""Parameter settings in mergekit's schema and their per-tensor resolution (gradients, filters, scopes).

A setting is a scalar; a *gradient* (list of numbers) interpolated piecewise-linearly at the layer
fraction ``t`` (booleans/strings pick ``values[int(t·(n−1))]``); or a *filter list*
``[{filter, value}, ...]`` whose first entry with ``filter`` a substring of the tensor name (or no
filter / ``*``) wins. :class:`ScopedResolver` looks each parameter up in scopes of decreasing
precedence and validates the values with the method's pydantic models.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from mergeline.errors import MergelineError
from mergeline.methods import MergeMethod, MethodParameters, ModelParameters

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class ConditionalParameter(BaseModel):
    """One entry of a filter list: ``value`` applies to tensors whose name contains ``filter``."""

    model_config = ConfigDict(extra="forbid")
    value: ScalarOrGradient
    filter: str | None = None


ParameterSetting = Union[ScalarOrGradient, ConditionalParameter, list[ConditionalParameter]]


def known_keys(model: type[BaseModel]) -> str:
    return ", ".join(sorted(info.alias or name for name, info in model.model_fields.items())) or "none"


def config_keys(model: type[BaseModel]) -> dict[str, str]:
    """Config key → field name, for field names and aliases."""
    keys = {}
    for name, info in model.model_fields.items():
        keys[name] = name
        if info.alias:
            keys[info.alias] = name
    return keys


def is_numeric(model: type[BaseModel], field: str | None) -> bool:
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


Scope = dict[str, Any] | None


class ScopedResolver:
    """Resolves and validates a config's parameters for each tensor (gradients and filters applied).

    ``resolve`` returns the method-wide parameters and one ``PerModel`` per input, in input order
    (``inputs``: which configured models those are). Each value is looked up in
    scopes of decreasing precedence, as mergekit's ``ConfigReader.parameter_sources``: per model, its own
    ``parameters`` then the shared ones; method-wide, the shared ones only (``models:`` form: the global
    ``parameters``; slices: the slice's, then the global). The first scope whose setting yields a value
    (a filter list may match nothing) wins.
    """

    @classmethod
    def scoped(cls, method: type[MergeMethod], seed: int, shared: list[Scope], per_model: list[list[Scope]],
               where: list[str]) -> ScopedResolver:
        """A resolver from explicit scopes (highest precedence first), e.g. for one output slice."""
        self = cls.__new__(cls)
        self.setup(method, seed, shared, per_model, where)
        self.inputs = list(range(len(per_model)))
        self.num_layers = None
        return self

    def setup(self, method: type[MergeMethod], seed: int, shared: list[Scope], per_model: list[list[Scope]],
              where: list[str]) -> None:
        self.method = method
        self._shared_fields, self._model_fields = config_keys(method.Parameters), config_keys(method.PerModel)
        self._shared = [{k: v for k, v in (s or {}).items() if k in self._shared_fields} for s in shared]
        if "seed" in self._shared_fields:
            self._shared.append({"seed": seed})
        self._per_model = [[{k: v for k, v in (s or {}).items() if k in self._model_fields} for s in scopes]
                           for scopes in per_model]
        self._where = where

    def layer_fraction(self, layer: int | None) -> float:
        """mergekit's ``t``: 0 outside blocks, layer/(L−1) inside, 1 for a one-block model."""
        if layer is None or not self.num_layers:
            return 0.0
        return layer / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def _evaluate(self, scopes: list[dict[str, Any]], model: type[BaseModel], keys: dict[str, str],
                  tensor_name: str, t: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scope in scopes:
            for key, setting in scope.items():
                if key not in out:
                    value = evaluate_setting(setting, tensor_name, t, is_numeric(model, keys.get(key)))
                    if value is not None:
                        out[key] = value
        return out

    def resolve(self, tensor_name: str, layer: int | None, t: float | None = None,
                input_names: list[str] | None = None) -> tuple[MethodParameters, list[ModelParameters]]:
        """Parameters for output tensor ``tensor_name``; per-model filters match each input's own tensor
        name (``input_names``: a slice reads another layer index), as mergekit's do."""
        t = self.layer_fraction(layer) if t is None else t
        what = f" for tensor {tensor_name!r}" if tensor_name else ""
        values = self._evaluate(self._shared, self.method.Parameters, self._shared_fields, tensor_name, t)
        try:
            params = self.method.Parameters.model_validate(values)
        except ValidationError as exc:
            raise _param_error(exc, "parameters", what) from None
        model_params = []
        for k, scopes in enumerate(self._per_model):
            name = input_names[k] if input_names else tensor_name
            own = self._evaluate(scopes, self.method.PerModel, self._model_fields, name, t)
            try:
                model_params.append(self.method.PerModel.model_validate(own))
            except ValidationError as exc:
                raise _param_error(exc, self._where[k], what) from None
        return params, model_params


def _param_error(exc: ValidationError, where: str, what: str) -> MergelineError:
    err = exc.errors()[0]
    name = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return MergelineError(f"{where}: parameter {name!r} is required{what}")
    return MergelineError(f"{where}: parameter {name!r} = {err.get('input')!r}{what}: {err['msg']}")
