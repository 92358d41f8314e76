"""Fan-out switches and sweep planning (flows/deployments.py, flows/fanout.py, flows/sweep.py).

The pool path itself runs for real in tests/integration/test_workers.py; these are the decisions
taken before any run is created: in-process or pool, bad configuration, what each sweep point runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergeline.errors import MergelineError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def params_file(tmp_path: Path) -> str:
    params = yaml.safe_load((REPO / "params" / "tiny.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_no_pool_runs_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.fanout import fanout_from_env
    from mergeline.params import load_params
    from tasks._stage import RunHandle

    monkeypatch.delenv("MERGELINE_WORK_POOL", raising=False)
    assert fanout_from_env(load_params(REPO / "params" / "tiny.yaml"), RunHandle("/tmp", "cpu")) is None


def test_pool_without_server_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pool import pool_from_env

    monkeypatch.setenv("MERGELINE_WORK_POOL", "gpu")
    with pytest.raises(MergelineError, match="MERGELINE_WORK_POOL=gpu needs PREFECT_API_URL"):
        pool_from_env()


def test_pool_with_server_url_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pool import pool_from_env

    monkeypatch.setenv("MERGELINE_WORK_POOL", " gpu ")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert pool_from_env() == "gpu"


def test_sweep_points_get_own_folders_and_shared_overrides_first(params_file: str) -> None:
    from flows.sweep import plan_points

    planned = plan_points(params_file, ["finetune.steps=3"], [["merge.lambda=0.3"], ["finetune.steps=5"]])
    first, second = planned
    assert first[0].startswith("work_dir=data/work/sweep-") and first[1].startswith("data_dir=data/work/sweep-")
    assert first[1] == f"{first[0].replace('work_dir=', 'data_dir=')}/tasks"
    assert first[2:] == ["finetune.steps=3", "merge.lambda=0.3"]
    assert second[2:] == ["finetune.steps=3", "finetune.steps=5"]  # the point's own value is applied last
    assert first[0] != second[0]
    # A point's folder depends on its overrides, not on its position in the list.
    assert plan_points(params_file, ["finetune.steps=3"], [["finetune.steps=5"], ["merge.lambda=0.3"]]) == [
        second, first]


def test_sweep_point_that_sets_its_own_folders_keeps_them(params_file: str) -> None:
    from flows.sweep import plan_points

    (planned,) = plan_points(params_file, None, [["work_dir=out/a", "data_dir=out/a-data"]])
    assert planned == ["work_dir=out/a", "data_dir=out/a-data"]


def test_bad_sweep_point_fails_before_any_run(params_file: str) -> None:
    from flows.sweep import plan_points

    with pytest.raises(MergelineError, match=r"sweep point 1 \['merge.lambda=7'\]: .*merge.lambda"):
        plan_points(params_file, None, [["merge.lambda=0.5"], ["merge.lambda=7"]])
    with pytest.raises(MergelineError, match="points: needs at least one override set"):
        plan_points(params_file, None, [])


def test_sweep_table_rows() -> None:
    from flows.sweep import sweep_table

    results = [
        {"point": ["merge.lambda=0.3"], "summary": {"champion": "ta_l0.3", "test_rows": {
            "ta_l0.3": {"acc/mean": 0.5, "norm_acc/mean": 0.75, "control_drift": -0.125}}}},
        {"point": [], "summary": {"stage": "evaluate", "records": {}}},
    ]
    lines = sweep_table(results).splitlines()
    assert lines[2] == "| 0 | merge.lambda=0.3 | ta_l0.3 | 0.500 | 0.750 | -0.125 |"
    assert lines[3] == "| 1 | (none) | – | – | – | – |"


def test_autocast_dtype_is_fp32_off_gpu() -> None:
    from mergeline.stages.train import autocast_dtype

    assert autocast_dtype("cpu") == "float32"


@pytest.mark.gpu
def test_autocast_dtype_bf16_on_a_bf16_gpu() -> None:
    import torch

    from mergeline.stages.train import autocast_dtype

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert autocast_dtype("cuda") == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")


def test_max_workers_from_env_and_the_pipeline_flow_s_task_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.pipeline import pipeline
    from mergeline.env import WORKERS_ENV, max_workers

    monkeypatch.setenv(WORKERS_ENV, "3")
    assert max_workers() == 3
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= max_workers() <= 4
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(MergelineError, match=f"{WORKERS_ENV}="):
            max_workers()
    # independent calls go to a thread pool (one process overlaps them), sized when the flow is defined
    assert isinstance(pipeline.task_runner, ThreadPoolTaskRunner)


def test_sweep_takes_the_locks_of_mergeline_run_before_anything_starts(
        params_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.sweep import plan_points, sweep
    from mergeline.params import load_params
    from mergeline.runlock import RunLock

    monkeypatch.delenv("MERGELINE_WORK_POOL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    project, points = tmp_path / "project", [["merge.lambda=0.3"], ["merge.lambda=0.6"]]
    # A run of this project: the sweep is refused naming it, before the MLflow store or any point starts.
    with RunLock(project, "mergeline run"), pytest.raises(
            MergelineError, match=r"project folder is in use by another mergeline run \(.*`mergeline run`"):
        sweep.fn(params_file, points, root=str(project))
    # A run of another project that writes into the work folder of the sweep's second point.
    work = project / load_params(params_file, plan_points(params_file, None, points)[1]).work_dir
    with RunLock(tmp_path / "other", "mergeline run", work), pytest.raises(
            MergelineError, match=rf"^{work / '.mergeline-work'}: this work folder is in use .*project {tmp_path / 'other'}"):
        sweep.fn(params_file, points, root=str(project))
    assert not (tmp_path / "mlflow.db").exists()
    assert not (project / "data" / "work" / "checkpoints").exists()
