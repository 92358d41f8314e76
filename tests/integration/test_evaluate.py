"""evaluate_model with real lm-eval on a tiny Llama (real SmolLM2 tokenizer), checked against an
independent log-likelihood computation on the same documents."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from mergeline.data import build_task, load_records
from mergeline.errors import MergelineError
from mergeline.evaluate import TEMPLATE, evaluate_model, load_causal_lm, write_task_yamls
from tests.lm_fixtures import build_tiny_llama, write_tiny_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, tok = load_causal_lm(build_tiny_llama(root / "model"))
    tiny = write_tiny_tasks(root / "tiny", n=8)
    # real task files too: news has one-token choices (lm-eval's grouped path), control multi-token
    build_task("news", root / "news", {"train": 1, "validation": 8, "test": 1})
    build_task("control", root / "control", {"validation": 8, "test": 1})
    files = {
        "alpha": tiny["alpha"] / "validation.jsonl",
        "beta": tiny["beta"] / "test.jsonl",
        "news": root / "news" / "validation.jsonl",
        "control": root / "control" / "validation.jsonl",
    }
    return model, tok, files


def _choice_lls(model, tok, record) -> list[float]:
    """sum log p(choice tokens | prompt) per choice, computed here without lm-eval."""
    ctx = tok(record["prompt"])["input_ids"]
    lls = []
    for choice in record["choices"]:
        whole = tok(record["prompt"] + choice)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]])).logits[0]  # (T-1, V)
        # the token at position p+1 is predicted by the logits at p: keep the choice's positions only
        logp = logits[len(ctx) - 1 :].log_softmax(-1)
        targets = torch.tensor(whole[len(ctx) :])
        lls.append(logp.gather(1, targets[:, None]).sum().item())
    return lls


def _direct_scores(model, tok, records):
    """acc, acc_norm (log-likelihood per character of the choice) over ``records``."""
    hits = norm_hits = 0
    for r in records:
        lls = _choice_lls(model, tok, r)
        best = max(range(len(lls)), key=lls.__getitem__)
        best_norm = max(range(len(lls)), key=lambda j: lls[j] / len(r["choices"][j]))
        hits += best == r["label"]
        norm_hits += best_norm == r["label"]
    return hits / len(records), norm_hits / len(records)


def test_metrics_match_direct_log_likelihood(setup):
    model, tok, files = setup
    state = torch.get_rng_state()
    py_state = random.getstate()
    import lm_eval.evaluator

    env_report = lm_eval.evaluator.add_env_info
    model.train()
    results = evaluate_model(model, tok, files, batch_size=4)
    assert model.training, "the caller's train/eval mode must be restored"
    assert lm_eval.evaluator.add_env_info is env_report, "lm-eval's env report must be restored after the call"
    model.eval()
    assert set(results) == set(files)
    for name, path in files.items():
        records = load_records(path)
        metrics = results[name]
        assert set(metrics) == {"acc", "acc_norm", "n", "correct"} and metrics["n"] == len(records)
        bits = "".join("1" if max(range(len(r["choices"])), key=_choice_lls(model, tok, r).__getitem__) == r["label"]
                       else "0" for r in records)
        assert metrics["correct"] == bits, name  # per-example acc, in file order
        assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0
        acc, acc_norm = _direct_scores(model, tok, records)
        assert metrics["acc"] == pytest.approx(acc), name
        assert metrics["acc_norm"] == pytest.approx(acc_norm), name
    # lm-eval seeds the global RNGs and switches to eval(): the adapter restores both
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state


def test_limit_and_a_model_that_knows_the_answers(setup, tmp_path):
    model, tok, files = setup
    limited = evaluate_model(model, tok, {"news": files["news"]}, limit=3)
    assert limited["news"]["n"] == 3 and len(limited["news"]["correct"]) == 3
    # Rewrite each record so its answer is the one choice the model already ranks highest:
    # accuracy must then be exactly 1, and 0 when the label points to the worst choice.
    records = load_records(files["control"])
    best, worst = [], []
    for r in records:
        lls = _choice_lls(model, tok, r)
        best.append({**r, "label": max(range(4), key=lls.__getitem__)})
        worst.append({**r, "label": min(range(4), key=lls.__getitem__)})
    for name, rows in (("best", best), ("worst", worst)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    results = evaluate_model(model, tok, {"best": tmp_path / "best.jsonl", "worst": tmp_path / "worst.jsonl"})
    assert results["best"]["acc"] == 1.0 and results["worst"]["acc"] == 0.0
    assert set(results["best"]["correct"]) == {"1"} and set(results["worst"]["correct"]) == {"0"}


def test_bad_inputs_fail_before_lm_eval(setup, tmp_path):
    model, tok, files = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "choices": [" x", " y"], "label": 5}\n')
    with pytest.raises(MergelineError, match=rf"{bad}:1: 'label' 5 out of range"):
        evaluate_model(model, tok, {"alpha": files["alpha"], "bad": bad})
    with pytest.raises(MergelineError, match="no task files"):
        evaluate_model(model, tok, {})
    with pytest.raises(MergelineError, match="limit"):
        evaluate_model(model, tok, files, limit=0)
    with pytest.raises(MergelineError, match="not a model folder"):
        load_causal_lm(tmp_path)


def test_generated_yaml_follows_the_template(tmp_path):
    names = write_task_yamls({"news/validation": tmp_path / "v.jsonl"}, tmp_path, tmp_path / "cache")
    assert names == {"news/validation": "mergeline_0_news_validation"}
    config = yaml.safe_load((tmp_path / "mergeline_0_news_validation.yaml").read_text())
    template = yaml.safe_load(TEMPLATE.read_text())
    assert config["target_delimiter"] == "" and config["output_type"] == "multiple_choice"
    assert {k: v for k, v in config.items() if k in template} == template
    assert config["dataset_kwargs"]["data_files"] == {"test": str((tmp_path / "v.jsonl").resolve())}
