"""DELLA in the CPU engine's row blocks (``_della_rows``): the pieces that make it bit-equal to the
whole-tensor path (uniforms behind ``torch.bernoulli``, chunks shared by blocks, torch's threaded sum
order), and whole merges in row blocks against the whole-tensor path, with bounded buffers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mergeline.merge import loop as merge
from mergeline.merge import prefetch as merge_prefetch
from mergeline.merge import support as merge_support
from mergeline.merge.engine import run_merge
from mergeline.methods import _della_rows, della
from mergeline.methods._della_rows import UniformDraws, threaded_sum
from tests.merge_fixtures import load_tensors, write_checkpoint
from tests.unit.merge.test_merge_engine import _config, _finetuned, _model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bernoulli_keeps_where_its_uniform_is_below_p(dtype: torch.dtype) -> None:
    p = (torch.rand(5000, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1).to(dtype)
    drawn = p.clone().bernoulli_(p, generator=torch.Generator().manual_seed(7))
    u = torch.rand(5000, generator=torch.Generator().manual_seed(7), dtype=_della_rows.uniform_dtype(p))
    assert torch.equal(drawn.bool(), u < p.to(u.dtype))
    # a prefix of the stream is the stream of the prefix: blocks can take slices of a chunk's draw
    assert torch.equal(torch.rand(300, generator=torch.Generator().manual_seed(7), dtype=u.dtype), u[:300])


def test_blocks_take_slices_of_each_chunk_drawn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_della_rows, "DRAW_CHUNK", 100)
    drawn: list[int] = []
    seeds = lambda k: (drawn.append(k), 1000 + k)[1]  # noqa: E731
    draws = UniformDraws(seeds, 430, torch.float32)
    bounds = [(0, 37), (37, 150), (150, 199), (199, 200), (200, 430)]  # straddling chunks, one inside
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(lambda b: draws.take(*b), bounds))
    whole = torch.cat([torch.rand(min(100, 430 - 100 * k), generator=torch.Generator().manual_seed(1000 + k))
                       for k in range(5)])
    assert torch.equal(torch.cat(parts), whole)
    assert sorted(drawn) == [0, 1, 2, 3, 4]  # each chunk once
    assert draws._chunks == {} and draws._taken == {}  # and dropped once every entry was taken


@pytest.mark.parametrize("n", [1, 1000, 32767, 32768, 40001, 131072, 300_007])
def test_threaded_sum_is_torchs_sum_on_that_many_threads(n: int) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4, 8):
            torch.set_num_threads(threads)
            expected = x.sum()
            torch.set_num_threads(1)
            assert torch.equal(threaded_sum(x, threads), expected), threads
    finally:
        torch.set_num_threads(before)


def _models(tmp_path: Path, dtype: torch.dtype) -> dict[str, Path]:
    """Three fine-tunes of a model with one matrix and one vector above torch's parallel-sum grain
    (32768 entries), so the whole-tensor path sums them on several threads."""
    base = _model(0, vocab=24)
    g = torch.Generator().manual_seed(9)
    base["model.layers.0.mlp.down_proj.weight"] = torch.randn(400, 130, generator=g)
    base["model.layers.0.mlp.bias"] = torch.randn(40_000, generator=g)
    base = {k: v.to(dtype) if v.is_floating_point() else v for k, v in base.items()}
    paths = {"base": write_checkpoint(tmp_path / "base", base)}
    for i in range(3):
        paths[f"m{i}"] = write_checkpoint(tmp_path / f"m{i}", _finetuned(base, i + 1, scale=0.02))
    return paths


CASES = [
    ("della", {}, [{"weight": 0.5, "density": 0.4}, {"weight": 0.3, "density": 0.6, "epsilon": 0.2},
                   {"weight": 0.7, "density": 1.0}]),
    ("della", {"consensus_method": "count", "normalize": False, "seed": 4},
     [{"weight": 1.0, "density": 0.3, "epsilon": 0.1}] * 3),
    ("della_linear", {"rescale": False, "lambda": 0.8}, [{"weight": 0.4, "density": 0.5}] * 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("method", "params", "per_model"), CASES, ids=["della", "della-count", "linear-norescale"])
def test_row_blocks_equal_the_whole_tensor_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                 params: dict, per_model: list[dict], dtype: torch.dtype) -> None:
    models = _models(tmp_path, dtype)
    cfg = _config(method, models, [(f"m{i}", p) for i, p in enumerate(per_model)], parameters=params,
                  out_dtype="float32")
    for module in (della, _della_rows):  # masks drawn in many chunks, which the blocks straddle
        monkeypatch.setattr(module, "DRAW_CHUNK", 1000)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the whole-tensor path's L1 sums then split over 3 threads
    try:
        with monkeypatch.context() as whole:  # the engine's whole-tensor loop, on the CPU
            whole.setattr(merge_prefetch, "PREFETCH_DEVICES", ("cpu", "cuda"))
            run_merge(cfg, tmp_path / "whole")
        sizes: list[int] = []
        original = della._Della.merge_tensor

        def recording(self, inputs):
            sizes.append(inputs.tensors[0].numel())
            return original(self, inputs)

        monkeypatch.setattr(della._Della, "merge_tensor", recording)
        monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 2000)
        monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 9000)
        run_merge(cfg, tmp_path / "rows")
    finally:
        torch.set_num_threads(before)
    assert max(sizes) == 40_000  # the vector whole (ranked as one row), every matrix in blocks
    assert sorted(sizes)[-2] <= 2000 and len(sizes) > 40
    want, got = load_tensors(tmp_path / "whole"), load_tensors(tmp_path / "rows")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_buffers_stay_at_row_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory: the engine's buffers (inputs, method workspace) hold row blocks, not whole tensors; the
    one tensor-sized buffer is DELLA's |τ| for the L1 sums."""
    models = _models(tmp_path, torch.bfloat16)
    cfg = _config("della", models, [(f"m{i}", {"weight": 0.5, "density": 0.5}) for i in range(3)])
    largest = 0
    original = merge_support.Buffers.take

    def recording(self, slot, shape, dtype):
        nonlocal largest
        largest = max(largest, int(torch.Size(shape).numel()))
        return original(self, slot, shape, dtype)

    monkeypatch.setattr(merge_support.Buffers, "take", recording)
    monkeypatch.setattr(merge, "BLOCK_ELEMENTS", 4000)
    run_merge(cfg, tmp_path / "out")
    assert largest == 40_000  # the 1-D tensor, whole; the 52,000-entry matrix in blocks of <= 4000
