"""Stage-level fine-tuning to a folder (dense and TaLoS) and task-vector extraction."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeline.errors import MergelineError
from mergeline.finetune.checkpoint import (
    MASK_FILE,
    TalosConfig,
    extract_task_vector,
    finetune_checkpoint,
    load_causal_lm,
)
from mergeline.finetune.full import FinetuneConfig
from mergeline.finetune.weights import TASK_VECTOR_FILE, load_tensors, weight_files
from mergeline.io.hashing import sha256_file, sha256_path
from tests.lm_fixtures import build_tiny_llama, write_tiny_tasks

CFG = FinetuneConfig(steps=2, batch_size=4, lr=1e-2, max_length=32, weight_decay=0.1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    base = build_tiny_llama(root / "base")
    tasks = write_tiny_tasks(root / "tasks", n=6, tasks=("alpha",))
    return root, base, tasks["alpha"]


def test_talos_checkpoint_trains_only_the_saved_mask(setup):
    root, base, task = setup
    talos = TalosConfig(keep=0.2, rounds=2, calib_examples=3)
    lines = []
    meta = finetune_checkpoint(base, task / "train.jsonl", root / "ft-talos", CFG, talos, task / "validation.jsonl", progress=lines.append)
    out = root / "ft-talos"
    assert meta["mask_density"] == pytest.approx(0.2, abs=1e-3) and meta["calib_records"] == 3
    assert len(meta["losses"]) == 2 and meta["talos_seconds"] > 0
    assert any("TaLoS round 2/2" in line for line in lines) and any("fine-tune step 2/2" in line for line in lines)
    mask = load_tensors(out / MASK_FILE)
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)
    for name in before:
        if name in mask:
            m = mask[name]
            assert torch.equal(after[name][~m], before[name][~m]), name
        else:
            assert torch.equal(after[name], before[name]), name  # embeddings, final norm: frozen
    assert any(not torch.equal(after[n], before[n]) for n in mask)
    stored = json.loads((out / "finetune.json").read_text())
    assert stored["losses"] == meta["losses"] and "seconds" not in stored
    model, _ = load_causal_lm(out)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_dense_checkpoint_is_reproducible_byte_for_byte(setup):
    root, base, task = setup
    finetune_checkpoint(base, task / "train.jsonl", root / "ft-a", CFG)
    finetune_checkpoint(base, task / "train.jsonl", root / "ft-b", CFG)
    assert sha256_path(root / "ft-a") == sha256_path(root / "ft-b")
    assert not (root / "ft-a" / MASK_FILE).exists()


def test_bad_inputs_fail_before_any_work(setup, tmp_path):
    root, base, task = setup
    with pytest.raises(MergelineError, match="not found"):
        finetune_checkpoint(base, tmp_path / "missing.jsonl", tmp_path / "out", CFG)
    with pytest.raises(MergelineError, match="not a model folder"):
        finetune_checkpoint(tmp_path, task / "train.jsonl", tmp_path / "out", CFG)
    assert not (tmp_path / "out").exists()


def test_task_vector_round_trip(setup):
    root, base, task = setup
    ft = root / "ft-vec"
    finetune_checkpoint(base, task / "train.jsonl", ft, CFG)
    info = extract_task_vector(base, ft, root / "vec")
    stored = json.loads((root / "vec" / "task_vector.json").read_text())
    assert stored == info and info["kind"] == "task_vector"
    assert info["sha256"] == sha256_file(root / "vec" / TASK_VECTOR_FILE)
    assert info["base_sha256"] == sha256_path(base) and info["finetuned_sha256"] == sha256_path(ft)
    tau, b, f = load_file(root / "vec" / TASK_VECTOR_FILE), load_file(base / "model.safetensors"), load_file(ft / "model.safetensors")
    assert set(tau) == set(b) and all(t.dtype == torch.float32 for t in tau.values())
    for name in b:
        assert torch.allclose(b[name] + tau[name], f[name], atol=1e-6), name
    # A vector folder is itself a weights path.
    assert set(weight_files(root / "vec")) == set(tau)


def test_task_vector_shape_mismatch_names_the_tensor(tmp_path):
    save_file({"w": torch.zeros(2, 3), "steps": torch.zeros(1, dtype=torch.int64)}, tmp_path / "base.safetensors")
    save_file({"w": torch.zeros(3, 2), "steps": torch.ones(1, dtype=torch.int64)}, tmp_path / "ft.safetensors")
    with pytest.raises(MergelineError, match=r"tensor w: shape \(3, 2\)"):
        extract_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", tmp_path / "vec")
    save_file({"w": torch.zeros(2, 3), "extra": torch.zeros(1)}, tmp_path / "ft2.safetensors")
    with pytest.raises(MergelineError, match="tensor extra: in .*ft2.safetensors but not in"):
        extract_task_vector(tmp_path / "base.safetensors", tmp_path / "ft2.safetensors", tmp_path / "vec")
    assert not (tmp_path / "vec").exists()


def test_task_vector_skips_integer_tensors(tmp_path):
    save_file({"w": torch.ones(2), "steps": torch.zeros(1, dtype=torch.int64)}, tmp_path / "base.safetensors")
    save_file({"w": torch.full((2,), 3.0), "steps": torch.ones(1, dtype=torch.int64)}, tmp_path / "ft.safetensors")
    extract_task_vector(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", tmp_path / "vec")
    tau = load_file(tmp_path / "vec" / TASK_VECTOR_FILE)
    assert list(tau) == ["w"] and tau["w"].tolist() == [2.0, 2.0]
