"""``model+adapter`` (mergekit's LoRA path syntax) in merge configs: the adapter is folded while the merge
streams, and the result equals mergekit 0.1.5's (which merges the adapter with PEFT first) on a tiny
Llama with PEFT adapters built in the test, in ``models:`` and in ``base_model``; bad specs fail in one line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from mergeline.merge.config import MergeConfig
from mergeline.errors import MergelineError
from mergeline.merge.engine import run_merge
from tests.lora_fixtures import build_lora_adapter
from tests.merge_fixtures import finetune, load_tensors, tiny_base

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lora-syntax")
    base = tiny_base("llama", root / "base")
    return {
        "root": str(root), "base": str(base), "ft": str(finetune(base, root / "ft", seed=1)),
        "lora_a": str(build_lora_adapter(base, root / "lora_a", seed=1)),
        "lora_b": str(build_lora_adapter(base, root / "lora_b", seed=2, target_modules=["q_proj", "o_proj", "up_proj"],
                                         use_rslora=True)),
    }


def _mergekit(config: dict, out: Path, cache: Path) -> dict[str, torch.Tensor]:
    options = mergekit_options.MergeOptions(lazy_unpickle=False, copy_tokenizer=False, write_model_card=False,
                                            quiet=True, lora_merge_cache=str(cache))
    logging.disable(logging.WARNING)
    try:
        mergekit_merge.run_merge(mergekit_config.MergeConfiguration.model_validate(config), str(out), options=options)
    finally:
        logging.disable(logging.NOTSET)
    return load_tensors(out)


@pytest.mark.parametrize("case", ["models", "base_model", "slices"])
def test_model_plus_lora_equals_mergekit(zoo: dict[str, str], tmp_path: Path, case: str) -> None:
    if case == "models":
        config = {"merge_method": "task_arithmetic", "base_model": zoo["base"], "dtype": "float32",
                  "parameters": {"lambda": 0.8},
                  "models": [{"model": f"{zoo['base']}+{zoo['lora_a']}", "parameters": {"weight": 1.0}},
                             {"model": f"{zoo['base']}+{zoo['lora_b']}", "parameters": {"weight": 0.5}},
                             {"model": zoo["ft"], "parameters": {"weight": 0.3}}]}
    elif case == "slices":  # a frankenmerge whose first slice comes from an adapter-folded model
        config = {"merge_method": "linear", "dtype": "float32", "slices": [
            {"sources": [{"model": f"{zoo['base']}+{zoo['lora_a']}", "layer_range": [0, 1], "parameters": {"weight": 1.0}}]},
            {"sources": [{"model": zoo["ft"], "layer_range": [0, 2], "parameters": {"weight": 1.0}}]}]}
    else:
        config = {"merge_method": "ties", "base_model": f"{zoo['base']}+{zoo['lora_a']}", "dtype": "float32",
                  "models": [{"model": zoo["ft"], "parameters": {"weight": 1.0, "density": 0.5}},
                             {"model": f"{zoo['base']}+{zoo['lora_b']}", "parameters": {"weight": 0.5, "density": 0.7}}]}
    run_merge(MergeConfig.model_validate(config), tmp_path / "ours")
    ours, theirs = load_tensors(tmp_path / "ours"), _mergekit(config, tmp_path / "mk", tmp_path / "cache")
    assert set(theirs) <= set(ours)
    for name, expected in theirs.items():
        assert ours[name].dtype == expected.dtype and torch.equal(ours[name], expected), name
    # the adapters did change what was merged
    plain = load_tensors(Path(zoo["base"]))
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], plain["model.layers.0.self_attn.q_proj.weight"])


def test_bad_lora_specs_fail_before_writing(zoo: dict[str, str], tmp_path: Path) -> None:
    other = tiny_base("gpt2", tmp_path / "gpt2")
    cases = {
        f"{zoo['base']}+{zoo['lora_a']}+{zoo['lora_b']}": "exactly one '+'",
        f"{zoo['base']}+{tmp_path / 'nowhere'}": "no such folder",
        f"{other}+{zoo['lora_a']}": "does not have",
    }
    for spec, fragment in cases.items():
        config = {"merge_method": "task_arithmetic", "base_model": zoo["base"],
                  "models": [{"model": spec, "parameters": {"weight": 1.0}}]}
        with pytest.raises(MergelineError, match=re.escape(fragment)):
            run_merge(MergeConfig.model_validate(config), tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_model_plus_lora_through_the_gpu_loop(zoo: dict[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU engine's loader computes folded tensors on the host (they have no stored bytes); run
    its loop on the CPU and compare with the CPU engine."""
    from mergeline.merge import prefetch as merge_prefetch

    config = {"merge_method": "task_arithmetic", "base_model": zoo["base"], "dtype": "float32",
              "models": [{"model": f"{zoo['base']}+{zoo['lora_a']}", "parameters": {"weight": 1.0}},
                         {"model": zoo["ft"], "parameters": {"weight": 0.5}}]}
    run_merge(MergeConfig.model_validate(config), tmp_path / "cpu")
    monkeypatch.setattr(merge_prefetch, "PREFETCH_DEVICES", ("cpu", "cuda"))
    run_merge(MergeConfig.model_validate(config), tmp_path / "loop")
    cpu, loop = load_tensors(tmp_path / "cpu"), load_tensors(tmp_path / "loop")
    assert all(torch.equal(cpu[n], loop[n]) for n in cpu)
