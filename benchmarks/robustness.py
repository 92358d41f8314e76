"""Hostile inputs and faults, each run in a fresh temporary folder: a table of what was promised
and what happened.

    python benchmarks/robustness.py [--area merge] [--match TEXT] [--fail-fast]

Discovers every ``benchmarks/_robust_*.py`` module that exposes ``CASES`` (a list of
``_robust_case.Case``), runs each case's ``check`` in an empty temporary folder and prints a markdown
table (area, case, expected, observed, ok) and the counts per area. A case passes when the observed
outcome equals the expected one; a check that raises is reported as ``crashed: …`` (the harness
never stops on one case). Exit status 1 when any case fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the case modules import their siblings
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))  # mergeline, unless PYTHONPATH names another checkout (to compare)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from mergeline.env import configure_offline_defaults  # noqa: E402

configure_offline_defaults()


def discover() -> list:
    """Every case of every ``_robust_*.py`` module with ``CASES``, in module-name order."""
    cases = []
    for file in sorted(HERE.glob("_robust_*.py")):
        module = importlib.import_module(file.stem)
        cases += list(getattr(module, "CASES", []))
    return cases


def run_case(case) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    """The observed outcome of one case (run in a fresh temporary folder) and its seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mergeline-robust-") as tmp:
        before = Path.cwd()
        try:
            observed = str(case.check(Path(tmp)))
        except BaseException as exc:  # noqa: BLE001 - a crashing check is a result, not the end of the run
            observed = f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        finally:
            os.chdir(before)
    return observed, time.perf_counter() - start


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", action="append", help="only these areas (repeatable)")
    parser.add_argument("--match", default=None, help="only cases whose name contains TEXT")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing case")
    args = parser.parse_args(argv)
    cases = [c for c in discover() if (not args.area or c.area in args.area)
             and (args.match is None or args.match in c.name)]
    print("| area | case | expected | observed | ok | s |")
    print("|---|---|---|---|---|---:|")
    totals: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    for case in cases:
        observed, seconds = run_case(case)
        ok = observed == case.expected
        totals[case.area] += 1
        passed[case.area] += ok
        print(f"| {case.area} | {_cell(case.name)} | {_cell(case.expected)} | {_cell(observed)} | "
              f"{'yes' if ok else '**no**'} | {seconds:.1f} |", flush=True)
        if args.fail_fast and not ok:
            break
    print()
    print("| area | cases | passed | failed |")
    print("|---|---:|---:|---:|")
    for area in sorted(totals):
        print(f"| {area} | {totals[area]} | {passed[area]} | {totals[area] - passed[area]} |")
    total, good = sum(totals.values()), sum(passed.values())
    print(f"| all | {total} | {good} | {total - good} |")
    return 0 if good == total else 1


if __name__ == "__main__":
    sys.exit(main())
