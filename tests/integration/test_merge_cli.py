"""``mergeline merge`` end to end, as a subprocess, on tiny Llama- and GPT-2-shaped transformers models:
outputs load with transformers, and every bad input gives one ``error:`` line, exit 2, no output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.lora_fixtures import write_adapter
from tests.merge_fixtures import finetune, load_tensors, tiny_base, write_checkpoint


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    llama = tiny_base("llama", root / "llama", shard_kb=40)  # sharded base
    gpt2 = tiny_base("gpt2", root / "gpt2")
    return {
        "root": root, "llama": llama, "gpt2": gpt2,
        "llama_a": finetune(llama, root / "llama_a", seed=1),
        "llama_b": finetune(llama, root / "llama_b", seed=2, shards=2),
        "gpt2_a": finetune(gpt2, root / "gpt2_a", seed=3),
        "gpt2_b": finetune(gpt2, root / "gpt2_b", seed=4),
    }


def _mergeline(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "mergeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _config(path: Path, method: str, base: Path | None, models: list[tuple[Path, dict]], **extra) -> Path:
    data = {"merge_method": method, "models": [{"model": str(m), "parameters": p} for m, p in models], **extra}
    if base is not None:
        data["base_model"] = str(base)
    path.write_text(yaml.safe_dump(data))
    return path


def test_llama_ties_sharded_output_loads(zoo: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path / "ties.yaml", "ties", zoo["llama"],
                  [(zoo["llama_a"], {"weight": 1.0, "density": 0.5}), (zoo["llama_b"], {"weight": 0.5, "density": 0.3})])
    proc = _mergeline("merge", str(cfg), "--out", str(tmp_path / "out"), "--shard-size", "60KB", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "merged model:" in proc.stdout and proc.stderr.count("error") == 0
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    merged = load_tensors(out)
    assert set(merged) == set(load_tensors(zoo["llama"]))
    model = AutoModelForCausalLM.from_pretrained(out)  # config + shards form a loadable HF model
    state = model.state_dict()
    assert torch.equal(state["model.layers.1.mlp.up_proj.weight"], merged["model.layers.1.mlp.up_proj.weight"])
    assert (out / "tokenizer_config.json").exists() and (out / "merge.yaml").exists()


def test_gpt2_task_arithmetic(zoo: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(tmp_path / "ta.yaml", "task_arithmetic", zoo["gpt2"],
                  [(zoo["gpt2_a"], {"weight": 0.5}), (zoo["gpt2_b"], {"weight": 0.5})],
                  out_dtype="bfloat16")
    proc = _mergeline("merge", str(cfg), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    base, a, b = (load_tensors(zoo[k]) for k in ("gpt2", "gpt2_a", "gpt2_b"))
    out = load_tensors(tmp_path / "out")
    name = "transformer.h.1.attn.c_attn.weight"
    expected = (base[name] + 0.5 * (a[name] - base[name]) + 0.5 * (b[name] - base[name])).bfloat16()
    assert out[name].dtype == torch.bfloat16 and torch.equal(out[name], expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text()).get("dtype") == "bfloat16"


def _truncated(zoo: dict[str, Path], tmp: Path) -> Path:
    data = (zoo["llama_a"] / "model.safetensors").read_bytes()
    return write_bytes(tmp / "trunc", data[: len(data) // 2])


def _corrupt(zoo: dict[str, Path], tmp: Path) -> Path:
    return write_bytes(tmp / "corrupt", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")


def _pickle_only(zoo: dict[str, Path], tmp: Path) -> Path:
    (tmp / "pkl").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp / "pkl" / "pytorch_model.bin")
    return tmp / "pkl"


def write_bytes(folder: Path, data: bytes) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    return folder


def _edited(zoo: dict[str, Path], tmp: Path, name: str, edit) -> Path:
    tensors = load_tensors(zoo["llama_a"])
    edit(tensors)
    return write_checkpoint(tmp / name, tensors)


def _set(tensors: dict, key: str, fn) -> None:
    tensors[key] = fn(tensors[key])


def _with_adapter(zoo: dict[str, Path], tmp: Path, b_value: float, **config: object) -> str:
    """``llama+adapter``: an adapter on q_proj of layer 0 whose lora_B holds ``b_value``."""
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    tensors = {key.format("A"): torch.ones(2, 64), key.format("B"): torch.full((64, 2), b_value)}
    return f"{zoo['llama']}+{write_adapter(tmp / 'adapter', tensors, **config)}"


BAD = {
    "arch mismatch": (lambda z, t: z["gpt2_a"], {"weight": 1.0}, r"has no tensor '[\w.]+' \(architecture mismatch"),
    "missing tensor": (lambda z, t: _edited(z, t, "miss", lambda s: s.pop("model.norm.weight")), {"weight": 1.0},
                       r"has no tensor 'model.norm.weight'"),
    "shape mismatch": (lambda z, t: _edited(z, t, "shape", lambda s: _set(s, "model.layers.0.mlp.up_proj.weight",
                                                                             lambda x: x[:, :-1].contiguous())),
                       {"weight": 1.0}, r"tensor 'model.layers.0.mlp.up_proj.weight' has shape \[128, 63\]"),
    "nan": (lambda z, t: _edited(z, t, "nan", lambda s: s["model.layers.1.self_attn.q_proj.weight"].__setitem__((0, 0), float("nan"))),
            {"weight": 1.0}, r"nan/model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' contains NaN or Inf"),
    "inf": (lambda z, t: _edited(z, t, "inf", lambda s: s["model.norm.weight"].__setitem__(3, float("-inf"))),
            {"weight": 1.0}, r"tensor 'model.norm.weight' contains NaN or Inf"),
    "truncated": (_truncated, {"weight": 1.0}, r"trunc/model.safetensors: truncated"),
    "corrupt": (_corrupt, {"weight": 1.0}, r"corrupt/model.safetensors: corrupt safetensors header"),
    "pickle only": (_pickle_only, {"weight": 1.0}, r"pytorch_model.bin: pickle checkpoints are refused"),
    "density > 1": (lambda z, t: z["llama_a"], {"weight": 1.0, "density": 1.2}, r"parameter 'density' = 1.2"),
    "density <= 0": (lambda z, t: z["llama_a"], {"weight": 1.0, "density": 0}, r"parameter 'density' = 0"),
    "weight inf": (lambda z, t: z["llama_a"], {"weight": float("inf"), "density": 0.5}, r"parameter 'weight' = inf"),
    "missing model": (lambda z, t: t / "nowhere", {"weight": 1.0}, r"nowhere: no such file or folder"),
    # an adapter's pattern key is a module-name pattern, never a regular expression to run
    "adapter pattern": (lambda z, t: _with_adapter(z, t, 0.1, rank_pattern={"(q+)+_proj": 2}), {"weight": 1.0},
                        r"adapter/adapter_config.json: field 'rank_pattern' key '\(q\+\)\+_proj'"),
    # a NaN/Inf that the adapter brings is the adapter's, not the base model's file
    "adapter inf": (lambda z, t: _with_adapter(z, t, float("inf")), {"weight": 1.0, "density": 0.5},
                    r"adapter/adapter_model.safetensors: tensor '[\w.]+lora_B.weight' contains NaN or Inf"),
}


# Each CLI process spends seconds importing torch, so a few cases run as real subprocesses (exit status
# through the interpreter) and the rest through the same entry point, ``mergeline.cli.main``, in-process.
AS_SUBPROCESS = {"arch mismatch", "nan", "pickle only", "adapter inf"}


def _main_in_process(args: list[str], capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    from mergeline.cli import main

    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2_no_output(zoo: dict[str, Path], tmp_path: Path, case: str, capsys) -> None:
    make_model, params, message = BAD[case]
    cfg = _config(tmp_path / "bad.yaml", "ties", zoo["llama"], [(make_model(zoo, tmp_path), params)])
    args = ["merge", str(cfg), "--out", str(tmp_path / "out")]
    proc = _mergeline(*args, cwd=tmp_path) if case in AS_SUBPROCESS else _main_in_process(args, capsys)
    _assert_bad(proc, message, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: ties\nmodels: [{model: a\n", r"bad.yaml: unreadable YAML at line"),
        ("merge_method: frankenmerge\nbase_model: b\nmodels: [{model: a}]\n", r"unknown merge_method 'frankenmerge'"),
        # mergekit 0.1.5 keys mergeline does not implement: named, never ignored
        ("merge_method: linear\nmodules: {decoder: {models: [{model: a}]}}\n", r"bad.yaml: modules: not supported"),
        ("merge_method: linear\nmodels: [{model: a}]\nchat_template: chatml\n", r"chat_template: 'chatml' is neither"),
    ],
)
def test_bad_yaml_and_unknown_method(tmp_path: Path, text: str, message: str, capsys, monkeypatch) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    if "unreadable" in message:
        proc = _mergeline("merge", "bad.yaml", "--out", "out", cwd=tmp_path)
    else:
        monkeypatch.chdir(tmp_path)
        proc = _main_in_process(["merge", "bad.yaml", "--out", "out"], capsys)
    _assert_bad(proc, message, tmp_path)


def _assert_bad(proc: subprocess.CompletedProcess, message: str, tmp_path: Path) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
