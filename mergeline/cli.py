"""The ``mergeline`` command line: ``mergeline <command> ...`` (commands in mergeline/commands/).

Exit codes (ARCHITECTURE.md): 0 success; 2 bad input (``MergelineError``: one ``error: ...`` line on
stderr, or an argparse usage error); 1 an environment fault (``OSError``: full disk, unwritable
folder; ``MemoryError``), one line too; 1 any other failure (a bug: with its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from mergeline import __version__
from mergeline.env import configure_offline_defaults


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The parser, and which command module owns each subcommand name."""
    from mergeline.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="mergeline", description="Model merging with task arithmetic.")
    parser.add_argument("--version", action="version", version=f"mergeline {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    owners: dict[str, object] = {}
    for name in COMMANDS:
        module = importlib.import_module(f"mergeline.commands.{name}")
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for added in set(subparsers.choices) - before:
            owners[added] = module
    return parser, owners


def main(argv: Sequence[str] | None = None) -> int:
    configure_offline_defaults()
    from mergeline.errors import MergelineError

    parser, owners = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a supervised command re-runs as its worker
    try:
        return int(owners[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment (full disk, read-only or vanished folder): no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    except BaseException:  # SystemExit or Prefect's termination signal: only a stopped worker gets here
        from mergeline.commands._supervise import exit_stopped_worker

        exit_stopped_worker()  # a stopped pipeline worker never returns from here
        raise


if __name__ == "__main__":
    sys.exit(main())
