"""``data.sizes``: per-task size overrides reach the built splits (the other tasks keep the global sizes)."""

from __future__ import annotations

import json

from mergeline.params import ExperimentParams
from mergeline.stages.common import StageContext
from mergeline.stages.prepare import prepare_data


def test_per_task_sizes_override_the_global_ones(tmp_path):
    params = ExperimentParams.model_validate({
        "tasks": ["news", "sentiment"], "control": "control", "data_dir": "data",
        "merge": {"methods": {"task_arithmetic": {}}},
        "data": {"n_train": 6, "n_validation": 3, "n_test": 4,
                 "sizes": {"sentiment": {"train": 9, "test": 5}, "control": {"test": 2}}}})
    record = prepare_data(StageContext(params, tmp_path))

    def count(task: str, split: str) -> int:
        return sum(1 for _ in (tmp_path / record.split(task, split).path).open())

    assert [count("news", s) for s in ("train", "validation", "test")] == [6, 3, 4]
    assert [count("sentiment", s) for s in ("train", "validation", "test")] == [9, 3, 5]
    assert [count("control", s) for s in ("validation", "test")] == [3, 2] and "train" not in record.tasks["control"]
    assert json.loads((tmp_path / "data" / "sentiment" / "meta.json").read_text())["sizes"]["train"] == 9
