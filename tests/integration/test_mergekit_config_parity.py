"""mergekit 0.1.5 config features give mergekit's output: slices (frankenmerge and per-slice merges,
layer count), gradients and filters inside slices, out_dtype, tokenizer_source (base, union, a model)
with the tokenizer block's pad_to_multiple_of, and chat_template. Configs are written as mergekit's
docs write them; models are tiny Llamas built in code; float32, compared bit for bit.

Union: mergekit numbers the tokens it adds in set and hash-map order (not reproducible from run to
run), mergeline in config and id order, so the embedding rows are compared token by token (bit-equal),
and the padding rows (a mean over rows in that order) to 1e-7.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from mergeline.merge.checks import load_merge_config
from mergeline.merge.engine import run_merge
from tests.merge_fixtures import finetune, load_tensors, save_word_tokenizer, tiny_base, with_vocabulary

mergekit_config = pytest.importorskip("mergekit.config")
mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_options = pytest.importorskip("mergekit.options")
transformers = pytest.importorskip("transformers")

WORDS = ["<unk>", "</s>"] + [f"w{i}" for i in range(94)]  # the tiny Llama's 96 ids
TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("config-parity")
    base = tiny_base("llama", root / "base", num_hidden_layers=4)
    save_word_tokenizer(base, WORDS, chat_template=TEMPLATE)
    out = {"base": base, "a": finetune(base, root / "a", seed=1), "b": finetune(base, root / "b", seed=2, scale=0.05)}
    # B: the base's tokens and three new ones; C: two base ids swapped (rows too) and two of B's new tokens.
    out["B"] = with_vocabulary(base, root / "B", WORDS + ["x0", "x1", "x2"], seed=3)
    swapped, order = list(WORDS), list(range(len(WORDS)))
    swapped[5], swapped[6], order[5], order[6] = WORDS[6], WORDS[5], 6, 5
    out["C"] = with_vocabulary(base, root / "C", swapped + ["x0", "x1"], seed=4, order=order)
    return {k: str(v) for k, v in out.items()}


def _both(text: str, tmp_path: Path) -> tuple[Path, Path]:
    """Run mergeline (from the YAML file, as the CLI does) and mergekit on the same config text."""
    (tmp_path / "merge.yaml").write_text(text)
    run_merge(load_merge_config(tmp_path / "merge.yaml"), tmp_path / "ours")
    options = mergekit_options.MergeOptions(lazy_unpickle=False, copy_tokenizer=True, write_model_card=False,
                                            quiet=True)
    logging.disable(logging.WARNING)
    try:
        mergekit_merge.run_merge(mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(text)),
                                 str(tmp_path / "mk"), options=options)
    finally:
        logging.disable(logging.NOTSET)
    return tmp_path / "ours", tmp_path / "mk"


def _ta(zoo: dict[str, str]) -> str:
    return f"merge_method: task_arithmetic\nbase_model: {zoo['base']}\ndtype: float32"


def _bc_models(zoo: dict[str, str]) -> str:
    """The models B and C (the vocabulary-changing fine-tunes) with their weights, as YAML."""
    return f"models:\n  - model: {zoo['B']}\n    parameters: {{weight: 0.7}}\n" \
           f"  - model: {zoo['C']}\n    parameters: {{weight: 0.4}}\n"


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _assert_bit_equal(ours: Path, theirs: Path) -> None:
    a, b = load_tensors(ours), load_tensors(theirs)
    assert a.keys() == b.keys() and a
    for name in b:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_frankenmerge_stacks_layers_as_mergekit(zoo: dict[str, str], tmp_path: Path) -> None:
    # One source per slice (linear of one model is the model itself: mergekit's passthrough pattern).
    text = f"""
merge_method: linear
dtype: float32
out_dtype: bfloat16
slices:
  - sources:
      - model: {zoo['a']}
        layer_range: [0, 3]
        parameters: {{weight: 1.0}}
  - sources:
      - model: {zoo['b']}
        layer_range: [1, 4]
        parameters: {{weight: 1.0}}
"""
    ours, theirs = _both(text, tmp_path)
    _assert_bit_equal(ours, theirs)
    out, a, b = load_tensors(ours), load_tensors(Path(zoo["a"])), load_tensors(Path(zoo["b"]))
    suffix = "self_attn.q_proj.weight"
    assert torch.equal(out[f"model.layers.2.{suffix}"], a[f"model.layers.2.{suffix}"].bfloat16())
    assert torch.equal(out[f"model.layers.3.{suffix}"], b[f"model.layers.1.{suffix}"].bfloat16())  # renamed
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"].bfloat16())  # first slice
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"].bfloat16())  # last slice
    assert _config(ours)["num_hidden_layers"] == _config(theirs)["num_hidden_layers"] == 6
    assert _config(ours)["dtype"] == _config(theirs)["dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ours))  # a loadable 6-layer model
    assert len(model.model.layers) == 6


def test_per_slice_merges_gradients_and_filters_as_mergekit(zoo: dict[str, str], tmp_path: Path) -> None:
    # Gradients run over each slice's own layers; a per-model filter matches the source's layer name
    # ("layers.2." is b's input layer 2 = output layer 3); slice parameters override the global ones;
    # the tensors after the blocks use the last slice's first two sources (b and the base); a and b
    # have no tokenizer files, so both tools take them to share the base's (re-indexing is the identity).
    text = _ta(zoo) + f"""
tokenizer_source: base
parameters:
  lambda: 0.9
slices:
  - sources:
      - model: {zoo['a']}
        layer_range: [0, 2]
        parameters:
          weight:
            - filter: self_attn
              value: [0.2, 0.8]
            - value: 0.5
      - model: {zoo['base']}
        layer_range: [0, 2]
  - sources:
      - model: {zoo['b']}
        layer_range: [1, 4]
        parameters:
          weight:
            - filter: layers.2.
              value: 0.3
            - value: [1.0, 0.0, 2.0]
      - model: {zoo['base']}
        layer_range: [1, 4]
      - model: {zoo['a']}
        layer_range: [0, 3]
    parameters:
      lambda: 0.7
      weight: 0.1
"""
    ours, theirs = _both(text, tmp_path)
    _assert_bit_equal(ours, theirs)
    assert _config(ours)["num_hidden_layers"] == _config(theirs)["num_hidden_layers"] == 5
    # The tokenizer (re-saved from the base's) keeps its chat template.
    assert transformers.AutoTokenizer.from_pretrained(str(ours)).chat_template == TEMPLATE


@pytest.mark.parametrize("source", ["base", "C"])
def test_tokenizer_source_base_or_model_as_mergekit(zoo: dict[str, str], tmp_path: Path, source: str) -> None:
    text = _ta(zoo) + f"""
tokenizer_source: {zoo['C'] if source == 'C' else 'base'}
""" + _bc_models(zoo)
    ours, theirs = _both(text, tmp_path)
    _assert_bit_equal(ours, theirs)
    vocab = transformers.AutoTokenizer.from_pretrained(str(ours)).get_vocab()
    assert vocab == transformers.AutoTokenizer.from_pretrained(str(theirs)).get_vocab()
    assert len(vocab) == _config(ours)["vocab_size"] == _config(theirs)["vocab_size"] == (96 if source == "base" else 98)


def test_union_tokenizer_padding_and_chat_template_as_mergekit(zoo: dict[str, str], tmp_path: Path) -> None:
    # x0: in B and C, not the base (mean of their rows); x2: in B only (B's row); w4/w5: permuted in C;
    # tokens: <new> added (zeros), x1 forced to B's row of w3, w7 forced to C's row of it, everywhere.
    text = _ta(zoo) + f"""
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    <new>:
      source: {{kind: zero}}
    x1:
      source: {{kind: model_token, model: {zoo['B']}, token: w3}}
      force: true
    w7:
      source: {zoo['C']}
      force: true
chat_template: auto
""" + _bc_models(zoo)
    ours, theirs = _both(text, tmp_path)
    tok_ours = transformers.AutoTokenizer.from_pretrained(str(ours))
    tok_mk = transformers.AutoTokenizer.from_pretrained(str(theirs))
    ids_ours, ids_mk = tok_ours.get_vocab(), tok_mk.get_vocab()
    assert ids_ours.keys() == ids_mk.keys() and len(ids_ours) == 100
    assert tok_ours.chat_template == tok_mk.chat_template == TEMPLATE
    assert _config(ours)["vocab_size"] == _config(theirs)["vocab_size"] == 104
    a, b = load_tensors(ours), load_tensors(theirs)
    assert a.keys() == b.keys()
    for name in b:
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert a[name].shape == b[name].shape == (104, 64)
            assert all(torch.equal(a[name][ids_ours[t]], b[name][ids_mk[t]]) for t in ids_ours), name
            # Padding rows: the mean of the real rows, summed in each tool's row order (last bits may differ).
            torch.testing.assert_close(a[name][100:], b[name][100:], rtol=0, atol=1e-7)
            assert not torch.equal(a[name][100], torch.zeros(64)) and not a[name][ids_ours["<new>"]].any()
            # forced rows are the same in every input, so the merged row is the source row itself
            assert torch.equal(a[name][ids_ours["x1"]], load_tensors(Path(zoo["B"]))[name][WORDS.index("w3")])
            assert torch.equal(a[name][ids_ours["w7"]], load_tensors(Path(zoo["C"]))[name][WORDS.index("w7")])
        else:
            assert torch.equal(a[name], b[name]), name


def test_passthrough_frankenmerge_as_mergekit(zoo: dict[str, str], tmp_path: Path) -> None:
    """mergekit's documented frankenmerge: passthrough over overlapping layer ranges of two models."""
    from mergeline.methods import method_names

    if "passthrough" not in method_names():
        pytest.skip("the passthrough method is not registered in this tree")
    text = f"""
slices:
  - sources:
      - model: {zoo['a']}
        layer_range: [0, 3]
  - sources:
      - model: {zoo['b']}
        layer_range: [1, 4]
        parameters: {{scale: [{{filter: o_proj, value: 0.0}}, {{value: 1.0}}]}}
merge_method: passthrough
dtype: float32
"""
    ours, theirs = _both(text, tmp_path)
    _assert_bit_equal(ours, theirs)
    assert not load_tensors(ours)["model.layers.4.self_attn.o_proj.weight"].any()
    assert _config(ours)["num_hidden_layers"] == _config(theirs)["num_hidden_layers"] == 6
