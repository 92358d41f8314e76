"""CLI subcommands, one module each, listed in ``COMMANDS`` (the one place to register a command).

A command module defines ``add_parser(subparsers)`` (adds its subparser; help text, arguments) and
``run(args) -> int`` (the exit code). Import heavy libraries inside ``run`` so ``mergeline --help``
stays fast. Adding a command: write ``mergeline/commands/<name>.py`` and add ``"<name>"`` below.
"""

COMMANDS: tuple[str, ...] = (
    "merge",
    "run",
    "stage",
    "dvc_yaml",
    "lineage",
    "reproduce",
    "extract_lora",
    "report",
)
