"""Preflight checks of tasks given as checkpoints or adapters (mergeline.given_models): one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeline.errors import MergelineError
from mergeline.given_models import check_given_models
from mergeline.task_params import TaskEntry
from tests.lora_fixtures import build_lora_adapter
from tests.merge_fixtures import finetune, tiny_base


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("given")
    base = tiny_base("llama", root / "base")
    other = tiny_base("llama", root / "other", seed=5)  # same shapes, other weights
    gpt2 = tiny_base("gpt2", root / "gpt2")
    return {
        "root": root, "base": base, "other": other, "gpt2": gpt2,
        "ft": finetune(base, root / "ft", seed=1),
        "gpt2_ft": finetune(gpt2, root / "gpt2_ft", seed=1),
        "adapter": build_lora_adapter(base, root / "adapter", seed=1),
        "other_adapter": build_lora_adapter(other, root / "other_adapter", seed=1),
        "gpt2_adapter": build_lora_adapter(gpt2, root / "gpt2_adapter", seed=1, target_modules=["c_attn"],
                                           fan_in_fan_out=True),
    }


def _check(zoo: dict[str, Path], **given: str) -> None:
    check_given_models([TaskEntry(name="news", **given)], str(zoo["base"]), zoo["root"], "work")


def test_good_checkpoint_and_adapter_pass(zoo: dict[str, Path]) -> None:
    (zoo["ft"] / "tokenizer_config.json").write_text(json.dumps({}))
    _check(zoo, checkpoint=str(zoo["ft"]))
    _check(zoo, adapter=str(zoo["adapter"]))


@pytest.mark.parametrize(("given", "fragment"), [
    ({"checkpoint": "nowhere"}, "no such folder"),
    ({"checkpoint": "gpt2_ft"}, "tensor"),
    ({"adapter": "nowhere"}, "no such folder"),
    ({"adapter": "other_adapter"}, "weights sha256"),
    ({"adapter": "gpt2_adapter"}, "does not have"),
])
def test_bad_given_models_fail_with_one_line(zoo: dict[str, Path], given: dict[str, str], fragment: str) -> None:
    key, name = next(iter(given.items()))
    folder = str(zoo.get(name, zoo["root"] / name))
    if key == "checkpoint" and Path(folder).is_dir():
        (Path(folder) / "tokenizer_config.json").write_text("{}")  # so the tensor check is what fails
    with pytest.raises(MergelineError) as caught:
        _check(zoo, **{key: folder})
    message = str(caught.value)
    assert message.startswith("tasks: news:") and fragment in message and "\n" not in message, message
    if name == "other_adapter":  # both bases named by hash
        assert message.count("sha256") == 2
    if key == "adapter" and name != "nowhere":  # a base that is not the adapter's is named by its hash
        assert "sha256" in message


def test_checkpoint_without_tokenizer_or_config(zoo: dict[str, Path], tmp_path: Path) -> None:
    folder = finetune(zoo["base"], tmp_path / "ck", seed=3)
    with pytest.raises(MergelineError, match="no tokenizer files"):
        _check(zoo, checkpoint=str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(MergelineError, match="no config.json"):
        _check(zoo, checkpoint=str(folder))


def test_entry_takes_one_source() -> None:
    with pytest.raises(ValueError, match="checkpoint or adapter"):
        TaskEntry(name="news", checkpoint="a", adapter="b")
    assert TaskEntry(name="news", adapter="a").source == "adapter"


def test_lora_target_modules_must_name_base_modules(zoo: dict[str, Path]) -> None:
    check_given_models([], str(zoo["base"]), zoo["root"], "work", ["q_proj", "self_attn.o_proj"])
    with pytest.raises(MergelineError, match="lora.target_modules: 'qproj' is no module of base model"):
        check_given_models([], str(zoo["base"]), zoo["root"], "work", ["q_proj", "qproj"])
