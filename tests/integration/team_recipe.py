"""The README's team recipe as data, and a throw-away PostgreSQL to run it against.

``recipe()`` reads the bash block that follows the ``<!-- team recipe`` marker in README.md into its
``# [section]`` parts; ``Recipe.run`` runs one part in a folder as written: lines ending in ``&``
start long-running processes (tracked by :class:`Processes`, stopped by PID), ``export`` lines
change the environment of the parts after them, every other line must exit 0.

``postgres(folder)`` is a PostgreSQL cluster on 127.0.0.1 at a free port (trust auth, user
``mergeline``), stopped and removed afterwards. Its binaries come from PATH or Debian's
``/usr/lib/postgresql/<version>/bin`` (``.ci/run`` installs the ``postgresql`` package when
``initdb`` is missing). PostgreSQL refuses to run as root, so as root it runs as the ``postgres``
user that the package creates.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.pipeline_project import REPO, Processes, free_port

MARKER = "<!-- team recipe"
ASSIGNMENTS = re.compile(r"^((?:[A-Za-z_][A-Za-z0-9_]*=\S+\s+)*)(.*)$")


@dataclass
class Recipe:
    sections: dict[str, list[str]]
    env: dict[str, str] = field(default_factory=dict)

    def run(self, section: str, cwd: Path, procs: Processes, name: str = "", **extra: str) -> None:
        """Run ``section`` in ``cwd`` with ``extra`` variables; background lines become processes ``name-i``."""
        env = {**self.env, **extra, "PWD": str(cwd)}
        for index, line in enumerate(self.sections[section]):
            if line.endswith("&"):
                # exec: the process started is the program itself, so stopping its PID stops it.
                assign, command = ASSIGNMENTS.match(line[:-1].strip()).groups()  # type: ignore[union-attr]
                procs.start(f"{name or section}-{index}", ["bash", "-c", f"{assign}exec {command}"], env, cwd)
            elif line.startswith("export "):
                shown = subprocess.run(["bash", "-c", f"{line} && env -0"], env=env, cwd=cwd, capture_output=True,
                                       check=True).stdout.decode()
                exported = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
                self.env.update({name: exported[name] for name in re.findall(r"\b([A-Za-z_]\w*)=", line[7:])})
                env = {**self.env, **extra, "PWD": str(cwd)}
            else:
                result = subprocess.run(["bash", "-c", line], env=env, cwd=cwd, capture_output=True, text=True,
                                        timeout=1800)
                assert result.returncode == 0, f"[{section}] {line}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def recipe(env: dict[str, str]) -> Recipe:
    """The README's team block, split into its ``# [section]`` parts (comments and blank lines dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    sections: dict[str, list[str]] = {}
    current = None
    for raw in block.splitlines():
        line = raw.strip()
        if (heading := re.match(r"# \[([\w-]+)\]", line)) is not None:
            current = sections.setdefault(heading.group(1), [])
        elif line and not line.startswith("#"):
            assert current is not None, f"README team recipe: {line!r} comes before any # [section]"
            current.append(line)
    return Recipe(sections, dict(env))


def postgres_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does it)")
    return versions[-1].parent


@contextmanager
def postgres() -> Iterator[dict[str, str]]:
    """A fresh cluster; yields the libpq variables (PGHOST, PGPORT, PGUSER) and PG_BIN, the folder of its tools."""
    bin_dir = postgres_bin()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="mergeline-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    port = free_port()
    data, log = folder / "data", folder / "postgres.log"

    def pg(*args: str) -> None:
        result = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{args[0]}: {result.stdout[-2000:]}{result.stderr[-2000:]}"

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "mergeline", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120", "start",
           "-o", f"-h 127.0.0.1 -p {port} -k {folder} -F")
        try:
            yield {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "mergeline", "PG_BIN": str(bin_dir)}
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["Recipe", "postgres", "recipe"]
