"""Robustness cases: ``mergeline lineage`` and ``mergeline reproduce`` on hostile records and outputs.

One tiny registered project (``tests/lineage_fixtures.py``: a random Llama base, two task vectors,
a task-arithmetic merge with its lineage) is built once per process in a fresh SQLite store; a case
that damages a record registers a version of its own (its own model name) and damages that one.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from mergeline.lineage.record import Lineage
from mergeline.tracking import configure_tracking
from mergeline.tracking.registry import model_artifact_dir, register_merged_model, resolve_version
from tests.lineage_fixtures import MODEL_NAME, absolute_config, build_project, merge_config
from tests.robustness.kit import Case, cli, file_size_limit, intact, outcome, params, refused, snapshot, temps_left


@cache
def project() -> tuple[Path, str]:
    """(root, tracking URI) of the shared registered project (``tiny-merged@champion``)."""
    root = Path(tempfile.mkdtemp(prefix="mergeline-robust-lineage-"))
    atexit.register(shutil.rmtree, root, True)
    built = build_project(root)
    uri = configure_tracking(f"sqlite:///{root}/mlflow.db", "robust-lineage")
    register_merged_model(root / "merged", MODEL_NAME, built.lineage, ["champion"])
    (root / "lineage.json").write_text(built.lineage.to_json())
    return root, uri


def _store_args() -> list[str]:
    root, uri = project()
    return ["--tracking-uri", uri, "--root", str(root)]


def _own_version(name: str, change: Callable[[dict], dict] | None = None) -> tuple[str, Path]:
    """Register the project's model again as ``name`` (its lineage edited by ``change``);
    return the spec and the registered ``lineage.json``."""
    root, uri = project()
    record = json.loads((root / "lineage.json").read_text())
    lineage = Lineage.model_validate(change(record) if change else record)
    configure_tracking(uri, "robust-lineage")
    register_merged_model(root / "merged", name, lineage, ["champion"])
    spec = f"{name}@champion"
    return spec, model_artifact_dir(resolve_version(spec)) / "lineage.json"


def _damaged(name: str, damage: Callable[[Path], object], command: tuple[str, ...] = ("lineage",),
             expected: str = "exit 2, one line") -> Case:
    """``lineage``/``reproduce`` on a version whose registered lineage.json ``damage`` broke."""
    def check(folder: Path) -> str:
        spec, record = _own_version(f"robust-{abs(hash(name)) % 10**8}")
        damage(record)
        extra = ["--out", str(folder / "out")] if command[0] == "reproduce" else []
        code, _, err = cli([*command, spec, *extra, *_store_args()], cwd=folder)
        return outcome(code, err)
    return Case(command[0], f"{' '.join(command[1:] + (name,))}", expected, check)


def _replace(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _to_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _to_device(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _spec(spec: str, key: str | None = None, args: tuple[str, ...] = ()) -> Case:
    """``lineage SPEC``: an unknown or malformed model spec, one line naming it."""
    def check(folder: Path) -> str:
        code, _, err = cli(["lineage", spec, *(args or tuple(_store_args()))], cwd=folder)
        return refused(code, err, key)
    return Case("lineage", f"spec {spec!r} {' '.join(args)}".strip(), f"exit 2, one line{f', names {key}' if key else ''}", check)


def _store(name: str, uri: Callable[[Path], str], root: Callable[[Path], str] | None = None) -> Case:
    """``lineage tiny-merged@champion`` against a tracking store or root that is not one."""
    def check(folder: Path) -> str:
        real_root, _ = project()
        code, _, err = cli(["lineage", "tiny-merged@champion", "--tracking-uri", uri(folder),
                            "--root", root(folder) if root else str(real_root)], cwd=folder)
        return outcome(code, err)
    return Case("lineage", name, "exit 2, one line", check)


def _reproduce(name: str, expected: str, out: Callable[[Path, Path], Path | str], overwrite: bool = False,
               watch: Callable[[Path, Path], Path] | None = None) -> Case:
    """``reproduce tiny-merged@champion --out OUT``: outcome, the watched folder's bytes, temps."""
    def check(folder: Path) -> str:
        root, _ = project()
        target = out(folder, root)
        watched = watch(folder, root) if watch else root / "vectors"
        before = snapshot(watched)
        code, _, err = cli(["reproduce", "tiny-merged@champion", "--out", str(target), *_store_args(),
                            *(["--overwrite"] if overwrite else [])], cwd=folder)
        return f"{outcome(code, err)}, {intact(before, watched)}, {temps_left(folder)}, {temps_left(root)}"
    return Case("reproduce", name, expected, check)


def _registered() -> Path:
    """The registered version's artifact folder in the local store (weights, lineage.json)."""
    _store_args()
    return model_artifact_dir(resolve_version("tiny-merged@champion"))


def _merge_over_registry(folder: Path) -> str:
    """``mergeline merge --out <the registry's copy of a model> --overwrite``."""
    root, _ = project()
    target = _registered()
    before = snapshot(target)
    (folder / "merge.yaml").write_text(json.dumps({**absolute_config(merge_config(), root), "merge_method": "task_arithmetic"}))
    code, _, err = cli(["merge", str(folder / "merge.yaml"), "--out", str(target), "--overwrite", "--quiet"])
    return f"{outcome(code, err)}, {intact(before, target)}"


def _previous(folder: Path, root: Path) -> Path:
    code, _, err = cli(["reproduce", "tiny-merged@champion", "--out", str(folder / "again"), *_store_args()])
    assert code == 0, err
    return folder / "again"


def _user(folder: Path, root: Path) -> Path:
    (folder / "mine").mkdir()
    (folder / "mine" / "notes.txt").write_text("keep me")
    return folder / "mine"


def _edited(name: str, key: str, change: Callable[[dict], dict]) -> Case:
    """``reproduce`` a version whose lineage records a hostile merge config."""
    def check(folder: Path) -> str:
        spec, _ = _own_version(f"robust-{abs(hash(name)) % 10**8}", change)
        code, _, err = cli(["reproduce", spec, "--out", str(folder / "out"), *_store_args()], cwd=folder)
        return refused(code, err, key) + ("" if not (folder / "out").exists() else ", output written")
    return Case("reproduce", name, f"exit 2, one line, names {key}", check)


def _config(**change: object) -> Callable[[dict], dict]:
    def edit(record: dict) -> dict:
        record["merge"]["config"].update(change)
        return record
    return edit


def _disk_full(folder: Path) -> str:
    """The output filesystem fills up while the rebuilt model is written (RLIMIT_FSIZE: EFBIG)."""
    root, _ = project()
    args = ["reproduce", "tiny-merged@champion", "--out", str(folder / "out"), *_store_args()]
    with file_size_limit(4096):
        code, _, err = cli(args, cwd=folder)
    written = "no output" if not (folder / "out").exists() else "output written"
    return f"{outcome(code, err)}, {written}, {temps_left(folder)}"


def _sqlite_text(folder: Path) -> str:
    (folder / "notes.db").write_text("not a database\n")
    return f"sqlite:///{folder / 'notes.db'}"


CASES: list[Case] = [
    _damaged("lineage.json is not JSON", lambda p: _replace(p, b"{ not json")),
    _damaged("lineage.json is JSON of another schema", lambda p: _replace(p, b'{"schema": "other"}')),
    _damaged("lineage.json is not UTF-8", lambda p: _replace(p, b'{"base_model": "\xff\xfe"}')),
    _damaged("lineage.json nested 100,000 levels", lambda p: _replace(p, b"[" * 100_000 + b"]" * 100_000)),
    _damaged("lineage.json is empty", lambda p: _replace(p, b"")),
    _damaged("lineage.json is a folder", _to_folder, expected="exit 1, one line"),
    _damaged("lineage.json is /dev/zero", _to_device, expected="exit 1, one line"),
    _damaged("lineage.json is not JSON", lambda p: _replace(p, b"]"), command=("lineage", "--verify")),
    _damaged("lineage.json is not JSON", lambda p: _replace(p, b"]"), command=("lineage", "--format", "mermaid")),
    _damaged("lineage.json is not JSON", lambda p: _replace(p, b"nope"), command=("reproduce",)),
    _spec("x'y", "x'y"),
    _spec("@champion", "@champion"),
    _spec("tiny-merged@", "tiny-merged@"),
    _spec("tiny-merged@999", "999"),
    _spec("tiny-merged@nope", "nope"),
    _spec("models:/", "models:/"),
    _store("--tracking-uri is /dev/zero", lambda f: "/dev/zero"),
    _store("--tracking-uri: sqlite file that does not exist", lambda f: f"sqlite:///{f}/absent.db"),
    _store("--tracking-uri: sqlite file that is a text file", _sqlite_text),
    _store("--tracking-uri: sqlite path that is a folder", lambda f: f"sqlite:///{f}"),
    _store("--tracking-uri: unknown scheme", lambda f: "bogus://nowhere"),
    _store("--root is /dev/zero", lambda f: project()[1], root=lambda f: "/dev/zero"),
    _store("--root does not exist", lambda f: project()[1], root=lambda f: str(f / "absent")),
    _store("--root is a file", lambda f: project()[1], root=lambda f: (f / "r.txt").write_text("x") and str(f / "r.txt")),
    _reproduce("--out new folder (baseline)", "exit 0, intact, no temp left, no temp left", lambda f, r: f / "out"),
    _reproduce("--out is a folder of the user's files", "exit 2, one line, intact, no temp left, no temp left",
               _user, watch=lambda f, r: f / "mine"),
    _reproduce("--out is the user's folder, --overwrite", "exit 2, one line, intact, no temp left, no temp left",
               _user, overwrite=True, watch=lambda f, r: f / "mine"),
    _reproduce("--out is the workspace holding the inputs", "exit 2, one line, intact, no temp left, no temp left",
               lambda f, r: r, watch=lambda f, r: r / "vectors"),
    _reproduce("--out is an input task vector, --overwrite", "exit 2, one line, intact, no temp left, no temp left",
               lambda f, r: r / "vectors" / "alpha", overwrite=True),
    _reproduce("--out is the registry's copy of the model, --overwrite",
               "exit 2, one line, intact, no temp left, no temp left", lambda f, r: _registered(), overwrite=True,
               watch=lambda f, r: _registered()),
    _reproduce("--out is inside an input task vector", "exit 2, one line, intact, no temp left, no temp left",
               lambda f, r: r / "vectors" / "alpha" / "rebuilt"),
    _reproduce("--out . (the working folder)", "exit 2, one line, intact, no temp left, no temp left",
               lambda f, r: ".", watch=lambda f, r: f),
    _reproduce("--out is an existing file", "exit 2, one line, intact, no temp left, no temp left",
               lambda f, r: (f / "f.txt").write_text("x") and f / "f.txt", watch=lambda f, r: f),
    _reproduce("--out is a previous rebuild, no --overwrite", "exit 2, one line, intact, no temp left, no temp left",
               _previous, watch=lambda f, r: f / "again"),
    _reproduce("--out is a previous rebuild, --overwrite", "exit 0, intact, no temp left, no temp left",
               _previous, overwrite=True),
    _reproduce("--out in an unwritable place (/sys)", "exit 1, one line, intact, no temp left, no temp left",
               lambda f, r: Path("/sys") / f"mergeline-{os.getpid()}"),
    Case("merge", "--out is the registry's copy of a model, --overwrite", "exit 2, one line, intact",
         _merge_over_registry),
    Case("reproduce", "disk full while writing the rebuild", "exit 1, one line, no output, no temp left", _disk_full),
    _edited("recorded lambda = 1e308", "lambda", lambda r: (r["merge"]["config"]["parameters"].update(
        {"lambda": 1e308}), r)[1]),
    _edited("recorded base_model is /dev/zero", "/dev/zero", _config(base_model="/dev/zero")),
    _edited("recorded merge_method is unknown", "merge_method", _config(merge_method="rm -rf")),
]

REPRESENTATIVE = {
    "--out is the registry's copy of a model, --overwrite", "lineage.json is not JSON",
    "--tracking-uri: sqlite file that is a text file", "--tracking-uri: unknown scheme", "--root does not exist",
    "--out is a folder of the user's files", "--out is the registry's copy of the model, --overwrite",
    "--out is a previous rebuild, --overwrite", "recorded lambda = 1e308", "--out is inside an input task vector",
}


@pytest.mark.parametrize("case", params(CASES, REPRESENTATIVE))
def test_case(case: Case, tmp_path: Path) -> None:
    assert case.check(tmp_path) == case.expected
