"""Robustness cases: a PEFT LoRA adapter is untrusted input (it usually comes from a hub).

Each case gives ``mergeline merge`` fine-tune ``a`` with an adapter (``a+adapter``, mergekit's syntax)
whose ``adapter_config.json`` or weights lie: fields of the wrong type or out of range, non-finite
numbers, ``rank_pattern`` / ``alpha_pattern`` keys that are not module-name patterns or that make a
regular expression backtrack for minutes. Each must be one line naming the adapter (and the field), exit
2, nothing written; the pattern cases run in a subprocess bounded in time (a hang is a failure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.robustness.kit import Case, cli, cli_bounded, config, outcome, params, temps_left, zoo

ADAPTER = "adapter-x"
LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}


def _weights(scale: float = 1.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Rank-2 LoRA matrices for both layers' q_proj (8 x 8 in the tiny zoo)."""
    gen = torch.Generator().manual_seed(3)
    out = {}
    for layer in (0, 1):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        out[f"{prefix}.lora_A.weight"] = (scale * torch.randn(2, 8, generator=gen)).to(dtype)
        out[f"{prefix}.lora_B.weight"] = (scale * torch.randn(8, 2, generator=gen)).to(dtype)
    return out


def _write_adapter(folder: Path, settings: dict | str, weights: dict[str, torch.Tensor]) -> Path:
    adapter = folder / ADAPTER
    adapter.mkdir()
    save_file(weights, adapter / "adapter_model.safetensors")
    # Python's json writes NaN / Infinity literals, as an adapter saved from Python may hold them.
    (adapter / "adapter_config.json").write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return adapter


def _names(err: str, *keys: str) -> bool:
    return all(re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", err) for key in keys)


def _case(name: str, field: str | None, settings: dict | str | None = None,
          weights: Callable[[], dict[str, torch.Tensor]] = _weights, bounded: bool = False,
          expected: str | None = None) -> Case:
    """``merge`` of ``a+adapter-x`` (``settings``: LORA with these fields, or raw JSON text) and ``b``."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        body = settings if isinstance(settings, str) else {**LORA, **(settings or {})}
        adapter = _write_adapter(folder, body, weights())
        models["a"] = Path(f"{models['a']}+{adapter}")
        cfg = config(folder / "merge.yaml", models)
        args = ["merge", str(cfg), "--out", str(folder / "out"), "--quiet"]
        code, _, err = cli_bounded(args, cwd=folder, timeout=60) if bounded else cli(args, cwd=folder)
        seen = outcome(code, err)
        if code not in (0, -9) and seen.startswith("exit"):
            wanted = (ADAPTER, *([field] if field else []))
            seen += ", names the adapter and the field" if _names(err, *wanted) else f", does not: {err.strip()[-120:]}"
        written = "nothing written" if not (folder / "out").exists() and temps_left(folder) == "no temp left" else "written"
        return f"{seen}, {written}"
    return Case("adapter", name, expected or "exit 2, one line, names the adapter and the field, nothing written", check)


CASES: list[Case] = [
    _case("a valid adapter (control)", None, expected="exit 0, written"),
    _case("r = 0", "r", {"r": 0}),
    _case("r = -2", "r", {"r": -2}),
    _case("r = 2.5", "r", {"r": 2.5}),
    _case("r = '2' (a string)", "r", {"r": "2"}),
    _case("r = true", "r", {"r": True}),
    _case("lora_alpha = NaN", "lora_alpha", {"lora_alpha": float("nan")}),
    _case("lora_alpha = Infinity", "lora_alpha", {"lora_alpha": float("inf")}),
    _case("lora_alpha = '4' (a string)", "lora_alpha", {"lora_alpha": "4"}),
    _case("lora_alpha = 1e309 (reads as Infinity)", "lora_alpha", '{"peft_type": "LORA", "r": 2, "lora_alpha": 1e309, '
                                                                  '"target_modules": ["q_proj"]}'),
    _case("target_modules = 5", "target_modules", {"target_modules": 5}),
    _case("use_rslora = 'yes'", "use_rslora", {"use_rslora": "yes"}),
    _case("fan_in_fan_out = 'no' (a true string)", "fan_in_fan_out", {"fan_in_fan_out": "no"}),
    _case("rank_pattern is a list", "rank_pattern", {"rank_pattern": [2]}),
    _case("rank_pattern value 0", "rank_pattern", {"rank_pattern": {"q_proj": 0}}),
    _case("rank_pattern value 'two'", "rank_pattern", {"rank_pattern": {"q_proj": "two"}}),
    _case("alpha_pattern value NaN", "alpha_pattern", {"alpha_pattern": {"q_proj": float("nan")}}),
    _case("rank_pattern key '[' (not a pattern)", "rank_pattern", {"rank_pattern": {"[": 2}}),
    _case("rank_pattern key '(.*)*x' (backtracks for minutes)", "rank_pattern", {"rank_pattern": {"(.*)*x": 2}},
          bounded=True),
    _case("alpha_pattern key '(a|.)*(b|.)*y' (backtracks)", "alpha_pattern", {"alpha_pattern": {"(a|.)*(b|.)*y": 4}},
          bounded=True),
    _case("alpha_pattern key '(q|v)_proj' (alternation is not a module-name pattern)", "alpha_pattern",
          {"alpha_pattern": {"(q|v)_proj": 8}}),
    _case("adapter_config.json nested 100,000 levels", "adapter_config.json", "[" * 100_000 + "]" * 100_000),
    _case("adapter_config.json is not an object", "adapter_config.json", "[1, 2]"),
    _case("NaN in lora_B (names the adapter, not the base)", None,
          weights=lambda: {k: v.fill_(float("nan")) if ".lora_B." in k else v for k, v in _weights().items()}),
    _case("Inf in lora_B", None,
          weights=lambda: {k: v.fill_(float("inf")) if ".lora_B." in k else v for k, v in _weights().items()}),
    _case("lora_alpha 3e38: s·B·A overflows float32", None, {"lora_alpha": 3e38}, weights=lambda: _weights(scale=10.0)),
    _case("float16 adapter whose B·A overflows", None,
          weights=lambda: _weights(scale=300.0, dtype=torch.float16)),
]

REPRESENTATIVE = {"r = 0", "lora_alpha = NaN", "rank_pattern key '(.*)*x' (backtracks for minutes)",
                  "NaN in lora_B (names the adapter, not the base)"}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
