"""Embedding rows re-indexed to the output vocabulary (mergekit's rules, on hand-made permutations),
and mergekit's dtype rule for the output (out_dtype, else dtype, else each tensor's own)."""

from __future__ import annotations

from pathlib import Path

import torch

from mergeline.merge.config import MergeConfig
from mergeline.merge.tokenizer import Vocabulary, permute_embeddings


def test_rows_follow_tokens_donor_base_mean_zero_and_padding() -> None:
    base, a, b = Path("/m/base"), Path("/m/a"), Path("/m/b")
    vocab = {"t0": 0, "t1": 1, "only_a": 2, "ab": 3, "none": 4}
    perms = {  # new id -> each model's own id (-1: the model lacks the token)
        base: {0: 0, 1: 1, 2: -1, 3: -1, 4: -1},
        a: {0: 1, 1: 0, 2: 2, 3: 3, 4: -1},  # t0 and t1 swapped in a
        b: {0: 0, 1: 1, 2: -1, 3: 2, 4: -1},
    }
    v = Vocabulary(tokenizer=None, vocab=vocab, size=8, permutations=perms)
    rows = {base: torch.tensor([[1.0], [2.0]]), a: torch.tensor([[20.0], [10.0], [30.0], [40.0]]),
            b: torch.tensor([[100.0], [200.0], [300.0]])}
    out = dict(zip((base, a, b), permute_embeddings(v, [(m, rows[m]) for m in (base, a, b)], base)))
    # own rows where the model has the token; only_a: a's row everywhere; ab: mean of a and b (the base
    # lacks it); none: zeros; ids 5..7: the mean of each model's 5 real rows.
    assert out[base][:5, 0].tolist() == [1.0, 2.0, 30.0, 170.0, 0.0]
    assert out[a][:5, 0].tolist() == [10.0, 20.0, 30.0, 40.0, 0.0]
    assert out[b][:5, 0].tolist() == [100.0, 200.0, 30.0, 300.0, 0.0]
    assert out[a][5:, 0].tolist() == [20.0] * 3 and out[base][7, 0].item() == torch.tensor(203.0 / 5).item()


def test_base_row_preferred_over_the_mean() -> None:
    base, a, b = Path("/m/base"), Path("/m/a"), Path("/m/b")
    perms = {base: {0: 0}, a: {0: 0}, b: {0: -1}}
    v = Vocabulary(tokenizer=None, vocab={"t": 0}, size=1, permutations=perms)
    rows = [(base, torch.tensor([[1.0]])), (a, torch.tensor([[3.0]])), (b, torch.tensor([[5.0]]))]
    assert permute_embeddings(v, rows, base)[2].item() == 1.0
    assert permute_embeddings(v, rows, None)[2].item() == 2.0  # no base among the inputs: the mean


def test_output_dtype_rule() -> None:
    def cfg(**kw: str) -> MergeConfig:
        return MergeConfig.model_validate({"merge_method": "linear", "models": [{"model": "a"}], **kw})

    assert cfg().output_dtype() is None and cfg().compute_dtype() == torch.float32
    assert cfg(dtype="bfloat16").output_dtype() == torch.bfloat16 == cfg(dtype="bfloat16").compute_dtype()
    assert cfg(dtype="float32", out_dtype="float16").output_dtype() == torch.float16


def test_base_tokenizer_beyond_vocab_size_must_be_bpe(tmp_path: Path) -> None:
    """mergekit strips the base's tokens at ids ≥ its vocab_size, which it can do for BPE only."""
    import json

    import pytest

    from mergeline.errors import MergelineError
    from mergeline.merge.tokenizer import build_vocabulary
    from tests.merge_fixtures import save_word_tokenizer

    save_word_tokenizer(tmp_path, ["<unk>", "</s>", "a", "b"])
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 3}))
    cfg = MergeConfig.model_validate({"merge_method": "linear", "models": [{"model": str(tmp_path)}],
                                      "tokenizer_source": "base"})
    with pytest.raises(MergelineError, match="tokenizer has ids beyond vocab_size and is WordLevel, not BPE"):
        build_vocabulary(cfg, [str(tmp_path)], None)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 4}))
    vocab = build_vocabulary(cfg, [str(tmp_path)], None)
    assert vocab is not None and vocab.size == 4 and vocab.permutations[tmp_path.resolve()] == {0: 0, 1: 1, 2: 2, 3: 3}


def test_reindexing_makes_a_merge_independent_of_token_order(tmp_path: Path) -> None:
    """A model whose tokenizer numbers two tokens the other way round (rows swapped with them) and has
    one token more merges to the same output under tokenizer_source: base, also for a method with a
    statistics pass (which must see the re-indexed rows too)."""
    from mergeline.merge.engine import run_merge
    from tests.merge_fixtures import load_tensors, save_word_tokenizer, write_checkpoint
    from tests.unit.merge.test_slices import _model

    words = ["<unk>", "</s>"] + [f"w{i}" for i in range(8)]
    base, a = _model(0), _model(1)
    vocab_rows = ("embed_tokens.weight", "lm_head.weight")
    swapped = {k: torch.cat([v[[0, 1, 2, 4, 3, 5, 6, 7, 8, 9]], torch.ones(1, 4)]) if k.endswith(vocab_rows) else v
               for k, v in a.items()}
    folders = {}
    for name, tensors, tokens in (("base", base, words), ("a", a, words),
                                  ("swapped", swapped, words[:3] + [words[4], words[3]] + words[5:] + ["x"])):
        folders[name] = save_word_tokenizer(write_checkpoint(tmp_path / name, tensors), tokens)
    for method, extra in (("metagpt", {}), ("task_arithmetic", {"parameters": {"weight": 0.5}})):
        outs = []
        for model in ("a", "swapped"):
            cfg = MergeConfig.model_validate({"merge_method": method, "base_model": str(folders["base"]),
                                              "tokenizer_source": "base", "models": [
                                                  {"model": str(folders[model]), **extra},
                                                  {"model": str(folders["base"]), **extra}]})
            run_merge(cfg, tmp_path / f"{method}-{model}")
            outs.append(load_tensors(tmp_path / f"{method}-{model}"))
        assert outs[0].keys() == outs[1].keys()
        for name in outs[0]:
            assert torch.equal(outs[0][name], outs[1][name]), (method, name)


def test_tokens_block_rows_by_hand() -> None:
    import pytest

    from mergeline.merge.config import TokenSource
    from mergeline.errors import MergelineError

    base, a = Path("/m/base"), Path("/m/a")
    perms = {base: {0: 0, 1: -1, 2: 1}, a: {0: 0, 1: 1, 2: 2}}
    tokens = {"t0": TokenSource.model_validate({"source": {"kind": "model_token", "model": "/m/a", "token_id": 2},
                                               "force": True}),
              "t1": TokenSource.model_validate({"source": {"kind": "zero"}})}
    v = Vocabulary(None, {"t0": 0, "t1": 1, "t2": 2}, 3, perms, tokens, {})
    rows = [(base, torch.tensor([[1.0], [2.0]])), (a, torch.tensor([[10.0], [20.0], [30.0]]))]
    out_base, out_a = permute_embeddings(v, rows, base)
    assert out_base[:, 0].tolist() == [30.0, 0.0, 2.0]  # t0 forced to a's row 2; t1 (base lacks it): zeros
    assert out_a[:, 0].tolist() == [30.0, 20.0, 30.0]  # forced everywhere; a has t1 itself
    elsewhere = {"t1": TokenSource.model_validate({"source": "/m/other"})}
    with pytest.raises(MergelineError, match=r"tokenizer.tokens\['t1'\]: takes its row from /m/other, which is not an input"):
        permute_embeddings(Vocabulary(None, v.vocab, 3, perms, elsewhere, {}), rows, base, "lm_head.weight")
