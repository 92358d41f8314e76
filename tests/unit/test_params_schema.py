"""Params: one schema per quantity, validated once per process, and stages report the values they use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mergeline.finetune import FinetuneConfig, TalosConfig
from mergeline.importance import StaImportanceConfig
from mergeline.params import (
    ExperimentParams, FinetuneParams, ImportanceParams, LoraSettings, TalosMask, TalosParams, load_params,
)
from mergeline.pipeline.records import BaseRecord, DataRecord, FileRef, Fit
from mergeline.pipeline.walker import InProcess, walk
from mergeline.stages.common import StageContext
from mergeline.stages.train import finetune
from tests.lm_fixtures import build_tiny_llama, write_tiny_tasks

TINY = Path(__file__).resolve().parents[2] / "params" / "tiny.yaml"


def test_library_configs_extend_the_params_schema_so_defaults_and_bounds_agree() -> None:
    for library, params in ((FinetuneConfig, FinetuneParams), (TalosConfig, TalosMask),
                            (StaImportanceConfig, ImportanceParams)):
        assert issubclass(library, params)
        for name, field in params.model_fields.items():
            assert library.model_fields[name].default == field.default, (library.__name__, name)
    assert issubclass(TalosParams, TalosMask) and FinetuneConfig().lr == FinetuneParams().lr == 1e-4
    assert LoraSettings.model_fields["target_modules"].metadata  # min_length=1 holds for library callers too
    for bad in ({"lr": 1.5}, {"max_length": 4}, {"weight_decay": float("inf")}):
        with pytest.raises(ValidationError):
            FinetuneConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TalosConfig(calib_examples=0)


def test_params_are_validated_once_per_process_and_frozen(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_params(TINY, ["tasks=[news]"])
    assert load_params(TINY, ["tasks=[news]"]) is first
    assert load_params(TINY, ["tasks=[sentiment]"]) is not first
    with pytest.raises(ValidationError):
        first.finetune.lr = 0.5  # type: ignore[misc]

    calls: list[int] = []
    original = ExperimentParams.model_validate

    def counting(*args: Any, **kwargs: Any) -> ExperimentParams:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ExperimentParams, "model_validate", counting)
    ctx = StageContext(first, tmp_path, "cpu")
    walk(ctx, InProcess(ctx), until="prepare-data")
    assert load_params(TINY, ["tasks=[news]"]) is first
    assert calls == [], "a stage validated the params again"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BaseRecord, DataRecord]:
    root = tmp_path_factory.mktemp("lr")
    base = build_tiny_llama(root / "base")
    tasks = write_tiny_tasks(root / "tasks", tasks=("alpha",))
    data = DataRecord(tasks={"alpha": {s: FileRef(path=str(tasks["alpha"] / f"{s}.jsonl"), sha256="")
                                       for s in ("train", "validation")}}, sources={}, kinds={})
    return root, BaseRecord(id="tiny", path=str(base), sha256=""), data


@pytest.mark.parametrize(("mode", "lr"), [("full", 1e-3), ("talos", 3e-3)])
def test_a_fine_tune_reports_and_records_the_learning_rate_its_optimizer_uses(
        tiny: tuple[Path, BaseRecord, DataRecord], mode: str, lr: float) -> None:
    root, base, data = tiny
    params = load_params(TINY, ["finetune.steps=1", "finetune.lr=0.001", "talos.lr=0.003", "talos.calib_examples=2"])
    reported: list[dict[str, Any]] = []
    ctx = StageContext(params, root / mode, "cpu", log_params=lambda values: reported.append(dict(values)))
    checkpoint = finetune(ctx, Fit("alpha", mode), base, data)
    assert [r["lr"] for r in reported] == [lr]
    assert checkpoint.params == reported[0]  # what lineage records is what was tracked
    assert checkpoint.meta["finetune"]["lr"] == lr  # and what the optimizer was given
    assert ("talos" in checkpoint.params) == (mode == "talos")
