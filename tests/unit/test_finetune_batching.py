"""Tokenization of records (answer-only labels), JSONL validation, batch order, answer log-probs."""

from __future__ import annotations

import json

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.finetune.batching import (
    IGNORE,
    answer_logprob,
    answer_nll,
    choice_logprobs,
    collate,
    encode,
    read_records,
    shuffled_batches,
)
from tests.lm_fixtures import load_tokenizer, tiny_records


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_labels_cover_only_the_answer(tok):
    enc = encode(tok, "Word: apple\nRepeat:", " apple", max_length=64)
    answer = tok(" apple", add_special_tokens=False)["input_ids"]
    n_prompt = len(enc.input_ids) - len(answer)
    assert enc.input_ids[n_prompt:] == answer
    assert enc.labels == [IGNORE] * n_prompt + answer
    assert enc.input_ids == tok("Word: apple\nRepeat: apple", add_special_tokens=False)["input_ids"]


def test_delimiter_joins_prompt_and_answer(tok):
    enc = encode(tok, "Topic:", "sports", max_length=64, delimiter=" ")
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == " sports"


def test_truncation_drops_prompt_from_the_left_and_keeps_the_answer(tok):
    prompt = " ".join(["word"] * 50) + " Answer:"
    full = encode(tok, prompt, " yes", max_length=1000)
    cut = encode(tok, prompt, " yes", max_length=8)
    assert len(cut.input_ids) == 8
    assert cut.input_ids == full.input_ids[-8:]
    assert [t for t in cut.labels if t != IGNORE] == [t for t in full.labels if t != IGNORE]


def test_collate_pads_right_with_ignored_labels(tok):
    a, b = encode(tok, "Word: apple\nRepeat:", " apple", 64), encode(tok, "Hi:", " x", 64)
    batch = collate([a, b], pad=0)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    short = 1 if len(b.input_ids) < len(a.input_ids) else 0
    n = len([a, b][short].input_ids)
    assert torch.all(batch["labels"][short, n:] == IGNORE)
    assert torch.all(batch["input_ids"][short, n:] == 0)


def test_answer_logprob_by_hand():
    # Vocabulary of 3, sequence [0, 1, 2]; only token 2 (predicted from position 1) is labelled.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[IGNORE, IGNORE, 2]])
    expected = 3.0 - torch.logsumexp(torch.tensor([1.0, 2.0, 3.0]), 0)
    assert torch.allclose(answer_logprob(logits, labels), expected.reshape(1))
    assert torch.allclose(answer_nll(logits, labels), -expected.reshape(1))


def test_shuffled_batches_are_seeded_and_cover_every_example():
    first = list(shuffled_batches(10, 4, steps=5, seed=3))
    assert first == list(shuffled_batches(10, 4, steps=5, seed=3))
    assert first != list(shuffled_batches(10, 4, steps=5, seed=4))
    assert all(len(b) == 4 for b in first)
    assert sorted(sum(first, [])[:10]) == list(range(10))  # first epoch is a permutation


def test_read_records_roundtrip_and_limit(tmp_path):
    path = tmp_path / "train.jsonl"
    recs = tiny_records("alpha", 5)
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert read_records(path) == recs
    assert read_records(path, limit=2) == recs[:2]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "a", "prompt": "p", "choices": ["x"], "label": 3}), "'label'"),
        (json.dumps({"id": "a", "prompt": "p", "choices": [], "label": 0}), "'choices'"),
        (json.dumps({"id": "a", "choices": ["x"], "label": 0}), "'prompt'"),
    ],
)
def test_read_records_names_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "g", "prompt": "p", "choices": ["x"], "label": 0})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(MergelineError, match=f"bad.jsonl:2: .*{fragment}"):
        read_records(path)


def test_read_records_missing_and_empty(tmp_path):
    with pytest.raises(MergelineError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MergelineError, match="no records"):
        read_records(tmp_path / "empty.jsonl")


def test_choice_logprobs_shared_prompt_path_equals_one_pass_per_choice(tok):
    from tests.lm_fixtures import tiny_llama

    model = tiny_llama(vocab_size=len(tok))
    single = {"id": "s", "prompt": "Name: tiger\nFirst letter:", "choices": [" T", " A", " C"], "label": 0}
    multi = {"id": "m", "prompt": "Word: x\nRepeat:", "choices": [" apple pie", " stone"], "label": 1}
    assert len(tok(" T", add_special_tokens=False)["input_ids"]) == 1  # the shared path applies to `single`
    got = choice_logprobs(model, tok, [single, multi], max_length=32, batch_size=2)
    for rec, scores in zip([single, multi], got):
        assert scores.shape == (len(rec["choices"]),)
        for c, choice in enumerate(rec["choices"]):
            batch = collate([encode(tok, rec["prompt"], choice, 32)], pad=0)
            with torch.no_grad():
                expected = answer_logprob(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            assert scores[c] == pytest.approx(float(expected), abs=1e-4)
