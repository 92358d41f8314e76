"""The ``mergeline`` command line: ``mergeline <command> ...`` (commands in mergeline/commands/).

Exit codes (ARCHITECTURE.md): 0 success; 2 bad input (``MergelineError``: one ``error: ...`` line on
stderr, or an argparse usage error); 1 an environment fault (``OSError``: full disk, unwritable
folder; ``MemoryError``), one line too; 1 any other failure (a bug: with its traceback); 130 Ctrl-C,
143 SIGTERM, 129 SIGHUP. SIGTERM and SIGHUP stop a command the way Ctrl-C does, through its cleanup
(a half-written output's temporary folder is removed), not by the default instant death.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

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


class Stopped(SystemExit):
    """A stop signal, raised where the command is so that its cleanup runs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Stopped` for the duration (a supervised run's worker and
    supervisor install their own handlers on top)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (an in-process call from elsewhere)
        return
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    configure_offline_defaults()
    from mergeline.errors import MergelineError

    parser, owners = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a supervised command re-runs as its worker
    try:
        with _stoppable():
            return int(owners[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except Stopped as exc:
        print(f"error: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
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
