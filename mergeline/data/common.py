"""Helpers shared by the task builders: split sizes, seeded splitting, text clipping, distractors."""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mergeline.errors import MergelineError

SPLITS = ("train", "validation", "test")
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """Examples per split; ``train`` is 0 for the control set."""

    train: int
    validation: int
    test: int

    def items(self) -> list[tuple[str, int]]:
        return [(s, getattr(self, s)) for s in SPLITS]

    @property
    def total(self) -> int:
        return self.train + self.validation + self.test


def resolve_sizes(task: str, sizes: Mapping[str, int] | None, default: Sizes, has_train: bool) -> Sizes:
    """Merge user ``sizes`` (keys train/validation/test) over the task default; validate."""
    given = dict(sizes or {})
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise MergelineError(f"sizes.{unknown[0]}: unknown split for task '{task}' (expected {', '.join(SPLITS)})")
    merged = {s: given.get(s, getattr(default, s)) for s in SPLITS}
    for split, n in merged.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise MergelineError(f"sizes.{split}: must be a non-negative integer for task '{task}', got {n!r}")
    if not has_train and merged["train"]:
        raise MergelineError(f"sizes.train: task '{task}' is a held-out control set and has no train split")
    if has_train and merged["train"] == 0:
        raise MergelineError(f"sizes.train: task '{task}' needs at least 1 training example")
    if merged["validation"] == 0 or merged["test"] == 0:
        split = "validation" if merged["validation"] == 0 else "test"
        raise MergelineError(f"sizes.{split}: task '{task}' needs at least 1 example")
    return Sizes(**merged)


def check_available(task: str, sizes: Sizes, available: int) -> None:
    if sizes.total > available:
        raise MergelineError(
            f"sizes: task '{task}' asks for {sizes.total} examples "
            f"(train+validation+test) but its source yields only {available}"
        )


def task_rng(task: str, seed: int) -> random.Random:
    """A generator seeded from (seed, task): str seeds hash the same on every run and platform."""
    return random.Random(f"mergeline:{task}:{seed}")


def sequential_splits(items: Sequence[T], sizes: Sizes) -> dict[str, list[T]]:
    """Cut already-shuffled ``items`` into disjoint consecutive splits."""
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = list(items[start : start + n])
        start += n
    return out


def balanced_splits(pools: Mapping[Hashable, Sequence[T]], sizes: Sizes, rng: random.Random) -> dict[str, list[T]]:
    """Disjoint splits with classes as equal as possible (round-robin over classes, then shuffled).

    ``pools`` maps each class to its items; each pool is shuffled with ``rng`` first. A split of ``n``
    gets ``n // k`` items of each of ``k`` classes, plus one more for the first ``n % k`` classes in
    a rotating order, so the leftovers do not always favour the same class.
    """
    ordered = sorted(pools.items(), key=lambda kv: str(kv[0]))
    queues = {label: rng.sample(list(items), len(items)) for label, items in ordered}
    labels = list(queues)
    needed = {label: 0 for label in labels}
    plan: dict[str, list[Hashable]] = {}
    offset = 0
    for split, n in sizes.items():
        order = [labels[(offset + i) % len(labels)] for i in range(n)]
        offset += n
        plan[split] = order
        for label in order:
            needed[label] += 1
    short = [label for label in labels if needed[label] > len(queues[label])]
    if short:
        raise MergelineError(
            f"sizes: class '{short[0]}' has only {len(queues[short[0]])} examples, "
            f"{needed[short[0]]} needed for balanced splits"
        )
    out = {}
    for split, order in plan.items():
        chosen = [queues[label].pop() for label in order]
        rng.shuffle(chosen)
        out[split] = chosen
    return out


_WS = re.compile(r"\s+")


def squash(text: str) -> str:
    """Collapse every whitespace run (newlines included) to one space."""
    return _WS.sub(" ", text).strip()


def clip_words(text: str, max_chars: int) -> str:
    """``text`` cut at the last word boundary within ``max_chars`` (never mid-word)."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else text[:max_chars]).rstrip(" ,;:-")


def distractors(rng: random.Random, pool: Sequence[str], exclude: set[str], k: int = 3) -> list[str]:
    """``k`` distinct strings from ``pool`` not in ``exclude``, drawn with ``rng``."""
    picked: list[str] = []
    taken = set(exclude)
    # rejection sampling stays cheap: pools are thousands of items, k is 3
    for _ in range(100 * k):
        candidate = pool[rng.randrange(len(pool))]
        if candidate not in taken:
            picked.append(candidate)
            taken.add(candidate)
            if len(picked) == k:
                return picked
    raise ValueError(f"distractor pool too small for {k} distinct items")


def make_choices(rng: random.Random, answer: str, others: Sequence[str]) -> tuple[list[str], int]:
    """Shuffle ``answer`` among ``others``; return (choices, label)."""
    choices = [answer, *others]
    rng.shuffle(choices)
    return choices, choices.index(answer)
