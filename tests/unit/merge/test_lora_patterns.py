"""rank_pattern / alpha_pattern keys (mergeline.merge.lora_patterns): PEFT's meaning, without running the
adapter's regular expressions: keys outside the module-name subset are refused naming the adapter and
field, and every accepted key matches exactly as ``re.match(rf"(.*\\.)?({key})$", name)`` does."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from mergeline.errors import MergelineError
from mergeline.merge.lora import LoraAdapter
from mergeline.merge.lora_patterns import MAX_KEY_CHARS, MAX_WILDCARD_KEYS, PatternError, PatternKey, PatternTable
from tests.lora_fixtures import write_adapter

KEY = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
ATOMS = ["a", "b", "1", "_", "-", ".", "\\.", "\\-", "[0-9]", "\\d"]
QUANTIFIERS = ["", "", "", "*", "+", "?"]
NAME_CHARS = ["a", "b", "1", "2", ".", ".", "_", "-", "\n", "٣"]  # ٣: a decimal digit that is not ASCII


def _peft(key: str, name: str) -> bool:
    """PEFT 0.21's test (peft.utils.other.get_pattern_key), run only on keys of the test's own making."""
    return re.match(rf"(.*\.)?({key})$", name) is not None


def _random_key(rng: random.Random) -> str:
    atoms = "".join(rng.choice(ATOMS) + rng.choice(QUANTIFIERS) for _ in range(rng.randint(1, 5)))
    return ("^" if rng.random() < 0.15 else "") + atoms + ("$" if rng.random() < 0.15 else "")


def test_accepted_keys_match_as_peft_matches() -> None:
    rng = random.Random(0)
    for _ in range(4000):
        key = _random_key(rng)
        compiled = PatternKey(key)
        for _ in range(8):
            name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(0, 9)))
            assert compiled.matches(name) == _peft(key, name), (key, name)
    real = "model.layers.10.self_attn.q_proj"
    for key, expected in [("q_proj", True), ("proj", False), ("self_attn.q_proj", True), ("0.self_attn.q_proj", False),
                          (r"layers\.10\.self_attn\.q_proj", True), ("^model.layers.1[0-9].self_attn.q_proj", True),
                          ("^layers.10.self_attn.q_proj", False), (r"layers.\d+.self_attn.*", True),
                          ("layers.10.self_attn.q_proj$", True), ("model-layers-10-self_attn-q_proj", False)]:
        assert PatternKey(key).matches(real) == expected == _peft(key, real), key


def test_first_matching_key_wins_as_in_peft() -> None:
    rng = random.Random(1)
    for _ in range(1500):
        keys = {_random_key(rng): i for i in range(rng.randint(1, 6))}
        table = PatternTable(keys, lambda key, value: value)
        for _ in range(8):
            name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(0, 9)))
            expected = next((v for k, v in keys.items() if _peft(k, name)), -1)
            assert table.lookup(name, -1) == expected, (keys, name)


def test_a_key_that_backtracks_in_re_is_matched_in_one_pass() -> None:
    """re needs ~n^10 steps for this key on a run of n 'a's (it never finishes for n = 200); one pass here."""
    key = "a*" * 10 + "b"
    assert not PatternKey(key).matches("a" * 200)
    assert PatternKey(key).matches("x." + "a" * 200 + "b")


@pytest.mark.parametrize("key", [
    "(a+)+$", "(q|v)_proj", "q_proj|v_proj", "(q_proj)*", "layers.{1,3}", "[a-z]+_proj", "a**", "a+?", "*proj",
    "(?=q)q_proj", "\\w+", "q_proj\\", "", "^", "$", "q proj", "a" * (MAX_KEY_CHARS + 1),
])
def test_keys_outside_module_name_patterns_are_refused(tmp_path: Path, key: str) -> None:
    tensors = {KEY.format(0, "A"): torch.ones(2, 3), KEY.format(0, "B"): torch.ones(4, 2)}
    for field, value in (("rank_pattern", 2), ("alpha_pattern", 4.0)):
        folder = write_adapter(tmp_path / field, tensors, **{field: {"q_proj": value, key: value}})
        with pytest.raises(MergelineError) as caught:
            LoraAdapter(folder)
        message = str(caught.value)
        assert str(folder) in message and f"field '{field}' key" in message and "\n" not in message, message
    with pytest.raises(PatternError):
        PatternKey(key)


def test_key_count_is_bounded(tmp_path: Path) -> None:
    tensors = {KEY.format(0, "A"): torch.ones(2, 3), KEY.format(0, "B"): torch.ones(4, 2)}
    wildcards = {f"layers.{i}.*": 2 for i in range(MAX_WILDCARD_KEYS + 1)}
    folder = write_adapter(tmp_path / "many", tensors, rank_pattern=wildcards)
    with pytest.raises(MergelineError, match=f"field 'rank_pattern' {MAX_WILDCARD_KEYS + 1} keys with"):
        LoraAdapter(folder)
    fixed = {f"model.layers.{i}.self_attn.q_proj": 2 for i in range(1000)}  # one per module: fine
    assert LoraAdapter(write_adapter(tmp_path / "fixed", tensors, rank_pattern=fixed)).modules
