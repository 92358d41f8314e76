"""The results of ``merge_speed.py`` and their one markdown table (rows: size × device × method).

Columns: each tool's seconds for the whole command with, in parentheses, its merge function alone
(``run_merge`` of mergeline and of mergekit, timed inside the process); mergeline/mergekit, the same two
ways; mergeline against Task Arithmetic at the same size and device (the reference for methods mergekit
lacks); the read+write baseline and mergeline's fraction of the read bound (read seconds / mergeline
seconds; in parentheses by its merge alone); peak RSS of each tool (and peak CUDA memory when a device
is CUDA); the largest |mergeline − mergekit| with the number of elements that are not bit-equal.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from _measure import Comparison, Measured
from _synthetic_models import ModelSet

GB = 1e9


@dataclass
class MethodResult:
    in_mergekit: bool = True
    mergeline: Measured | None = None
    mergekit: Measured | None = None
    comparison: Comparison | None = None


@dataclass
class DeviceResult:
    baseline: Measured | None = None
    methods: dict[str, MethodResult] = field(default_factory=dict)


@dataclass
class SizeResult:
    models: ModelSet
    input_bytes: int
    read: Measured | None = None
    devices: dict[str, DeviceResult] = field(default_factory=dict)


def _ok(m: Measured | None) -> bool:
    return m is not None and not m.error


def _num(x: float, places: int = 1) -> str:
    """``places`` decimals, or two significant digits below 10^(1 − places): seconds to one decimal (a
    tiny merge is not "0.0"), ratios to two (never a bare "0.00")."""
    return f"{x:.{places}f}" if x >= 10.0 ** (1 - places) else f"{x:.2g}"


def _secs(m: Measured | None) -> str:
    if m is None or m.error:
        return "-" if m is None else "failed"
    return _num(m.seconds) + ("" if m.inner_seconds is None else f" ({_num(m.inner_seconds)})")


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def ratio(a: Measured | None, b: Measured | None, inner: bool = False) -> float | None:
    """a's seconds / b's (their merge functions' with ``inner``); None where either is missing."""
    if not (_ok(a) and _ok(b)):
        return None
    x, y = (a.inner_seconds, b.inner_seconds) if inner else (a.seconds, b.seconds)  # type: ignore[union-attr]
    return None if x is None or not y else x / y


def _pair(a: Measured | None, b: Measured | None) -> str:
    """"whole (merge alone)" ratios of a to b."""
    whole, inner = ratio(a, b), ratio(a, b, inner=True)
    if whole is None:
        return "-"
    return _num(whole, 2) + ("" if inner is None else f" ({_num(inner, 2)})")


def size_label(models: ModelSet) -> str:
    s = models.shape
    return f"{s.num_params() / 1e9:.3g}B ({s.hidden_size}x{s.num_hidden_layers}) {models.dtype}"


def render(results: list[SizeResult], args: argparse.Namespace) -> list[str]:
    """The markdown table, one row per (size, device, method), then a line per size on the read bound."""
    cuda = any(d.startswith("cuda") for d in args.devices)
    head = ["size", "device", "method", "mergeline s (merge alone)", "mergekit s (merge alone)", "ml/mk time",
            "ml/TA time", "read+write s", "ml fraction of read bound", "ml peak RSS GB", "mk peak RSS GB"]
    if cuda:
        head += ["ml peak CUDA GB", "mk peak CUDA GB"]
    head.append("ml vs mk: max abs diff (elements differing)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for r in results:
        size = size_label(r.models)
        for device, where in r.devices.items():
            ta = where.methods.get("TA")
            for label, m in where.methods.items():
                ml, mk = m.mergeline, m.mergekit
                row = [size, device, label, _secs(ml), _secs(mk) if m.in_mergekit else "(none)", _pair(ml, mk),
                       _pair(ml, ta.mergeline) if ta else "-", _secs(where.baseline), _pair(r.read, ml),
                       _gb(ml and ml.max_rss), _gb(mk and mk.max_rss)]
                if cuda:
                    row += [_gb(ml and ml.cuda_peak), _gb(mk and mk.cuda_peak)]
                row.append("-" if m.comparison is None else m.comparison.summary())
                lines.append("| " + " | ".join(row) + " |")
        if _ok(r.read):
            notes.append(f"{size}: {len(r.models.all_models)} models, {r.input_bytes / GB:.2f} GB of inputs; "
                         f"reading them once took {r.read.seconds:.2f} s "  # type: ignore[union-attr]
                         f"({r.input_bytes / GB / r.read.seconds:.2f} GB/s)")  # type: ignore[union-attr]
    return lines + [""] + notes


def report(results: list[SizeResult], args: argparse.Namespace) -> str:
    """The whole markdown report of what has been measured so far."""
    title = (f"merge_speed: {args.finetunes} fine-tunes + base, Llama-shaped, device {','.join(args.devices)}, "
             f"TIES/DELLA density {args.density}, best of {args.repeat}")
    return "\n".join([f"### {title}", "", *render(results, args)]) + "\n"
