"""Tiny Llama- and GPT-2-shaped checkpoints built in code, for merge tests (no hub, seconds to build).

``tiny_base(kind, folder)`` saves a randomly initialised transformers model (safetensors) with a small
tokenizer config beside it; ``finetune(base, folder, seed, scale)`` writes a "fine-tune": the base's
tensors plus Gaussian noise, optionally sharded. Fine-tunes are written with ``safetensors.torch``, not
with mergeline's writer, so the reader tests are not circular.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=80, n_positions=32, bos_token_id=0, eos_token_id=0)


def tiny_base(kind: str, folder: Path, seed: int = 0, shard_kb: int | None = None, **overrides: int) -> Path:
    """Save a random tiny ``kind`` ("llama" or "gpt2") model to ``folder`` (float32 safetensors);
    ``overrides`` change the config (e.g. ``num_hidden_layers=4``)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides}, tie_word_embeddings=False))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**{**GPT2, **overrides}))
    else:
        raise ValueError(kind)
    kwargs = {"max_shard_size": f"{shard_kb}KB"} if shard_kb else {}
    model.save_pretrained(folder, **kwargs)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return folder


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (single file or shards), read with safetensors itself."""
    files = sorted(folder.glob("*.safetensors"))
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                out[name] = handle.get_tensor(name)
    return out


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config_from: Path | None = None,
                     shards: int = 1) -> Path:
    """Write ``tensors`` as an HF folder: model.safetensors, or ``shards`` files plus an index."""
    folder.mkdir(parents=True, exist_ok=True)
    if config_from is not None:
        shutil.copyfile(config_from / "config.json", folder / "config.json")
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def finetune(base: Path, folder: Path, seed: int, scale: float = 0.02, shards: int = 1) -> Path:
    """The base plus N(0, scale²) noise on every float tensor (a stand-in for a fine-tune)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        name: (t + scale * torch.randn(t.shape, generator=gen)).to(t.dtype) if t.is_floating_point() else t
        for name, t in load_tensors(base).items()
    }
    return write_checkpoint(folder, tensors, config_from=base, shards=shards)


def save_word_tokenizer(folder: Path, tokens: list[str], chat_template: str | None = None) -> Path:
    """A word-level fast tokenizer whose ids are the positions in ``tokens`` ("<unk>" and "</s>" special)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(str(folder))
    return folder


def with_vocabulary(base: Path, folder: Path, tokens: list[str], seed: int, order: list[int] | None = None) -> Path:
    """A fine-tune of ``base`` whose tokenizer is ``tokens``: rows of the base's tokens (in ``order``, the
    base id of each row) then one new random row per token beyond the base's vocabulary."""
    tensors = load_tensors(finetune(base, folder, seed))
    config = json.loads((base / "config.json").read_text())
    vocab = config["vocab_size"]
    gen = torch.Generator().manual_seed(seed + 100)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = tensors[name][order] if order is not None else tensors[name]
        extra = torch.randn(len(tokens) - vocab, rows.shape[1], generator=gen)
        tensors[name] = torch.cat([rows, extra]).contiguous()
    (folder / "model.safetensors").unlink()
    write_checkpoint(folder, tensors)
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokens)}))
    return save_word_tokenizer(folder, tokens)
