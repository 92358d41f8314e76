"""``code``: next line of Python source (the interpreter's own standard library, ~740 files).

Record: prompt = up to 6 consecutive source lines (trimmed from the top to <= 200 chars) ending in a
newline; choices = the true next line and 3 lines drawn from *other* files, re-indented to the true
line's indentation so indentation alone gives nothing away; label = the true line's position.
Target lines are real code: 12-72 chars stripped, not a comment, not inside or starting a string
literal block, and with at least 3 non-blank context lines. Splits are file-disjoint (files are
shuffled and each contributes at most 3 targets) so near-duplicate neighbouring lines never leak
from train to test. Files under test folders, ``site-packages``, ``idlelib`` and ``encodings`` (hex
tables) are skipped, and so are targets or contexts that are mostly digits (numeric tables).

The data depend on the Python version's stdlib (recorded in the task's ``meta.json``).
"""

from __future__ import annotations

import platform
import random
import sysconfig
from pathlib import Path

from mergeline.data.common import Sizes, check_available, distractors, make_choices

CONTEXT_LINES = 6
MAX_CONTEXT_CHARS = 200
MIN_TARGET, MAX_TARGET = 12, 72
TARGETS_PER_FILE = 3
# encodings/ is mostly hex tables: numbers, not code
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "idlelib", "encodings"}
_QUOTES = ('"""', "'''")


def stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not _SKIP_PARTS.intersection(rel.parts):
            files.append((rel.as_posix(), path))
    return files


def _in_string_mask(lines: list[str]) -> list[bool]:
    """True for lines inside or opening/closing a triple-quoted block (docstrings are prose, not code)."""
    mask, inside = [], False
    for line in lines:
        toggles = sum(line.count(q) for q in _QUOTES)
        mask.append(inside or toggles > 0)
        if toggles % 2:
            inside = not inside
    return mask


def _is_target(line: str) -> bool:
    text = line.strip()
    if not MIN_TARGET <= len(text) <= MAX_TARGET or text.startswith(("#", "'", '"', "@")):
        return False
    letters = sum(ch.isalpha() for ch in text)
    # not a run of brackets and punctuation, nor a row of a numeric table
    return letters >= 6 and letters >= 0.4 * len(text.replace(" ", ""))


def _context(lines: list[str], index: int) -> str | None:
    window = lines[max(0, index - CONTEXT_LINES) : index]
    while window and (sum(len(x) + 1 for x in window) > MAX_CONTEXT_CHARS or not window[0].strip()):
        window = window[1:]  # drop from the top: the nearest lines matter most
    if sum(1 for x in window if x.strip()) < 3:
        return None
    if sum(ch.isdigit() for x in window for ch in x) > 0.2 * sum(len(x) for x in window):
        return None  # a numeric table
    return "\n".join(window) + "\n"


def _file_examples(rel: str, path: Path) -> list[tuple[str, str, str]]:
    """(id, context, true line) candidates of one file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    lines = [line.rstrip().expandtabs(4) for line in text.splitlines()]
    in_string = _in_string_mask(lines)
    out = []
    for i, line in enumerate(lines):
        if i < 3 or in_string[i] or not _is_target(line) or any(in_string[max(0, i - CONTEXT_LINES) : i]):
            continue
        context = _context(lines, i)
        if context is not None:
            out.append((f"stdlib/{rel}:{i + 1}", context, line))
    return out


def build(sizes: Sizes, rng: random.Random) -> dict[str, list[dict]]:
    per_file = [(rel, ex) for rel, path in stdlib_files() if (ex := _file_examples(rel, path))]
    check_available("code", sizes, sum(min(TARGETS_PER_FILE, len(ex)) for _, ex in per_file))
    pool = sorted({line.strip() for _, ex in per_file for _, _, line in ex})
    rng.shuffle(per_file)
    wanted = [(split, n) for split, n in sizes.items() if n]
    out: dict[str, list[dict]] = {split: [] for split, _ in sizes.items()}
    for _, examples in per_file:
        if not wanted:
            break
        split, n = wanted[0]
        # a file feeds one split only (file-disjoint); surplus targets of the last file are dropped
        picks = sorted(rng.sample(examples, min(TARGETS_PER_FILE, len(examples))))[: n - len(out[split])]
        own = {line.strip() for _, _, line in examples}
        for ex_id, context, line in picks:
            indent = line[: len(line) - len(line.lstrip())]
            others = [indent + o for o in distractors(rng, pool, exclude=own)]
            choices, label = make_choices(rng, line, others)
            out[split].append({"id": ex_id, "prompt": context, "choices": choices, "label": label})
        if len(out[split]) == n:
            wanted.pop(0)
    for records in out.values():
        rng.shuffle(records)
    return out


def sources() -> dict[str, str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    return {"package": "python-stdlib", "python": platform.python_version(), "path": stdlib}
