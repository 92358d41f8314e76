"""The merge engine on CUDA: the CPU's result (to rounding; at magnitude ties and in random masks the
GPU's own sort and generator, reproducible on CUDA), GPU memory bounded by the prefetch window and a few
tensors, CLI path.

Marked ``gpu`` and skipped where CUDA is absent (CI has none); run on the lent GPU with
``python -m pytest -m gpu tests/integration/test_merge_cuda.py``. Models: a base and two ~1M-parameter
Llama-shaped fine-tunes from ``benchmarks/_synthetic_models.py``, sharded into several files.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from mergeline.merge.checks import load_merge_config
from mergeline.merge.engine import run_merge
from mergeline.methods._sparsify import keep_count, kth_largest
from tests.merge_fixtures import write_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[2]


def _synthetic():
    # benchmarks/ is a folder of scripts, not a package: load the builder by path.
    if "_synthetic_models" in sys.modules:
        return sys.modules["_synthetic_models"]
    spec = importlib.util.spec_from_file_location("_synthetic_models", REPO / "benchmarks" / "_synthetic_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _model_set(root: Path, dtype: str):
    # Shards of 1 MB: every model spans several files, as real checkpoints do.
    return _synthetic().build_model_set(root, 1e6, 2, dtype, shard_bytes=1 << 20, progress=lambda _: None)


def _config(models, method: str, path: Path) -> Path:
    entries = [{"model": str(ft), "parameters": {"weight": 0.5, **({"density": 0.4} if method == "ties" else {})}}
               for ft in models.finetunes]
    path.write_text(yaml.safe_dump({"merge_method": method, "base_model": str(models.base), "models": entries}))
    return path


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_cuda_merge_equals_cpu_merge(tmp_path: Path, method: str) -> None:
    models = _model_set(tmp_path / "models", "float32")
    config = load_merge_config(_config(models, method, tmp_path / f"{method}.yaml"))
    run_merge(config, tmp_path / "cpu", device="cpu")
    run_merge(config, tmp_path / "cuda", device="cuda")
    cpu, cuda = _tensors(tmp_path / "cpu"), _tensors(tmp_path / "cuda")
    base = _tensors(models.base)
    assert set(cpu) == set(cuda) == set(base)
    deltas = [{n: t - base[n] for n, t in _tensors(ft).items()} for ft in models.finetunes]
    for name, expected in cpu.items():
        assert cuda[name].device.type == "cpu" and cuda[name].dtype == torch.float32
        # Element-wise float32 arithmetic is the same on both devices and the TIES cut-off (k-th value)
        # is exact on both, so only rounding of the weighted sums differs, except where magnitudes tie
        # at a cut-off: there each device keeps the entries its own sort (mergekit's call) ranks first.
        off = (cuda[name] - expected).abs() > 1e-6
        if method == "ties":
            off &= ~_tied_at_cut_off([d[name] for d in deltas], density=0.4)
        assert not off.any(), (name, int(off.sum()))
    # The merge really moved the weights: a task-vector merge is not the base.
    assert any(not torch.equal(cuda[n], base[n]) for n in base)


def _tied_at_cut_off(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """Entries whose magnitude, in some model, equals that model's k-th largest of the tensor."""
    tied = torch.zeros(deltas[0].shape, dtype=torch.bool)
    for delta in deltas:
        magnitudes = delta.abs()
        tied |= magnitudes == kth_largest(magnitudes.reshape(-1), keep_count(density, magnitudes.numel()))
    return tied


def _many_small_tensors(root: Path) -> tuple[Path, list[Path], int]:
    """A base and two bf16 fine-tunes of 48 tensors of 256 x 256: a model is many times its largest
    tensor, so holding a model on the GPU would show in the peak."""
    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(256, 256, generator=g).to(torch.bfloat16)
            for i in range(48)}
    folders = [write_checkpoint(root / "base", base, shards=3)]
    for seed in (1, 2):
        g.manual_seed(seed)
        ft = {n: (t.float() + 0.01 * torch.randn(t.shape, generator=g)).to(torch.bfloat16) for n, t in base.items()}
        folders.append(write_checkpoint(root / f"ft{seed}", ft, shards=2))
    return folders[0], folders[1:], 256 * 256 * 4


def test_cuda_merge_keeps_bf16_and_bounds_gpu_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mergeline.merge import prefetch as merge_prefetch

    base, finetunes, largest_fp32 = _many_small_tensors(tmp_path / "models")
    monkeypatch.setattr(merge_prefetch, "PREFETCH_BYTES", 4 * largest_fp32)
    entries = [{"model": str(ft), "parameters": {"weight": 0.5, "density": 0.4}} for ft in finetunes]
    (tmp_path / "ties.yaml").write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(base),
                                                         "models": entries}))
    config = load_merge_config(tmp_path / "ties.yaml")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    run_merge(config, tmp_path / "out", device="cuda")
    peak = torch.cuda.max_memory_allocated() - start
    merged = _tensors(tmp_path / "out")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16} and len(merged) == 48
    # Streaming: the bytes fetched ahead (the window, plus one tensor of each input) and one tensor's
    # compute buffers (each input in float32, TIES's per-model terms and masks, votes, sums, and the
    # trim's sort: its keys and int64 order, in and out, 6 float32 tensors), never a model: one model
    # in float32 is 48 tensors.
    one_model_fp32 = 48 * largest_fp32
    assert 0 < peak <= merge_prefetch.PREFETCH_BYTES + 28 * largest_fp32 < one_model_fp32, (peak, largest_fp32)
    assert torch.cuda.memory_allocated() - start <= largest_fp32  # nothing left behind on the GPU


def test_cuda_ties_bf16_reproduces_on_cuda_and_keeps_k_entries(tmp_path: Path) -> None:
    """bf16 task vectors tie at the cut-off a lot: the GPU resolves them by mergekit's GPU sort
    (tests/integration/test_mergekit_parity.py checks the entries against mergekit --cuda), keeps exactly
    the CPU's k entries per tensor (same kept fractions), and gives the same bytes on every CUDA run."""
    models = _model_set(tmp_path / "models", "bfloat16")
    config = load_merge_config(_config(models, "ties", tmp_path / "ties.yaml"))
    cpu = run_merge(config, tmp_path / "cpu", device="cpu")
    gpu = run_merge(config, tmp_path / "cuda", device="cuda")
    again = run_merge(config, tmp_path / "cuda-again", device="cuda")
    assert gpu.weight_sha256 == again.weight_sha256
    assert gpu.report["method"]["kept_fraction"] == cpu.report["method"]["kept_fraction"]


RANDOM_MASKS = {"della": {"weight": 0.5, "density": 0.5, "epsilon": 0.2}, "della_linear": {"weight": 0.5, "density": 0.4},
                "dare_ties": {"weight": 0.5, "density": 0.4}, "dare_linear": {"weight": 0.5, "density": 0.6}}


@pytest.mark.parametrize("method", list(RANDOM_MASKS))
def test_cuda_random_masks_reproduce_on_cuda(tmp_path: Path, method: str) -> None:
    """DARE and DELLA draw their masks on the GPU's generator (as mergekit --cuda): every CUDA run gives
    the same bytes, and the merge moves the weights as much as the CPU's draws do."""
    models = _model_set(tmp_path / "models", "float32")
    doc = {"merge_method": method, "base_model": str(models.base),
           "models": [{"model": str(ft), "parameters": RANDOM_MASKS[method]} for ft in models.finetunes]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    config = load_merge_config(tmp_path / "m.yaml")
    first = run_merge(config, tmp_path / "cuda", device="cuda")
    assert run_merge(config, tmp_path / "cuda-again", device="cuda").weight_sha256 == first.weight_sha256
    run_merge(config, tmp_path / "cpu", device="cpu")
    base, cuda, cpu = _tensors(models.base), _tensors(tmp_path / "cuda"), _tensors(tmp_path / "cpu")
    moved = {n: (float((cuda[n] - base[n]).abs().sum()), float((cpu[n] - base[n]).abs().sum())) for n in base
             if base[n].numel() > 10_000}
    assert moved and all(g > 0 for g, _ in moved.values())
    assert all(abs(g - c) <= 0.05 * c for g, c in moved.values()), moved


def test_cuda_mask_draws_keep_the_density() -> None:
    from mergeline.methods._sparsify import bernoulli_mask
    from mergeline.methods.della import magprune_mask

    device = torch.device("cuda")
    delta = torch.randn(512, 2048, device=device)
    mask = bernoulli_mask(delta.shape, 0.3, seed=7, device=device)
    assert mask.device.type == "cuda" and abs(float(mask.float().mean()) - 0.3) < 0.01
    assert torch.equal(mask, bernoulli_mask(delta.shape, 0.3, seed=7, device=device))
    assert not torch.equal(mask, bernoulli_mask(delta.shape, 0.3, seed=8, device=device))
    kept = magprune_mask(delta, 0.5, 0.2, seed=7)
    assert kept.device.type == "cuda" and torch.equal(kept, magprune_mask(delta, 0.5, 0.2, seed=7))
    # MAGPRUNE: the smaller half of each row by magnitude is kept near d − ε/2, the larger near d + ε/2.
    small = delta.abs() <= delta.abs().median(dim=1, keepdim=True).values
    assert abs(float(kept[small].mean()) - 0.4) < 0.01 and abs(float(kept[~small].mean()) - 0.6) < 0.01


def test_cli_merge_on_cuda(tmp_path: Path) -> None:
    models = _model_set(tmp_path / "models", "bfloat16")
    config = _config(models, "task_arithmetic", tmp_path / "ta.yaml")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mergeline.cli", "merge", str(config), "--out", str(tmp_path / "out"),
         "--device", "cuda"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "config.json").is_file()
    assert set(_tensors(tmp_path / "out")) == set(_tensors(models.base))


# The methods added for mergekit parity, on the GPU against the CPU (each config in mergekit's style;
# the random masks of DARE and DELLA are drawn on the GPU's own generator: tested above).
MORE_METHODS = {
    "model_stock": ({}, {}),
    "sce": ({}, {"select_topk": 0.5}),
    "nuslerp": ({"weight": 0.5}, {}),
    "multislerp": ({"weight": 0.5}, {}),
    "karcher": ({}, {}),
    "nearswap": ({}, {"t": 0.001}),
    "arcee_fusion": ({}, {}),
    "passthrough": ({"scale": 0.5}, {}),
    "ram": ({}, {"epsilon": 1e-4}),
    "ramplus_tl": ({}, {"epsilon": 1e-4}),
    "breadcrumbs_ties": ({"weight": 0.5, "density": 0.5, "gamma": 0.05}, {}),
    "tsv": ({"weight": 1.0}, {"lambda": 0.8}),
    "iso_c": ({}, {}),
    "iso_cts": ({}, {"common_space_fraction": 0.5}),
    "consensus_ta": ({}, {"tall_mask_lambda": 0.4, "consensus_k": 1}),
    "consensus_ties": ({"density": 0.3}, {"consensus_k": 1}),
}


# Relative tolerances (of the tensor's largest entry) where a method amplifies reduction-order rounding.
CUDA_TOLERANCE = {
    # arccos of a dot product near 1 (nearly collinear inputs, e.g. norm weights all ≈ 1) turns a
    # one-ulp difference of the dot product into an angle of about sqrt(ulp) ≈ 3e-4; mergekit's
    # formula is kept for CPU bit-equality, so the GPU result differs by that much (H100: 4.3e-4).
    "karcher": 1e-3,
    # the common-space SVD of the summed task vectors rounds differently on cuSOLVER (H100: 1.5e-6).
    "iso_cts": 1e-5,
}


@pytest.mark.parametrize("method", list(MORE_METHODS))
def test_cuda_more_methods_equal_cpu(tmp_path: Path, method: str) -> None:
    models = _model_set(tmp_path / "models", "float32")
    per_model, params = MORE_METHODS[method]
    finetunes = models.finetunes[:1] if method in ("nearswap", "arcee_fusion", "passthrough") else models.finetunes
    doc = {"merge_method": method, "models": [{"model": str(ft), "parameters": per_model} for ft in finetunes],
           "parameters": params}
    if method not in ("karcher", "passthrough"):
        doc["base_model"] = str(models.base)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    config = load_merge_config(tmp_path / "m.yaml")
    run_merge(config, tmp_path / "cpu", device="cpu")
    run_merge(config, tmp_path / "cuda", device="cuda")
    cpu, cuda = _tensors(tmp_path / "cpu"), _tensors(tmp_path / "cuda")
    assert set(cpu) == set(cuda)
    # Element-wise arithmetic is the same on both devices and selections (SCE's variance top-k,
    # arcee_fusion's importance threshold) are made on the CPU; float32 magnitudes of these models do
    # not tie at the trims' cut-offs (ties follow the device's sort); sums, norms and SVDs
    # round differently (reduction order), by less than 1e-6 of the tensor's scale except where a
    # method amplifies that rounding (CUDA_TOLERANCE says where and why).
    tolerance = CUDA_TOLERANCE.get(method, 1e-6)
    report = {}
    for name, expected in cpu.items():
        scale = max(1.0, float(expected.abs().max()))
        off = (cuda[name] - expected).abs() > tolerance * scale
        report[name] = (int(off.sum()), expected.numel(), float((cuda[name] - expected).abs().max()))
    assert not any(count for count, _, _ in report.values()), {n: r for n, r in report.items() if r[0]}


def test_in_memory_merge_on_cuda_equals_file_merge(tmp_path: Path) -> None:
    from mergeline.merge.memory import merge_state_dicts

    models = _model_set(tmp_path / "models", "bfloat16")
    config = load_merge_config(_config(models, "ties", tmp_path / "ties.yaml"))
    run_merge(config, tmp_path / "cuda", device="cuda")
    files = _tensors(tmp_path / "cuda")
    memory = merge_state_dicts("ties", _tensors(models.base), [_tensors(ft) for ft in models.finetunes],
                               model_parameters=[{"weight": 0.5, "density": 0.4}] * len(models.finetunes),
                               device="cuda")
    assert set(memory) == set(files) and all(torch.equal(memory[n], files[n]) for n in files)
