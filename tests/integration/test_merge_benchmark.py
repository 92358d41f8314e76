"""Smoke run of benchmarks/merge_speed.py at a tiny size: the table has its rows and the tools agree.

Runs the real script (mergeline, mergekit and the read+write baseline as subprocesses) on a base and
two ~1M-parameter float32 fine-tunes. No timing is asserted: only the shape of the table and that
mergeline's output equals mergekit's (float32 inputs, so Task Arithmetic must match exactly).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mergekit")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "merge_speed.py"


def _table_rows(text: str) -> dict[str, dict[str, str]]:
    """method -> {column: cell} for the markdown table's body rows."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["method"]] = cells
    return rows


def _whole_and_alone(cell: str) -> tuple[float, float]:
    """"whole (merge alone)" -> the two numbers."""
    match = re.fullmatch(r"([\d.e-]+) \(([\d.e-]+)\)", cell)
    assert match, cell
    return float(match[1]), float(match[2])


@pytest.mark.slow
def test_merge_speed_tiny_run_prints_one_row_per_method(tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "64x2", "--finetunes", "2", "--dtype", "float32",
         "--methods", "TA,TIES,LINEAR,TSV", "--workdir", str(tmp_path / "work"), "--table-out", str(table)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = _table_rows(table.read_text())
    assert set(rows) == {"TA", "TIES", "LINEAR", "TSV"}
    assert {row["size"] for row in rows.values()} == {"0.00422B (64x2) float32"}  # --sizes HIDDENxLAYERS
    assert {row["device"] for row in rows.values()} == {"cpu"}
    for method, row in rows.items():
        # "whole command (merge alone)": each tool's run_merge, timed inside its process, is part of it
        total, alone = _whole_and_alone(row["mergeline s (merge alone)"])
        assert 0 < alone <= total, (method, row)
        assert float(row["read+write s"]) > 0
        assert float(row["ml peak RSS GB"]) > 0
        assert 0 < _whole_and_alone(row["ml fraction of read bound"])[0]
        if method == "TSV":  # no mergekit counterpart: compared with TA only
            assert row["mergekit s (merge alone)"] == "(none)" and row["ml/mk time"] == "-"
            continue
        total, alone = _whole_and_alone(row["mergekit s (merge alone)"])
        assert 0 < alone <= total, (method, row)
        assert all(v > 0 for v in _whole_and_alone(row["ml/mk time"]))
    assert rows["TA"]["ml/TA time"] == "1.00 (1.00)"
    # Same config, float32 inputs: mergeline must reproduce mergekit. TA bit for bit; TIES up to the
    # few entries tied in magnitude at the trim cut-off, which mergekit orders by an unstable argsort
    # (mergeline/methods/_sparsify.py).
    diff = "ml vs mk: max abs diff (elements differing)"
    assert rows["TA"][diff] == "0"
    ties = re.fullmatch(r"0|[\d.e-]+ \((\d+) of ([\d.]+)M\)", rows["TIES"][diff])
    assert ties, rows["TIES"][diff]
    assert ties.group(1) is None or int(ties.group(1)) <= 1e-4 * float(ties.group(2)) * 1e6
    assert "reading them once took" in table.read_text()
    # The merged outputs are removed unless --keep-outputs; the model set stays cached for reruns.
    assert not any((tmp_path / "work" / "out").glob("merge*"))
    assert (tmp_path / "work" / "models").is_dir()
