"""PEFT LoRA adapters built in code on a saved base model folder, for fold, merge and pipeline tests.

PEFT is used only here, to BUILD adapters the way users get them (``save_pretrained``); the library
reads them without PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def build_lora_adapter(base_dir: Path, out_dir: Path, seed: int = 0, dtype: torch.dtype | None = None,
                       **config: Any) -> Path:
    """Save a LoRA adapter of ``base_dir`` with random (non-zero) A and B to ``out_dir``.

    ``config`` goes to ``peft.LoraConfig`` (default r=4, alpha=8 on q_proj and v_proj).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    settings: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                "init_lora_weights": False}
    settings.update(config)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(**settings))
    with torch.no_grad():  # init_lora_weights=False draws B too; make the update large enough to see
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)
    if dtype is not None:
        peft_model = peft_model.to(dtype)
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def peft_merged_state(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The base with the adapter merged by PEFT itself (``merge_and_unload``), as a state dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in merged.state_dict().items()}


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    """An adapter folder written by hand: ``tensors`` and a config (default r=2, alpha=4 on q_proj) with
    ``config`` merged in, so that any field can hold any JSON value."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]} | config
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
