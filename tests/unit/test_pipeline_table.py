"""The stage table and what is derived from it: records' JSON round trip, the walk, stage names, deps."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

from mergeline.commands import stage as stage_command
from mergeline.params import ExperimentParams, load_params
from mergeline.pipeline.records import (
    BaseRecord, Checkpoint, DataRecord, Evaluation, FileRef, Fit, Merged, TaskKind, Variant, decode, encode,
)
from mergeline.pipeline.table import STAGE_NAMES, STAGES, STEPS
from mergeline.pipeline.walker import InProcess, walk
from mergeline.stages.common import StageContext
from tests.lm_fixtures import build_tiny_llama

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "params" / "tiny.yaml"


def test_records_survive_plain_json_and_name_lambda_as_users_spell_it() -> None:
    given = Checkpoint(task="news", mode="full", path="models/news", sha256="aa", source="checkpoint",
                       given=FileRef(path="models/news", sha256="aa"), seconds=1.5, mlflow_run_id="r")
    merged = Merged(variant=Variant(name="ta_l0.5", method="task_arithmetic", lam=0.5, density=None,
                                    options={"k": 1}), config={"merge_method": "task_arithmetic"},
                    path="merged/ta_l0.5", weights={"model.safetensors": "bb"})
    data = DataRecord(tasks={"news": {"train": FileRef(path="d/news/train.jsonl", sha256="cc")}},
                      sources={"news": {}}, kinds={"news": TaskKind(output="choice", metric="acc")})
    for record in (given, merged, data):
        assert decode(type(record), encode(record)) == record
    assert encode(merged)["variant"]["lambda"] == 0.5
    # an input typed as a union (the evaluate step's model) comes back as the record it was
    model_type = typing.get_type_hints(STEPS["evaluate"].fn)["model"]
    assert decode(model_type, encode(merged)) == merged
    assert decode(model_type, encode(given)) == given
    assert isinstance(decode(model_type, encode(BaseRecord(id="b", path="base", sha256="dd"))), BaseRecord)
    with pytest.raises(ValueError, match="unexpected fields"):
        decode(Evaluation, {**encode(Evaluation(name="b", split="test", metrics={})), "extra": 1})


def test_every_step_reads_sections_the_params_schema_has() -> None:
    def known(model: type, dotted: str) -> bool:
        head, _, rest = dotted.partition(".")
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if head not in fields:
            return False
        inner = fields[head].annotation
        return not rest or (isinstance(inner, type) and known(inner, rest))

    for stage in STAGES:
        for section in stage.params:
            assert known(ExperimentParams, section), f"stage {stage.name}: params has no section {section!r}"


def test_stage_names_steps_and_code_deps_are_consistent() -> None:
    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES) and STAGE_NAMES[-1] == "register"
    assert len(STEPS) == sum(len(s.steps) for s in STAGES)  # step names are unique across stages
    for stage in STAGES:
        assert set(stage.needs) <= set(STAGE_NAMES[: STAGE_NAMES.index(stage.name)]), stage.name
        for path in stage.code:
            assert (REPO / path).exists(), f"stage {stage.name}: code dep {path} does not exist"
        for step in stage.steps:  # the output and every input are annotated: the pool decodes by them
            assert dataclasses.is_dataclass(step.output), step.name
            assert len(step.inputs) == len(inspect.signature(step.fn).parameters) - 1, step.name


def test_mergeline_stage_offers_the_table_s_stages_in_order() -> None:
    parser = argparse.ArgumentParser()
    stage_command.add_parser(parser.add_subparsers())
    choices = next(a for a in parser._subparsers._group_actions[0].choices["stage"]._actions  # type: ignore[union-attr]
                   if a.dest == "name").choices
    assert tuple(choices) == STAGE_NAMES


def test_in_process_walk_stops_at_the_named_stage(tmp_path: Path) -> None:
    base = build_tiny_llama(tmp_path / "tiny-base")
    params = load_params(TINY, [f"base_model={base}", "tasks=[news]"])
    ctx = StageContext(params, tmp_path, "cpu")
    executor = InProcess(ctx)
    exp = walk(ctx, executor, until="import-base")
    assert isinstance(exp.data, DataRecord) and isinstance(exp.base, BaseRecord)
    assert exp.checkpoints == {} and exp.scores is None
    assert [t.step for t in executor.timings] == ["prepare-data", "import-base"]
    assert (tmp_path / exp.data.split("news", "train").path).is_file() and (tmp_path / exp.base.path).is_dir()
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        walk(ctx, executor, until="nope")
    assert Fit("news", "talos").name == "news-talos" and Fit("news", "full").name == "news"
