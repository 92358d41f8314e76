"""What the robustness cases share: the case record, tiny models written in code, the CLI run
in-process or in a bounded subprocess, and the outcome words every case returns.

A case is one hostile input or fault: ``check(folder)`` does it in an empty folder and returns the
observed outcome in short words, compared with the promised ``expected`` (so a failing case reads as
a table row: what was done, what was promised, what happened). Each ``test_robust_<area>.py`` module
lists its ``CASES`` and runs each as one test (:func:`params`). Outcomes: ``exit 0``; ``exit N, one
line`` (stderr is a single ``error:`` line, no traceback); ``exit N, K lines``; ``traceback (exit N)``;
``killed`` / ``timeout`` (subprocess limits), and suffixes the cases add (``, intact``, ``, no temp
left``, ``, names KEY``).

CI runs a representative subset of each module (every area, every promise of the README's
"Guarantees"); the others are marked ``exhaustive`` and run with ``pytest tests/robustness
--exhaustive``. Cases that start real ``mergeline run`` processes are also marked ``slow``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergeline.cli import main


@dataclass(frozen=True)
class Case:
    area: str  # merge, run, stage, lineage, reproduce, cache, signal, concurrency, tasks, adapter, data
    name: str  # what is done, in a few words
    expected: str  # the outcome that is promised
    check: Callable[[Path], str]  # runs the case in the given empty folder, returns the observed outcome
    slow: bool = False  # starts real pipeline runs (a minute or more)


def params(cases: Sequence[Case], representative: Collection[str]) -> list:  # type: ignore[type-arg]
    """One ``pytest.param`` per case, its id the case's name; cases not named in ``representative``
    (CI's subset) are marked ``exhaustive``, slow ones ``slow`` too."""
    names = {case.name for case in cases}
    unknown = set(representative) - names
    assert not unknown, f"representative cases that do not exist: {sorted(unknown)}"
    return [pytest.param(case, id=f"{case.area}: {case.name}",
                         marks=[*([pytest.mark.slow] if case.slow else []),
                                *([] if case.name in representative else [pytest.mark.exhaustive])])
            for case in cases]


ROOT = Path(__file__).resolve().parents[2]
LONG_LINE = 2000  # an error line longer than this is a dump, not a message
LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi")
)  # nine lines; fully expanded 9**9 strings

# Names as in a Llama checkpoint, so layer gradients and filters apply; tiny shapes (sub-second merges).
TENSORS = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.up_proj.weight": (12, 8),
    "model.norm.weight": (8,),
    "lm_head.weight": (16, 8),
}


# Params whose base model does not exist: a file that passes validation and the checks of user inputs
# stops at the base-model check (naming ``base_model``), so nothing heavy ever runs.
PARAMS = {
    "experiment": "robust", "base_model": "./no-such-base", "tasks": ["news", "sentiment"], "device": "cpu",
    "data": {"n_train": 4, "n_validation": 2, "n_test": 2},
    "merge": {"methods": {"task_arithmetic": {"lambdas": [0.5]}, "ties": {"lambdas": [1.0], "densities": [0.5]}}},
    "registry": {"model_name": "robust-model"},
}


def write_params(folder: Path, sets: Sequence[str] = (), **top: object) -> Path:
    """``folder/params.yaml``: :data:`PARAMS` with top-level keys replaced by ``top``, then each
    ``KEY.PATH=YAML`` of ``sets`` applied (written into the file, not passed as ``--set``)."""
    tree = yaml.safe_load(yaml.safe_dump({**PARAMS, **top}))
    for assignment in sets:
        key, raw = assignment.split("=", 1)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def run_refused(folder: Path, key: str | None = None, markers: Sequence[str] = ()) -> str:
    """``mergeline run --params params.yaml`` in ``folder``: the outcome (naming ``key``), then whether
    any of ``markers`` (files a hostile input's code would leave in ``folder``) appeared, and whether
    anything else in ``folder`` changed."""
    before = snapshot(folder)
    code, _, err = cli(["run", "--params", "params.yaml"], cwd=folder)
    ran = [name for name in markers if (folder / name).exists()]
    for name in ran:
        (folder / name).unlink()
    return (f"{refused(code, err, key)}, {'code ran (' + ', '.join(ran) + ')' if ran else 'no code ran'}, "
            f"{'nothing written' if intact(before, folder) == 'intact' else 'written'}")


def tensors(seed: int, scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(shape, generator=gen) for name, shape in TENSORS.items()}


def write_model(folder: Path, seed: int, base: dict | None = None) -> Path:
    """An HF-layout folder (config.json + model.safetensors): ``base`` plus noise, or random."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = tensors(seed, 0.02 if base is not None else 1.0)
    weights = {n: (base[n] + t if base is not None else t).contiguous() for n, t in noise.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2,
                                                    "torch_dtype": "float32"}))
    return folder


def zoo(root: Path) -> dict[str, Path]:
    """``root/models/{base,a,b}``: a base and two fine-tunes of it."""
    base = write_model(root / "models" / "base", 0)
    weights = load_file(base / "model.safetensors")
    return {"base": base, "a": write_model(root / "models" / "a", 1, weights),
            "b": write_model(root / "models" / "b", 2, weights)}


def config(path: Path, models: dict[str, Path], method: str = "task_arithmetic",
           parameters: dict | None = None, per_model: dict | None = None, **extra: object) -> Path:
    """A merge config of ``models["a"]`` and ``["b"]`` over ``["base"]``."""
    per = {"weight": 1.0, **(per_model or {})}
    data = {"merge_method": method, "base_model": str(models["base"]),
            "models": [{"model": str(models[k]), "parameters": dict(per)} for k in ("a", "b")],
            "parameters": {k: v for k, v in {"lambda": 0.5, **(parameters or {})}.items() if v is not None},
            **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: Sequence[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """``mergeline ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
    finally:
        os.chdir(before)
    return code, out.getvalue(), err.getvalue()


def cli_bounded(args: Sequence[str], cwd: Path, timeout: float = 60, memory: int = 3 << 30) -> tuple[int, str, str]:
    """``mergeline ARGS`` in a subprocess with an address-space limit and a timeout (for inputs
    that, unchecked, read forever or blow up memory). Exit code -9 for a timeout."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "mergeline.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return -9, "", "timeout"
    return proc.returncode, proc.stdout, proc.stderr


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A full disk, as far as this process can tell: writes past ``limit`` bytes per file fail with
    EFBIG (RLIMIT_FSIZE, with SIGXFSZ ignored so the write returns an error instead of a kill)."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def outcome(code: int, err: str) -> str:
    """The outcome words for an exit code and stderr (see the module docstring)."""
    if code == -9 and err == "timeout":
        return "timeout"
    if code < 0:
        return f"killed (signal {-code})"
    if "Traceback (most recent call last)" in err:
        return f"traceback (exit {code})"
    if code == 0:
        return "exit 0"
    lines = [line for line in err.splitlines() if line.strip()]
    if len(lines) == 1 and len(lines[0]) > LONG_LINE:
        return f"exit {code}, one line of {len(lines[0])} characters"
    return f"exit {code}, one line" if len(lines) == 1 else f"exit {code}, {len(lines)} lines"


def refused(code: int, err: str, key: str | None = None, exit_code: int = 2) -> str:
    """``outcome`` plus ``, names KEY`` when the error line mentions ``key``."""
    seen = outcome(code, err)
    if key is not None and code != 0 and seen.startswith("exit"):
        seen += f", names {key}" if key in err else f", does not name {key}: {err.strip()[:80]}"
    return seen


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes: compare to see what changed."""
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def intact(before: dict[str, bytes], folder: Path) -> str:
    return "intact" if folder.exists() and snapshot(folder) == before else "changed"


def temps_left(folder: Path) -> str:
    """``no temp left`` unless a mergeline temporary (``.NAME.tmp-…`` / ``.NAME.mergeline-tmp-…``, the
    ``old`` ones that a replace moves aside, ``.reproduce-inputs-…``) is under ``folder``."""
    leftovers = [p for p in folder.rglob(".*") if re.search(r"[.-](tmp|old)-", p.name) or
                 p.name.startswith(".reproduce-inputs-")]
    return "no temp left" if not leftovers else f"temp left ({leftovers[0].name})"


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (a dict, or raw bytes that may lie) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data
