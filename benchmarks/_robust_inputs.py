"""Robustness cases: PEFT adapters and user data files are untrusted input.

``merge`` with ``model+adapter`` models whose ``adapter_config.json`` or matrices are hostile, and
``run`` with a task whose data file or prompt template is: each is one line naming the adapter and
field (or the file and line, or ``tasks.N.prompt``), exit 2. Cases that could run away without the
checks (a backtracking pattern key, a gigabyte of padding) run in a bounded subprocess. See
``benchmarks/robustness.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from _robust_case import Case
from _robust_kit import cli, cli_bounded, config, refused, zoo
from _robust_params import BASE

ADAPTER_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
MC = {"name": "tickets", "type": "multiple_choice", "fields": {"text": "body", "choices": "options", "label": "answer"},
      "prompt": "Ticket: {text}\nCategory:"}


def _adapter(folder: Path, b_value: float = 0.1, **settings: object) -> Path:
    """A LoRA adapter on layer 0's q_proj of the ``_robust_kit`` models, config fields overridden."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **settings}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({ADAPTER_KEY.format("A"): torch.ones(2, 8), ADAPTER_KEY.format("B"): torch.full((8, 2), b_value)},
              str(folder / "adapter_model.safetensors"))
    return folder


def _merge_adapter(name: str, names: str, b_value: float = 0.1, bounded: bool = False, **settings: object) -> Case:
    """``merge`` of base+adapter and a fine-tune: exit 2, one line naming the adapter and ``names``."""
    def check(folder: Path) -> str:
        models = zoo(folder)
        adapter = _adapter(folder / "adapter", b_value, **settings)
        models = {**models, "a": f"{models['base']}+{adapter}"}  # type: ignore[dict-item]
        cfg = config(folder / "merge.yaml", models)
        args = ["merge", str(cfg), "--out", str(folder / "out"), "--quiet"]
        code, _, err = cli_bounded(args, cwd=folder, timeout=30) if bounded else cli(args, cwd=folder)
        seen = refused(code, err, names)
        return seen + (", names the adapter" if str(adapter) in err else "") if code == 2 else seen
    return Case("merge", name, f"exit 2, one line, names {names}, names the adapter", check)


def _params_with(folder: Path, task: dict) -> Path:
    tree = {**yaml.safe_load(yaml.safe_dump(BASE)), "tasks": ["news", task]}
    (folder / "params.yaml").write_text(yaml.safe_dump(tree))
    return folder / "params.yaml"


def _run_data(name: str, names: str, files: Callable[[Path], dict], bounded: bool = False, **task: object) -> Case:
    """``run`` with a task read from the files ``files(folder)`` writes: one line naming ``names``."""
    def check(folder: Path) -> str:
        path = _params_with(folder, {**MC, "data": files(folder), **task})
        args = ["run", "--params", str(path)]
        code, _, err = cli_bounded(args, cwd=folder, timeout=60) if bounded else cli(args, cwd=folder)
        return refused(code, err, names)
    return Case("run", name, f"exit 2, one line, names {names}", check)


def _jsonl(rows: list[dict] | None = None, raw: str = "", name: str = "t.jsonl") -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        lines = [json.dumps(r, ensure_ascii=False) for r in rows or []]
        (folder / name).write_text("".join(line + "\n" for line in lines) + raw, encoding="utf-8")
        return {"path": name}
    return write


def _csv(body: str) -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        (folder / "t.csv").write_text("body,options,answer\n" + body, encoding="utf-8")
        return {"path": "t.csv"}
    return write


def _rows(count: int, first: int = 0, text: str = "issue") -> list[dict]:
    return [{"body": f"{text} {i}", "options": ["a", "b"], "answer": i % 2} for i in range(first, first + count)]


def _splits(train: list[dict], test: list[dict]) -> Callable[[Path], dict]:
    def write(folder: Path) -> dict:
        for name, rows in (("train.jsonl", train), ("val.jsonl", _rows(3, 100)), ("test.jsonl", test)):
            _jsonl(rows, name=name)(folder)
        return {"splits": {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}}
    return write


def _duplicates_warned(folder: Path) -> str:
    """Repeated rows in the training file: a warning line, then the run goes on (to the base check)."""
    path = _params_with(folder, {**MC, "data": _splits(_rows(6) + _rows(2), _rows(3, 200))(folder)})
    code, _, err = cli(["run", "--params", str(path)], cwd=folder)
    warned = [line for line in err.splitlines() if line.startswith("warning:") and "train.jsonl" in line]
    rest = "\n".join(line for line in err.splitlines() if not line.startswith("warning:"))
    return f"{'warning names train.jsonl' if warned else 'no warning'}, then {refused(code, rest, 'base_model')}"


CASES: list[Case] = [
    _merge_adapter("adapter rank_pattern key (.*)*x (re backtracks)", "rank_pattern", bounded=True,
                   rank_pattern={"(.*)*x": 2}),
    _merge_adapter("adapter alpha_pattern key (q|v)_proj", "alpha_pattern", alpha_pattern={"(q|v)_proj": 8}),
    _merge_adapter("adapter lora_alpha NaN", "lora_alpha", lora_alpha=float("nan")),
    _merge_adapter("adapter r = 0", "'r'", r=0),
    _merge_adapter("adapter r = \"2\" (a string)", "'r'", r="2"),
    _merge_adapter("adapter use_rslora = \"yes\"", "use_rslora", use_rslora="yes"),
    _merge_adapter("adapter target_modules = 5", "target_modules", target_modules=5),
    _merge_adapter("adapter lora_B holds Inf", "lora_B", b_value=float("inf")),
    _merge_adapter("adapter lora_alpha 3e38: s·B·A overflows", "overflows", b_value=10.0, lora_alpha=3e38),
    _run_data("prompt {text:>1000000000}", "tasks.1.prompt", _jsonl(_rows(10)), bounded=True,
              prompt="{text:>1000000000}"),
    _run_data("prompt {text.__class__}", "tasks.1.prompt", _jsonl(_rows(10)), prompt="{text.__class__}"),
    _run_data("CSV field of 200,000 characters", "t.csv:2", _csv(f"{'x' * 200_000},a|b,0\n" * 10)),
    _run_data("CSV label of 5,000 digits", "fields.label", _csv(f"x,a|b,{'9' * 5000}\n" * 10)),
    _run_data("JSONL nested 100,000 deep", "t.jsonl:1", _jsonl(raw='{"body": ' + "[" * 100_000 + "]" * 100_000 + "}\n")),
    _run_data("JSONL strings with U+2028 and U+0085 (valid)", "base_model", _jsonl(_rows(10, text="a\u2028b\u0085c"))),
    _run_data("the same rows as train and test files", "test.jsonl", _splits(_rows(6), _rows(6))),
    _run_data("one test row is a training row", "test.jsonl:2", _splits(_rows(6), _rows(1, 100) + _rows(1, 3))),
    Case("run", "repeated rows in the training file", "warning names train.jsonl, then exit 2, one line, names base_model",
         _duplicates_warned),
]
