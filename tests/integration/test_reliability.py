"""A representative subset of ``benchmarks/robustness.py``'s hostile inputs and faults, each a test.

Every area (merge, run, stage, lineage, reproduce) and every promise of the README's "Guarantees"
for outputs, numbers and hostile files is here at least once: user folders and inputs never
destroyed, no temporary folder left after a failure, non-finite or absurd numbers refused before any
work, configs/params/safetensors/lineage records that lie refused in one line. The full list (and
the runtime cases: caches, signals, concurrency) runs with ``python benchmarks/robustness.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from robustness import discover, run_case  # noqa: E402

SUBSET = {
    "merge": [
        "--out is a folder of the user's files",
        "--out is a folder of the user's files, --overwrite",
        "--out is the folder holding the input models",
        "--out is an input weight file",
        "--out . (the folder holding config and models)",
        "--out is a symlink to the base model",
        "--out is a previous mergeline output, --overwrite",
        "--out holds mergeline's file names and the user's, --overwrite",
        "--out is inside a task vector folder",
        "disk full in the middle of writing",
        "Ctrl-C in the middle of writing (library)",
        "error on a tensor after others were written",
        "lambda = 1e308 (beyond float32: all-Inf model on main)",
        "lambda = 3e38, weight 1e3 (float32 overflow)",
        "weight = 3e38 (linear: the weighted sum overflows)",
        "out_dtype float16, lambda 1e6 (overflow on the cast)",
        "seed = 2**70",
        "config is not UTF-8",
        "config is a billion-laughs alias bomb (9 lines)",
        "config nested 10,000 levels deep",
        "fine-tune is /dev/zero",
        "model.safetensors is a folder",
        "two tensors share one byte range",
        "gap of 8 unused bytes before the last tensor",
        "header nested 100,000 levels",
        "index names a shard outside the folder (../)",
        "base config.json is not JSON (out_dtype rewrites it)",
        "--out is the registry's copy of a model, --overwrite",
    ],
    "run": [
        "finetune.weight_decay=.inf",
        "merge.methods.ties.densities=[]",
        "merge.methods.ties.options={gamma: .inf}",
        "registry.model_name=a/b",
        "registry.champion_alias=v1",
        "work_dir=.",
        "params file is not UTF-8",
        "params file is a folder",
    ],
    "stage": ["finetune.weight_decay=.inf", "data_dir=.", "a stage output lands on a user's folder"],
    "lineage": [
        "lineage.json is not JSON",
        "--tracking-uri: sqlite file that is a text file",
        "--tracking-uri: unknown scheme",
        "--root does not exist",
    ],
    "reproduce": [
        "--out is a folder of the user's files",
        "--out is the registry's copy of the model, --overwrite",
        "--out is a previous rebuild, --overwrite",
        "recorded lambda = 1e308",
    ],
}

CASES = {(case.area, case.name): case for case in discover()}


@pytest.fixture(scope="module", autouse=True)
def restore_tracking_uri() -> Iterator[None]:
    """The lineage cases point MLflow at their own store; later test files must not inherit it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def test_every_area_is_covered() -> None:
    assert set(SUBSET) == {"merge", "run", "stage", "lineage", "reproduce"}
    assert len(CASES) >= 80 and all(len(names) >= 2 for names in SUBSET.values())


@pytest.mark.parametrize(("area", "name"), [(a, n) for a, names in SUBSET.items() for n in names])
def test_case(area: str, name: str) -> None:
    case = CASES[(area, name)]
    observed, _ = run_case(case)
    assert observed == case.expected, f"{area}: {name}: expected {case.expected!r}, observed {observed!r}"
