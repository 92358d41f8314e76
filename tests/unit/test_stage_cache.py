"""Stage cache keys: content of the inputs and only the params sections a stage reads."""

from __future__ import annotations

from tasks._stage import RunHandle, ScopedInputs

PARAMS = {"finetune": {"steps": 8, "lr": 1e-4}, "merge": {"lambda": None, "seed": 0}, "work_dir": "data/work"}


def key(policy: ScopedInputs, params: dict, record: dict | None = None, run: RunHandle | None = None) -> str:
    inputs = {"params": params, "base": record or {"sha256": "aa"}, "run": run or RunHandle("/a", "cpu", "r1")}
    return policy.compute_key(None, inputs, {})  # type: ignore[arg-type]


def test_key_ignores_params_outside_the_stage_scope() -> None:
    finetune = ScopedInputs(sections=("finetune", "work_dir"))
    changed_merge = {**PARAMS, "merge": {"lambda": 0.5, "seed": 0}}
    assert key(finetune, PARAMS) == key(finetune, changed_merge)


def test_key_follows_params_inside_the_scope_and_nested_sections() -> None:
    finetune = ScopedInputs(sections=("finetune", "work_dir"))
    assert key(finetune, PARAMS) != key(finetune, {**PARAMS, "finetune": {"steps": 9, "lr": 1e-4}})
    seed_only = ScopedInputs(sections=("merge.seed",))
    assert key(seed_only, PARAMS) == key(seed_only, {**PARAMS, "merge": {"lambda": 0.9, "seed": 0}})
    assert key(seed_only, PARAMS) != key(seed_only, {**PARAMS, "merge": {"lambda": None, "seed": 1}})


def test_key_follows_upstream_content_but_not_the_run_handle() -> None:
    policy = ScopedInputs(sections=("work_dir",))
    assert key(policy, PARAMS, {"sha256": "aa"}) != key(policy, PARAMS, {"sha256": "bb"})
    assert key(policy, PARAMS, run=RunHandle("/a", "cpu", "r1")) == key(policy, PARAMS, run=RunHandle("/a", "cpu", "r2"))
