"""Build the task datasets: ``python -m mergeline.data --out data/tasks [--seed 0] [--tasks news,code]
[--size news.train=256 ...]``. Prints one line per task; exit 2 with one line on bad input."""

from __future__ import annotations

import argparse
import sys

from mergeline.data.tasks import available_tasks, build_all
from mergeline.errors import MergelineError


def _sizes(items: list[str]) -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = {}
    for item in items:
        key, _, value = item.partition("=")
        task, _, split = key.partition(".")
        if not split or not value.lstrip("-").isdigit():
            raise MergelineError(f"--size {item!r}: expected TASK.SPLIT=N, e.g. news.train=256")
        sizes.setdefault(task, {})[split] = int(value)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mergeline.data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root folder; each task goes to OUT/<task>/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(available_tasks()), help="comma-separated task names")
    parser.add_argument("--size", action="append", default=[], metavar="TASK.SPLIT=N")
    args = parser.parse_args(argv)
    try:
        tasks = [t for t in args.tasks.split(",") if t]
        build_all(args.out, tasks, _sizes(args.size), args.seed, progress=print)
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
