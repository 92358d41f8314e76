"""Untrusted PEFT adapters (mergeline.merge.lora_config, mergeline.merge.lora): every adapter_config.json field checked
by type and range, and NaN/Inf brought by an adapter named as the adapter's, never as the base's file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.given_models import check_given_models
from mergeline.merge.lora import LoraAdapter, extract_lora_vector, fold_into_model
from mergeline.merge.lora_reader import LoraFoldedReader
from mergeline.task_params import TaskEntry
from tests.lora_fixtures import write_adapter
from tests.merge_fixtures import tiny_base, write_checkpoint

KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base("llama", tmp_path_factory.mktemp("lora-config") / "llama")


def _ok(scale: float = 1.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {KEY.format("A"): torch.ones(2, 64, dtype=dtype), KEY.format("B"): torch.full((64, 2), scale, dtype=dtype)}


def _refused(folder: Path, field: str, fragment: str = "") -> str:
    with pytest.raises(MergelineError) as caught:
        LoraAdapter(folder)
    message = str(caught.value)
    assert str(folder) in message and f"field '{field}'" in message and fragment in message, message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("field", "value"), [
    ("r", 0), ("r", -2), ("r", 2.0), ("r", "2"), ("r", True), ("r", None),
    ("lora_alpha", math.nan), ("lora_alpha", math.inf), ("lora_alpha", "4"), ("lora_alpha", False),
    ("lora_alpha", None), pytest.param("lora_alpha", 10**400, id="lora_alpha-int-beyond-float"),
    ("use_rslora", "yes"), ("use_rslora", 1), ("fan_in_fan_out", "false"), ("lora_bias", []),
    ("use_dora", "no"),
    ("rank_pattern", ["q_proj"]), ("rank_pattern", "q_proj"), ("rank_pattern", {"q_proj": 0}),
    ("rank_pattern", {"q_proj": 2.5}), ("rank_pattern", {"q_proj": True}), ("rank_pattern", {"q_proj": "2"}),
    ("alpha_pattern", {"q_proj": math.nan}), ("alpha_pattern", {"q_proj": "4"}), ("alpha_pattern", {"q_proj": None}),
    ("target_modules", 5), ("target_modules", ["q_proj", 1]), ("target_modules", {"q_proj": 1}),
    ("base_model_name_or_path", 5), ("base_model_name_or_path", "models/a\0b"),
    ("base_model_name_or_path", "x" * 5000),
])
def test_each_config_field_is_checked_by_type_and_range(tmp_path: Path, field: str, value: object) -> None:
    _refused(write_adapter(tmp_path / "adapter", _ok(), **{field: value}), field)


def test_literals_json_reads_as_numbers_and_files_that_are_not_configs(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "big", _ok())
    config = folder / "adapter_config.json"
    for literal in ("1e400", "-Infinity", "NaN"):  # Python's json reads all three as floats
        config.write_text(f'{{"peft_type": "LORA", "r": 2, "lora_alpha": {literal}}}')
        _refused(folder, "lora_alpha", "finite number")
    cases = {
        "nested too deeply": "[" * 100_000 + "]" * 100_000,
        "unreadable JSON": '{"peft_type": "LORA", "r": 1' + "0" * 5000 + "}",  # beyond int parsing's 4300 digits
        "larger than 1 MiB": json.dumps({"peft_type": "LORA", "pad": "x" * 2**20}),
    }
    for fragment, text in cases.items():
        config.write_text(text)
        with pytest.raises(MergelineError) as caught:
            LoraAdapter(folder)
        assert fragment in str(caught.value) and str(config) in str(caught.value), str(caught.value)


def test_defaults_are_peft_defaults(tmp_path: Path) -> None:
    """Without lora_alpha, PEFT's LoraConfig uses 8 (not r); without r, 8 too, so rank-2 weights disagree."""
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    tensors = {key.format("A"): torch.ones(2, 3), key.format("B"): torch.ones(4, 2)}
    folder = write_adapter(tmp_path / "no-alpha", tensors)
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["lora_alpha"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert LoraAdapter(folder).modules[Q].scale == 8 / 2
    del config["r"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergelineError, match=r"rank 2 in the weights but r=8 \(PEFT's default"):
        LoraAdapter(folder)


def test_bad_adapter_of_a_task_fails_preflight_in_one_line(llama: Path, tmp_path: Path) -> None:
    """base_model_name_or_path reaches a path operation: a NUL (ValueError) or a name too long to look up
    (OSError) must not become a traceback."""
    folder = write_adapter(tmp_path / "adapter", _ok(), base_model_name_or_path="models/a\0b")
    with pytest.raises(MergelineError) as caught:
        check_given_models([TaskEntry(name="news", adapter=str(folder))], str(llama), tmp_path, "work")
    message = str(caught.value)
    assert message.startswith("tasks: news: ") and "field 'base_model_name_or_path'" in message, message
    # a name the file system cannot look up (ENAMETOOLONG) is no local folder: nothing to compare
    write_adapter(folder, _ok(), base_model_name_or_path="x" * 300)
    check_given_models([TaskEntry(name="news", adapter=str(folder))], str(llama), tmp_path, "work")


def _expect_adapter_blamed(run, folder: Path, fragment: str, base: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MergelineError) as caught:
        run()
    message = str(caught.value)
    assert str(folder) in message and fragment in message and "\n" not in message, message
    assert str(base) not in message, message


@pytest.mark.parametrize("where", ["vector", "model", "reader"])
def test_nonfinite_from_the_adapter_names_the_adapter(llama: Path, tmp_path: Path, where: str) -> None:
    inf_b = _ok()
    inf_b[KEY.format("B")][3, 1] = math.inf
    cases = {
        "lora_B.weight' contains NaN or Inf": write_adapter(tmp_path / "inf", inf_b),
        # s·B·A = 3e38 · 2 overflows float32: every input is finite, alpha/r is to blame
        "overflows to Inf/NaN in torch.float32 (scale lora_alpha/r = 3e+38)":
            write_adapter(tmp_path / "alpha", _ok(), r=2, lora_alpha=6e38),
        # float32 product 2·400 · 100 = 80000, past float16's 65504 once cast to the adapter's dtype
        "overflows to Inf/NaN in torch.float16": write_adapter(tmp_path / "fp16", _ok(400.0, torch.float16),
                                                                lora_alpha=200),
    }
    for fragment, folder in cases.items():
        out = tmp_path / f"out-{folder.name}"
        runs = {"vector": lambda: extract_lora_vector(llama, folder, out),
                "model": lambda: fold_into_model(llama, folder, out),
                "reader": lambda: LoraFoldedReader(llama, folder).view(Q)}
        _expect_adapter_blamed(runs[where], folder, fragment, llama)
        assert not out.exists()


def test_a_sum_that_overflows_names_the_adapter_and_a_base_nan_names_the_base(llama: Path, tmp_path: Path) -> None:
    from tests.merge_fixtures import load_tensors

    tensors = {k: v.half() for k, v in load_tensors(llama).items()}
    tensors[Q].fill_(64000.0)  # finite in float16; + ΔW of 4000 goes past 65504
    half = write_checkpoint(tmp_path / "half", tensors, config_from=llama)
    folder = write_adapter(tmp_path / "adapter", _ok(1000.0), lora_alpha=4)  # ΔW = 2 · 2·1000 = 4000
    _expect_adapter_blamed(lambda: LoraFoldedReader(half, folder).view(Q), folder,
                           "W + ΔW of 'model.layers.0.self_attn.q_proj.weight' overflows to Inf in torch.float16", half)
    tensors[Q][0, 0] = math.nan  # the base's own NaN stays the base's: the merge engine names its file
    nan = write_checkpoint(tmp_path / "nan", tensors, config_from=llama)
    assert torch.isnan(LoraFoldedReader(nan, folder).view(Q)[0, 0])
