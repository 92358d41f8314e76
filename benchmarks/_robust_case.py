"""One hostile input or fault of ``benchmarks/robustness.py``: what is done, what must happen.

Each ``benchmarks/_robust_<area>.py`` module exposes ``CASES: list[Case]``; the benchmark runs every
case in a fresh temporary folder and prints a table of case, expected and observed outcome. A case
passes when ``observed == expected``. Outcomes are short words such as ``exit 2, one line``,
``refused``, ``killed, no process left``: the same vocabulary in ``expected`` and in what ``check``
returns, so the table can be read without the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    area: str  # merge, run, stage, lineage, reproduce, cache, signal, concurrency, ...
    name: str  # what is done, in a few words
    expected: str  # the outcome that is promised
    check: Callable[[Path], str]  # runs the case in the given empty folder, returns the observed outcome
