"""Robustness cases: a tampered registry. ``lineage --verify`` and ``reproduce`` name what was changed.

Each case registers the fixture model (``tests/lineage_fixtures.py``: random tiny Llama, two task
vectors, a task-arithmetic merge) as a version of its own, tampers with its tags, its stored files or
its ``lineage.json`` (with or without a matching hash tag), and reads the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mergeline.lineage.record import Lineage
from tests.robustness.kit import Case, params
from tests.robustness.runtime_kit import register_own, run_main, store_args

def _client() -> MlflowClient:
    return MlflowClient()


def _verdict(command: str, spec: str, folder: Path, key: str) -> str:
    extra = ["--out", str(folder / "out")] if command == "reproduce" else []
    code, out, err = run_main([command, spec, *extra, *(["--verify"] if command == "lineage" else []), *store_args()])
    seen = f"exit {code}"
    if code != 0:
        seen += f", names {key}" if key in err else f", does not name {key}"
    return seen + (", says bit for bit" if "bit for bit" in out else "")


def _tamper_case(command: str, name: str, tamper: Callable, key: str) -> Case:  # type: ignore[type-arg]
    """Register a version for this case, ``tamper(version, stored folder)``, run the command on it."""
    def check(folder: Path) -> str:
        spec, version, stored = register_own(f"robust-{abs(hash((command, name))) % 10**8}")
        tamper(version, stored)
        return _verdict(command, spec, folder, key)
    return Case(command if command == "reproduce" else "lineage", name, f"exit 1, names {key}", check)


def _edit_lineage(stored: Path, edit: Callable) -> str:  # type: ignore[type-arg]
    lineage = Lineage.model_validate_json((stored / "lineage.json").read_text())
    edit(lineage)
    (stored / "lineage.json").write_text(lineage.to_json())
    return lineage.sha256()


def _drop_tag(key: str, edit_lineage: bool = False) -> Callable:  # type: ignore[type-arg]
    def tamper(version, stored: Path) -> None:  # type: ignore[no-untyped-def]
        if edit_lineage:
            _edit_lineage(stored, lambda lin: lin.evaluation.update({"validation/alpha/acc": 1.0}))
        _client().delete_model_version_tag(version.name, version.version, key)
    return tamper


def _set_tag(key: str, value: str) -> Callable:  # type: ignore[type-arg]
    return lambda version, stored: _client().set_model_version_tag(version.name, version.version, key, value)


def _forge(edit: Callable) -> Callable:  # type: ignore[type-arg]
    """Rewrite lineage.json and the lineage hash tag to match it: a consistent forgery."""
    def tamper(version, stored: Path) -> None:  # type: ignore[no-untyped-def]
        digest = _edit_lineage(stored, edit)
        _client().set_model_version_tag(version.name, version.version, "mergeline.lineage_sha256", digest)
    return tamper


def _flip(stored: Path, name: str = "model.safetensors") -> None:
    raw = bytearray((stored / name).read_bytes())
    raw[-1] ^= 0xFF
    (stored / name).write_bytes(bytes(raw))


def _other_run(lin) -> None:  # type: ignore[no-untyped-def]
    lin.mlflow.registered_run_id = "0" * 32


def _relambda(lin) -> None:  # type: ignore[no-untyped-def]
    lin.merge.config["parameters"]["lambda"] = 0.6


def _intact_reproduce(folder: Path) -> str:
    spec, _, _ = register_own("robust-intact")
    return _verdict("reproduce", spec, folder, "-")


CASES: list[Case] = [
    _tamper_case("lineage", "lineage.json edited, mergeline.lineage_sha256 tag deleted",
                 _drop_tag("mergeline.lineage_sha256", edit_lineage=True), "mergeline.lineage_sha256"),
    _tamper_case("lineage", "mergeline.base_model_sha256 tag deleted", _drop_tag("mergeline.base_model_sha256"),
                 "mergeline.base_model_sha256"),
    _tamper_case("lineage", "mergeline.weights_sha256 tag deleted", _drop_tag("mergeline.weights_sha256"),
                 "mergeline.weights_sha256"),
    _tamper_case("lineage", "mergeline.method tag changed", _set_tag("mergeline.method", "ties"), "mergeline.method"),
    _tamper_case("lineage", "lineage.json and its hash tag rewritten: other weights",
                 _forge(lambda lin: lin.weights.update({k: "ab" * 32 for k in lin.weights})), "mergeline.weights_sha256"),
    _tamper_case("lineage", "lineage.json and its hash tag rewritten: other source run", _forge(_other_run),
                 "source run"),
    _tamper_case("lineage", "source run's registered_version tag deleted",
                 lambda v, s: _client().delete_tag(v.run_id, "mergeline.registered_version"), "registered_version"),
    _tamper_case("lineage", "stored weight file corrupted", lambda v, s: _flip(s), "model.safetensors"),
    _tamper_case("lineage", "unlisted weight file added to the stored folder",
                 lambda v, s: (s / "extra.safetensors").write_bytes(b"\0" * 16), "extra.safetensors"),
    _tamper_case("reproduce", "stored weight file corrupted", lambda v, s: _flip(s), "the registered artifact stores"),
    _tamper_case("reproduce", "merge rewritten to λ=0.6, lineage hash tag deleted",
                 lambda v, s: (_edit_lineage(s, _relambda), _client().delete_model_version_tag(
                     v.name, v.version, "mergeline.lineage_sha256")), "cannot be trusted"),
    _tamper_case("reproduce", "merge rewritten to λ=0.6 with a matching hash tag", _forge(_relambda),
                 "the registered artifact stores"),
    Case("reproduce", "intact version (control)", "exit 0, says bit for bit", _intact_reproduce),
]

REPRESENTATIVE: set[str] = set()  # CI: tests/integration/test_registry_trust.py


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
