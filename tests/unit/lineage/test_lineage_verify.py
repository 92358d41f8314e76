"""Artifact checks and DVC-cache lookup (the layout DVC 3 writes, built by hand here; the
integration tests use real DVC)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mergeline.lineage.build import describe, md5_file
from mergeline.lineage.locate import dvc_stores, find_in_dvc, materialize
from mergeline.lineage.verify import check_artifact


def _cache(store: Path, path: Path) -> Path:
    md5 = md5_file(path)
    entry = store / "files" / "md5" / md5[:2] / md5[2:]
    entry.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, entry)
    return entry


def _repo(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = store\n['remote \"store\"']\n    url = ../remote\n"
    )
    vec = tmp_path / "vectors" / "a"
    vec.mkdir(parents=True)
    (vec / "task_vector.safetensors").write_bytes(b"\x00" * 64)
    (vec / "task_vector.json").write_text('{"kind": "task_vector"}')
    (tmp_path / "train.jsonl").write_text('{"id": "0"}\n')
    return tmp_path


def test_dvc_stores_reads_cache_and_local_remote(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    stores = dict(dvc_stores(root / "vectors"))  # found from a subfolder too
    assert stores["DVC cache"] == root / ".dvc" / "cache"
    assert stores["DVC remote store"] == (root / "remote").resolve()


def test_intact_artifacts_pass_and_each_flipped_file_is_named(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    vec, data = describe("vectors/a", root=root), describe("train.jsonl", root=root)
    assert check_artifact(vec, root) == [] and check_artifact(data, root) == []
    target = root / "vectors" / "a" / "task_vector.safetensors"
    raw = bytearray(target.read_bytes())
    raw[10] ^= 0xFF
    target.write_bytes(bytes(raw))
    [problem] = check_artifact(vec, root)
    assert problem.status == "mismatch" and problem.file == "vectors/a/task_vector.safetensors"
    (root / "train.jsonl").write_text('{"id": "1"}\n')
    assert [p.file for p in check_artifact(data, root)] == ["train.jsonl"]


def test_missing_workspace_copy_is_found_in_dvc_cache_or_remote(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    vec, data = describe("vectors/a", root=root), describe("train.jsonl", root=root)
    for f in (root / "vectors" / "a").iterdir():
        _cache(root / ".dvc" / "cache", f)
    _cache(root / "remote", root / "train.jsonl")  # only on the remote
    shutil.rmtree(root / "vectors")
    (root / "train.jsonl").unlink()
    assert check_artifact(vec, root) == [] and check_artifact(data, root) == []
    assert find_in_dvc(data.dvc_md5, root)[0] == "DVC remote store"
    # materialize rebuilds the folder from the cache, byte for byte.
    rebuilt = materialize(vec, root, tmp_path / "rebuilt")
    assert describe(rebuilt).sha256 == vec.sha256
    # A corrupted cache entry is a mismatch, a removed one is missing.
    entry = find_in_dvc(vec.files["task_vector.json"].md5, root)[1]
    entry.write_text("{}")
    shutil.rmtree(root / "remote")
    problems = {p.file: p.status for p in check_artifact(vec, root) + check_artifact(data, root)}
    assert problems == {"vectors/a/task_vector.json": "mismatch", "train.jsonl": "missing"}


def test_dvc_dir_manifest_is_used_when_files_are_not_listed(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    folder = root / "vectors" / "a"
    manifest = []
    for f in sorted(folder.iterdir()):
        _cache(root / ".dvc" / "cache", f)
        manifest.append({"md5": md5_file(f), "relpath": f.name})
    manifest_file = tmp_path / "m.dir"
    manifest_file.write_text(json.dumps(manifest))
    dir_md5 = md5_file(manifest_file) + ".dir"
    entry = root / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    entry.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(manifest_file, entry)
    art = describe("vectors/a", root=root).model_copy(update={"files": None, "dvc_md5": dir_md5})
    shutil.rmtree(folder)
    assert check_artifact(art, root) == []
    assert describe(materialize(art, root, tmp_path / "out")).sha256 == art.sha256
