"""Stage cache keys: the step, the content of its inputs and only the params sections the step reads."""

from __future__ import annotations

from pathlib import Path

from mergeline.params import ExperimentParams, load_params
from mergeline.pipeline.records import BaseRecord, Fit
from mergeline.pipeline.table import STEPS
from tasks._stage import RunHandle, StepCache, step_cache

TINY = Path(__file__).resolve().parents[2] / "params" / "tiny.yaml"


def params(*overrides: str) -> ExperimentParams:
    return load_params(TINY, list(overrides))


def key(policy: StepCache, p: ExperimentParams, sha: str = "aa", run: RunHandle | None = None) -> str:
    base = BaseRecord(id="b", path="data/work/base", sha256=sha)
    inputs = {"params": p, "label": "news-full", "args": (Fit("news", "full"), base),
              "run": run or RunHandle("/a", "cpu", "r1")}
    return policy.compute_key(None, inputs, {})  # type: ignore[arg-type]


def test_key_ignores_params_outside_the_step_scope() -> None:
    finetune = step_cache(STEPS["fine-tune"])
    assert key(finetune, params()) == key(finetune, params("merge.lambda=0.5", "evaluate.batch_size=3"))


def test_key_follows_params_inside_the_scope_and_nested_sections() -> None:
    finetune = step_cache(STEPS["fine-tune"])
    assert key(finetune, params()) != key(finetune, params("finetune.steps=9"))
    importance = step_cache(STEPS["compute-importance"])  # reads finetune.max_length, not finetune.steps
    assert key(importance, params()) == key(importance, params("finetune.steps=9"))
    assert key(importance, params()) != key(importance, params("finetune.max_length=40"))


def test_key_follows_upstream_content_and_the_step_but_not_the_run_handle() -> None:
    policy = step_cache(STEPS["extract-vector"])
    assert key(policy, params(), "aa") != key(policy, params(), "bb")
    assert key(policy, params(), run=RunHandle("/a", "cpu", "r1")) == key(policy, params(), run=RunHandle("/b", "cpu", "r2"))
    # two steps reading the same sections with the same inputs never share an entry
    same_reads = StepCache(step_name="other", sections=policy.sections, source_sha256=policy.source_sha256)
    assert key(policy, params()) != key(same_reads, params())


def test_every_step_is_keyed_on_exactly_the_sections_it_declares() -> None:
    for step in STEPS.values():
        assert step_cache(step).sections == step.reads
