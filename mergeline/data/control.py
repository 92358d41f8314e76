"""``control``: plain English continuation, held out from every fine-tune (``pydoc_data.topics``).

The source is the Python Language Reference prose that ships with the interpreter (79 topics).
Prose paragraphs (not indented code, not headings or grammar rules) are joined and cut into
sentences; a sentence of 10-28 words without code markup is split in the middle. Record: prompt =
its first half; choices = the true second half and the second halves of 3 sentences from *other*
topics, each with a leading space; label = the true one's position. It measures how much general
language ability a merged model keeps ("control drift"); it has validation and test splits only.
"""

from __future__ import annotations

import platform
import random
import re

from mergeline.data.common import Sizes, check_available, distractors, make_choices, sequential_splits, squash

MIN_WORDS, MAX_WORDS = 10, 28
_SENTENCE_END = re.compile(r"(?<=[a-z)][.!?])\s+(?=[A-Z])")
_CODE_MARKUP = re.compile(r"[*`|>{}=_\[\]]|::|\.\.\.")

_VERSION_NOTES = ("Changed in version", "New in version", "Added in version", "Deprecated since")


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs: blank-line separated blocks, minus indented code and ``***``/``===`` headings."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not block.strip() or any(line.startswith((" ", "\t")) for line in lines):
            continue
        if any(set(line.strip()) <= set("*=-~^") for line in lines):
            continue
        out.append(squash(block))
    return out


def sentences() -> list[tuple[str, str]]:
    """(topic, sentence) pairs usable for continuation, in a fixed order, duplicates removed."""
    from pydoc_data.topics import topics  # stdlib; imported lazily as it is 0.5 MB of text

    seen, out = set(), []
    for topic in sorted(topics):
        for paragraph in _paragraphs(topics[topic]):
            for sentence in _SENTENCE_END.split(paragraph):
                words = sentence.split()
                if not MIN_WORDS <= len(words) <= MAX_WORDS or not sentence.endswith("."):
                    continue
                if _CODE_MARKUP.search(sentence) or sentence.startswith(_VERSION_NOTES) or sentence in seen:
                    continue
                seen.add(sentence)
                out.append((topic, sentence))
    return out


def build(sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
    items = sentences()
    check_available("control", sizes, len(items))
    halves = []
    for topic, sentence in items:
        words = sentence.split()
        cut = len(words) // 2
        halves.append((topic, " ".join(words[:cut]), " " + " ".join(words[cut:])))
    order = rng.sample(range(len(halves)), sizes.total)
    records = []
    for index in order:
        topic, head, tail = halves[index]
        other_tails = sorted({t for tp, _, t in halves if tp != topic})
        choices, label = make_choices(rng, tail, distractors(rng, other_tails, exclude={tail}))
        records.append({"id": f"pydoc/{topic}/{index}", "prompt": head, "choices": choices, "label": label})
    return sequential_splits(records, sizes)


def sources() -> dict[str, str]:
    return {"package": "python-stdlib", "python": platform.python_version(), "path": "pydoc_data/topics.py"}
