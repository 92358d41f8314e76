"""``dvc.yaml`` is derived from the stage table: the committed file is what ``mergeline dvc-yaml`` prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergeline.cli import main
from mergeline.io.safe_read import load_yaml_file
from mergeline.params import load_params
from mergeline.pipeline.dvc_yaml import dvc_params, dvc_stages
from mergeline.pipeline.table import STAGE_NAMES, STAGES

REPO = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_is_what_the_command_prints(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert main(["dvc-yaml"]) == 0
    printed = capsys.readouterr().out
    assert printed == (REPO / "dvc.yaml").read_text(encoding="utf-8"), \
        "dvc.yaml differs from the stage table: run `mergeline dvc-yaml > dvc.yaml`"


def test_dvc_stages_run_the_table_and_track_every_section_a_call_reads() -> None:
    written = load_yaml_file(REPO / "params.yaml", "params file")
    stages = dvc_stages(load_params(REPO / "params.yaml"), written)
    assert list(stages) == list(STAGE_NAMES)
    for stage in STAGES:
        entry = stages[stage.name]
        assert entry["cmd"] == f"mergeline stage {stage.name}"
        tracked = entry.get("params", [])
        for section in stage.params:  # each read section is tracked, itself or through a parent
            assert any(section == t or section.startswith(f"{t}.") for t in tracked), (stage.name, section)
        for need in stage.needs:  # an upstream stage's outputs are deps
            upstream = stages[need].get("outs", []) + stages[need].get("metrics", [])
            paths = [next(iter(o)) if isinstance(o, dict) else o for o in upstream]
            assert set(paths) <= set(entry["deps"]), (stage.name, need)
    # a one-line experiment on λ re-runs merge, never a fine-tune
    assert "merge" in stages["merge"]["params"] and not {"merge", "merge.lambda"} & set(stages["fine-tune"]["params"])


def test_a_section_the_params_file_leaves_out_counts_as_its_parent() -> None:
    evaluate = next(s for s in STAGES if s.name == "evaluate")
    assert "registry.keep_merged" in evaluate.params
    assert "registry" in dvc_params(evaluate, {"registry": {"model_name": "m"}, "evaluate": {}})
    assert dvc_params(evaluate, {"evaluate": {}}) == ["evaluate"]


def test_bad_params_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"merge": {"lambda": 9}}))
    assert main(["dvc-yaml", "--params", str(bad)]) == 2
    err = capsys.readouterr()
    assert err.out == "" and len(err.err.strip().splitlines()) == 1 and "merge.lambda" in err.err
