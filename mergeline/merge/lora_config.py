"""``adapter_config.json`` of a PEFT LoRA adapter, checked field by field before any value is used.

Adapters usually come from a hub, so the file is untrusted. Every field the fold reads is checked
for type and range; an error is a :class:`MergelineError`, one line naming the file (hence the
adapter) and the field:

- the file: a regular file of at most :data:`MAX_CONFIG_BYTES`, UTF-8, JSON (a NaN or Infinity
  literal reads as a number and is then refused; deep nesting is refused), an object;
- ``peft_type``: "LORA"; ``use_dora`` not true; none of the keys that make the update more than
  B·A (``modules_to_save``, ``layer_replication``, ``target_parameters``, trainable tokens, aLoRA);
- ``r``: an integer ≥ 1; ``lora_alpha``: a finite number (both default to 8, PEFT's defaults);
- ``use_rslora``, ``fan_in_fan_out``, ``lora_bias``, ``use_dora``: true, false or null;
- ``rank_pattern``: an object from module-name patterns (:mod:`mergeline.merge.lora_patterns`, which
  bounds the cost of matching them) to integers ≥ 1; ``alpha_pattern``: to finite numbers;
- ``target_modules``: null, a string or a list of strings; ``base_model_name_or_path``: null or a
  string of at most 4,096 characters without NUL.
Other fields are not read, so they are not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeline.errors import MergelineError
from mergeline.io.safe_read import read_text_file
from mergeline.merge.lora_patterns import PatternError, PatternTable, short_repr

ADAPTER_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 2**20  # PEFT writes a few KB; 4,096 pattern keys of 256 characters fit
PEFT_DEFAULT_R = 8
PEFT_DEFAULT_ALPHA = 8
# Config keys that, when set, make the adapter more than B A on existing weights.
UNSUPPORTED = ("modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices",
               "alora_invocation_tokens")
_FLAGS = ("use_rslora", "fan_in_fan_out", "lora_bias", "use_dora")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` that the fold uses, checked."""

    path: Path
    r: int
    r_given: bool  # False: the file has no r and PEFT's default applies
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: PatternTable[int]
    alpha_pattern: PatternTable[float]
    target_modules: str | tuple[str, ...] | None
    base_model_name_or_path: str | None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any) -> int:
    """``value`` when it is an integer ≥ 1 (a JSON bool is not one), else ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"must be an integer ≥ 1, got {short_repr(value)}")


def finite_number(value: Any) -> float:
    """``value`` as a float when it is a finite number, else ValueError."""
    if _is_number(value):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if math.isfinite(number):
            return number
    raise ValueError(f"must be a finite number, got {short_repr(value)}")


def _pattern_table(check: Callable[[Any], Any]) -> Callable[[Any], PatternTable]:
    """A checker of ``rank_pattern``/``alpha_pattern`` whose values pass ``check``."""

    def table(patterns: Any) -> PatternTable:
        if patterns is None:
            return PatternTable({}, check)
        if not isinstance(patterns, dict):
            raise ValueError(f"must be an object of module-name patterns, got {type(patterns).__name__}")

        def checked(key: str, value: Any) -> Any:
            try:
                return check(value)
            except ValueError as exc:
                raise PatternError(f"key {short_repr(key)}: value {exc}") from None

        try:
            return PatternTable(patterns, checked)
        except PatternError as exc:
            raise ValueError(str(exc)) from None

    return table


def _target_modules(value: Any) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"must be null, a string or a list of strings, got {short_repr(value)}")


def _base_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise ValueError(f"must be null or a path or hub id (a string of at most 4096 characters without NUL), "
                         f"got {short_repr(value)}")
    return value


def _flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"must be true, false or null, got {short_repr(value)}")


def _field(path: Path, config: dict[str, Any], field: str, check: Callable[[Any], Any], default: Any = None) -> Any:
    """``check(config[field])`` (``default`` when absent); its ValueError names the file and field."""
    try:
        return check(config.get(field, default))
    except ValueError as exc:
        raise MergelineError(f"{path}: field '{field}' {exc}") from None


def _load(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise MergelineError(f"adapter {folder}: no such folder")
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise MergelineError(f"adapter {folder}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    text = read_text_file(path, "adapter config", limit=MAX_CONFIG_BYTES)
    try:
        config = json.loads(text)
    except RecursionError:
        raise MergelineError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise MergelineError(f"{path}: unreadable JSON ({short_repr(str(exc), 120)})") from None
    if not isinstance(config, dict):
        raise MergelineError(f"{path}: expected a JSON object")
    return config


def read_adapter_config(folder: Path) -> AdapterConfig:
    """The checked config of the adapter folder ``folder`` (see the module docstring)."""
    config = _load(folder)
    path = folder / ADAPTER_CONFIG
    kind = config.get("peft_type")
    if kind != "LORA":
        raise MergelineError(f"{path}: peft_type {short_repr(kind)} is not supported "
                             "(only LoRA adapters fold into task vectors)")
    if _field(path, config, "use_dora", _flag):
        raise MergelineError(f"{path}: DoRA adapters (use_dora: true) are not supported: their update is not B·A")
    for key in UNSUPPORTED:
        if config.get(key):
            raise MergelineError(f"{path}: {key} is set; only plain LoRA matrices can be folded")
    flags = {name: _field(path, config, name, _flag) for name in _FLAGS}
    return AdapterConfig(
        path=path,
        r=_field(path, config, "r", positive_int, PEFT_DEFAULT_R),
        r_given="r" in config,
        lora_alpha=_field(path, config, "lora_alpha", finite_number, PEFT_DEFAULT_ALPHA),
        use_rslora=flags["use_rslora"],
        fan_in_fan_out=flags["fan_in_fan_out"],
        rank_pattern=_field(path, config, "rank_pattern", _pattern_table(positive_int)),
        alpha_pattern=_field(path, config, "alpha_pattern", _pattern_table(finite_number)),
        target_modules=_field(path, config, "target_modules", _target_modules),
        base_model_name_or_path=_field(path, config, "base_model_name_or_path", _base_name),
    )
