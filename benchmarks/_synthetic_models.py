"""Synthetic Llama-shaped checkpoints of a given size, for merge benchmarks and tests (no download).

Used by ``merge_speed.py``; ``tests/integration/test_merge_cuda.py`` loads it by path.

A set is one base model plus N "fine-tunes" (the weights: benchmarks/README.md, ``merge_speed.py``
step 1), each a Hugging Face folder (``config.json`` and sharded safetensors with an index). Sets are
cached: a folder holding ``set.json`` with the same parameters is reused as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mergeline.io.safetensors_io import ShardedWriter, TensorSpec

VOCAB = 32000
# Base weights are drawn like a freshly initialised Llama (initializer_range 0.02).
INIT_STD = 0.02
# Task-vector std relative to INIT_STD: 2% keeps most of every delta above bfloat16's rounding step
# (2^-8 relative), so bf16 task vectors are not mostly zeros.
REL_DELTA = 0.02
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the config fields that fix every tensor shape of a Llama decoder (the set's cache key)
SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "vocab_size")


def tensor_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, in the order Hugging Face writes a LlamaForCausalLM (its model built on
    the meta device: no memory, no values)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def num_params(config: LlamaConfig) -> int:
    return sum(math.prod(s) for s in tensor_shapes(config).values())


def llama_shape_for(params: float) -> LlamaConfig:
    """A Llama shape with about ``params`` parameters: width from the size class, depth to fill it.

    Widths follow common checkpoints (TinyLlama 1.1B: hidden 2048, MLP 5632, GQA 32/4 heads);
    the layer count is what brings the total to the target, at least 1.
    """
    # (largest size, hidden, vocab): tiny sizes shrink the vocabulary so tests stay fast.
    classes = [(5e6, 64, 512), (0.03e9, 256, VOCAB), (0.2e9, 768, VOCAB), (0.6e9, 1024, VOCAB),
               (2e9, 2048, VOCAB), (5e9, 3072, VOCAB), (math.inf, 4096, VOCAB)]
    hidden, vocab = next((h, v) for limit, h, v in classes if params <= limit)
    outside = num_params(llama_shape(hidden, 0, vocab))
    per_layer = num_params(llama_shape(hidden, 1, vocab)) - outside
    return llama_shape(hidden, max(1, round((params - outside) / per_layer)), vocab)


def llama_shape(hidden: int, layers: int, vocab: int = VOCAB) -> LlamaConfig:
    """The config.json of a LlamaForCausalLM (transformers and mergekit read it) of width ``hidden`` and
    ``layers`` blocks: SwiGLU MLP width ~ 8/3 h rounded up to a multiple of 256 as Llama does, heads of
    64, a quarter of them key/value heads."""
    heads = max(4, hidden // 64)
    return LlamaConfig(architectures=["LlamaForCausalLM"], hidden_act="silu", hidden_size=hidden,
                       intermediate_size=int(math.ceil(8 * hidden / 3 / 256) * 256), num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), vocab_size=vocab,
                       max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                       initializer_range=INIT_STD, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def _write_model(folder: Path, shape: LlamaConfig, dtype: str, shard_bytes: int,
                 make_tensor: Callable[[str, tuple[int, ...]], torch.Tensor]) -> None:
    """Write one HF folder through the product's streaming shard writer (memory: one tensor)."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(shape)
    torch_dtype = _DTYPES[dtype]
    writer = ShardedWriter(folder, [TensorSpec(n, s, torch_dtype) for n, s in shapes.items()], shard_bytes)
    for name, shp in shapes.items():
        writer.add(name, make_tensor(name, shp).to(torch_dtype).cpu().contiguous())
    writer.close()
    shape.dtype = dtype  # the stored dtype, as a saved model's config gives it
    (folder / "config.json").write_text(shape.to_json_string())


def _name_seed(name: str, seed: int) -> int:
    # Stable across processes (unlike hash()): each tensor gets its own stream.
    return (sum((i + 1) * ord(c) for i, c in enumerate(name)) * 1_000_003 + seed) % (2**63)


def _base_tensor(name: str, shape: tuple[int, ...], device: str = "cpu") -> torch.Tensor:
    if len(shape) == 1:  # RMSNorm weights start at one
        return torch.ones(shape, device=device)
    gen = torch.Generator(device).manual_seed(_name_seed(name, 0))
    return torch.randn(shape, generator=gen, device=device).mul_(INIT_STD)


@dataclass(frozen=True)
class ModelSet:
    """Paths of a built set: ``base`` and ``finetunes``."""

    base: Path
    finetunes: list[Path]
    shape: LlamaConfig
    dtype: str

    @property
    def all_models(self) -> list[Path]:
        return [self.base, *self.finetunes]


def build_model_set(
    workdir: Path,
    params: float,
    num_finetunes: int = 4,
    dtype: str = "bfloat16",
    shard_bytes: int = 1 << 30,
    progress=print,
    device: str = "cpu",
    shape: LlamaConfig | None = None,
) -> ModelSet:
    """Build (or reuse) ``workdir/base`` and ``workdir/ft{i}``; see the module docstring for the weights.

    ``shape`` fixes the architecture (``llama_shape``) instead of deriving it from ``params``.

    ``device`` draws the random numbers there (a GPU builds multi-GB sets in seconds); the values
    depend on it, so it is part of the cache key.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    shape = shape or llama_shape_for(params)
    spec = {"shape": {k: getattr(shape, k) for k in SHAPE}, "dtype": dtype, "shard_bytes": shard_bytes,
            "rel_delta": REL_DELTA, "num_finetunes": num_finetunes, "version": 1,
            "device": torch.device(device).type}
    workdir = workdir.resolve()
    marker = workdir / "set.json"
    result = ModelSet(workdir / "base", [workdir / f"ft{i}" for i in range(num_finetunes)], shape, dtype)
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return result
    marker.unlink(missing_ok=True)
    progress(f"building {num_finetunes}+1 models of {num_params(shape) / 1e9:.3f}B params "
             f"({dtype}, {shape.num_hidden_layers} layers x {shape.hidden_size}) in {workdir}")
    _write_model(result.base, shape, dtype, shard_bytes, lambda name, shp: _base_tensor(name, shp, device))
    for i, folder in enumerate(result.finetunes):
        gen = torch.Generator(device).manual_seed(1000 + i)

        def finetune_tensor(name: str, shp: tuple[int, ...], gen=gen) -> torch.Tensor:
            # Regenerating the base per tensor keeps memory at one shard instead of one model.
            delta = torch.randn(shp, generator=gen, device=device).mul_(REL_DELTA * INIT_STD)
            return _base_tensor(name, shp, device).add_(delta)

        _write_model(folder, shape, dtype, shard_bytes, finetune_tensor)
    marker.write_text(json.dumps(spec, indent=2))
    return result


def model_files(folder: Path) -> list[Path]:
    """The safetensors files of one HF folder."""
    return sorted(folder.glob("*.safetensors"))
