"""benchmarks/_quality_encoder.py on a tiny random BERT with the real MiniLM tokenizer: the frozen head,
the fine-tune through it, the per-example scores and the code task's sentence pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _quality_encoder import Split, _examples, embed_all, finetune, fit_head, score  # noqa: E402
from tests.lm_fixtures import build_tiny_bert  # noqa: E402


def _split(tokenizer, texts: list[str], labels: list[int]) -> Split:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return Split(enc["input_ids"], enc["attention_mask"], torch.tensor(labels), enc.get("token_type_ids"))


def test_head_is_frozen_and_fine_tuning_through_it_learns(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = build_tiny_bert(tmp_path / "bert")
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle"]
    texts = [f"the {w} is {'good' if i % 2 else 'bad'}" for i, w in enumerate(words * 2)]
    train = _split(tokenizer, texts, [i % 2 for i in range(len(texts))])
    head = fit_head(embed_all(encoder, train), train.labels, 2)
    assert not any(p.requires_grad for p in head.parameters())
    before = score(encoder, head, train)
    assert len(before) == len(texts) and set(before) <= {"0", "1"}
    weights = head.weight.clone()
    losses = finetune(encoder, [(head, train)], steps=30, batch=8, lr=1e-3, seed=0)
    assert torch.equal(head.weight, weights), "the head must stay as fitted on the base"
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert score(encoder, head, train).count("1") >= before.count("1")


def test_code_records_become_one_true_and_one_distractor_pair():
    records = [{"prompt": "x = 1\n", "choices": [" y = 2", " z = 3", " w = 4"], "label": 1},
               {"prompt": "def f():\n", "choices": [" return 1", " pass"], "label": 0}]
    texts, labels = _examples("code", records, seed=0)
    assert labels == [1, 0, 1, 0]
    assert texts[0] == ("x = 1\n", "z = 3") and texts[1][0] == "x = 1\n" and texts[1][1] != "z = 3"
    assert texts[2] == ("def f():\n", "return 1") and texts[3] == ("def f():\n", "pass")
    assert _examples("news", records, 0) == (["x = 1\n", "def f():\n"], [1, 0])


def test_talos_mask_keeps_the_least_sensitive_share_and_restores_the_weights(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from _quality_encoder import talos_mask
    from mergeline.finetune import mask_density

    folder = build_tiny_bert(tmp_path / "bert")
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    split = _split(tokenizer, ["a good day", "a bad day", "the river", "a stone"], [1, 0, 1, 0])
    head = fit_head(embed_all(encoder, split), split.labels, 2)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    mask = talos_mask(encoder, head, split, keep=0.25, rounds=2, seed=0)
    assert mask_density(mask) == __import__("pytest").approx(0.25, abs=0.01)
    assert not any(n.startswith("pooler.") for n in mask) and "embeddings.LayerNorm.weight" in mask
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the 0.1 scaling is undone
