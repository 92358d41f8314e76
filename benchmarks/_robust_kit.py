"""What the robustness cases share: tiny models written in code, the CLI run in-process or in a
bounded subprocess, and the outcome words of ``benchmarks/_robust_case.py``.

Outcomes: ``exit 0``; ``exit N, one line`` (stderr is a single ``error:`` line, no traceback);
``exit N, K lines``; ``traceback (exit N)``; ``killed`` / ``timeout`` (subprocess limits), and
suffixes the cases add (``, intact``, ``, no temp left``, ``, names KEY``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LONG_LINE = 2000  # an error line longer than this is a dump, not a message

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


def tensors(seed: int, scale: float = 1.0) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(shape, generator=gen) for name, shape in TENSORS.items()}


def write_model(folder: Path, seed: int, base: dict | None = None) -> Path:
    """An HF-layout folder (config.json + model.safetensors): ``base`` plus noise, or random."""
    from safetensors.torch import save_file

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
    from safetensors.torch import load_file

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
    from mergeline.cli import main

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
    """``no temp left`` unless a mergeline temporary (``.NAME.mergeline-tmp-…``, ``.NAME.mergeline-old-…``,
    or as earlier versions named them ``.NAME.tmp-…``, ``.NAME.old-…``, ``.reproduce-inputs-…``) is under
    ``folder``."""
    leftovers = [p for p in folder.rglob(".*") if any(part in p.name for part in (".tmp-", ".old-", "-tmp-", "-old-"))
                 or p.name.startswith(".reproduce-inputs-")]
    return "no temp left" if not leftovers else f"temp left ({leftovers[0].name})"


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (a dict, or raw bytes that may lie) and data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data
