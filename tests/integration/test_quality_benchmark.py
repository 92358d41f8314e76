"""benchmarks/quality.py on a tiny random Llama (params/quality-tiny.yaml), with real Prefect, MLflow
(SQLite) and lm-eval, as CI's version of the quality benchmark (issue 6).

Two invocations share one project, as a user would resume: first addition only over two seeds (every
table cell then has a numeric spread), then seed 0 with LATA, negation, analogy and cost, which must
reuse the first run's cached pipeline stages. Numbers from a random model mean nothing: the tests
check the tables' rows, columns and ranges, the plots, MLflow's runs and the cache, not quality.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import session_dir
from tests.integration.pipeline_project import finished_runs, project_env
from tests.lm_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "quality.py"
CELL = re.compile(r"^[+-]?\d+\.\d{3} ± (\d+\.\d{3}|–)$")
METHOD_ROWS = ["TA", "TIES", "DARE-TIES", "STA", "MetaGPT", "TaLoS + TA"]


def _run(root: Path, params: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--params", str(params), "--out", str(root / "out"), *args],
                          cwd=root, env=project_env(root), capture_output=True, text=True, timeout=timeout)


def _sections(report: str) -> dict[str, str]:
    """Report section title (up to the first space after the number) -> body."""
    parts = re.split(r"^## ", report, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def _section(report: str, prefix: str) -> str:
    return next(body for title, body in _sections(report).items() if title.startswith(prefix))


def _table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return header, rows


def _mean(cell: str) -> float:
    return float(cell.split(" ± ")[0])


def _tiny_params() -> dict[str, object]:
    """params/quality-tiny.yaml pointed at the session's tiny Llama (built on first use)."""
    base = session_dir() / "quality-tiny-base"
    if not (base / "config.json").exists():
        build_tiny_llama(base, seed=0)
    params = yaml.safe_load((REPO / "params" / "quality-tiny.yaml").read_text())
    params["base_model"] = str(base)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("quality")
    params = _tiny_params()
    first = root / "quality.yaml"
    first.write_text(yaml.safe_dump(params, sort_keys=False))
    addition = _run(root, first, "--seeds", "0", "1", "--only")
    assert addition.returncode == 0, addition.stderr[-4000:]
    report_addition = (root / "out" / "quality.md").read_text()
    runs_after_addition = finished_runs(root, "fine-tune:news-full")
    params["quality"]["prune_merged"] = True  # the quality section is outside the stages' cache keys
    second = root / "quality-full.yaml"
    second.write_text(yaml.safe_dump(params, sort_keys=False))
    full = _run(root, second, "--seeds", "0")
    assert full.returncode == 0, full.stderr[-4000:]
    return {"root": root, "addition": report_addition, "full": (root / "out" / "quality.md").read_text(),
            "stdout": full.stdout, "runs_after_addition": runs_after_addition}


def test_addition_table_over_two_seeds_has_a_spread(project: dict[str, object]) -> None:
    header, rows = _table(_section(str(project["addition"]), "1."))
    assert header == ["method", "setting", "news acc", "sentiment acc", "mean acc", "norm. acc", "control acc",
                      "control drift", "seeds"]
    labels = [r["method"] for r in rows]
    assert labels[:3] == ["base (zero-shot)", "single-task fine-tuned (each on its task)",
                          "single-task TaLoS (each on its task)"]
    assert labels[3:] == METHOD_ROWS  # LATA was not asked for in this run
    for row in rows:
        assert row["seeds"] == "2"
        for column in ("news acc", "sentiment acc", "mean acc", "control acc"):
            assert CELL.match(row[column]) and "–" not in row[column], (row["method"], column, row[column])
            assert 0.0 <= _mean(row[column]) <= 1.0
    for row in rows[3:]:
        assert CELL.match(row["norm. acc"]) and _mean(row["norm. acc"]) >= 0.0
        assert row["setting"].startswith("λ=")
    assert "(negation not run)" in project["addition"] and "(analogy not run)" in project["addition"]


def test_full_run_reports_every_experiment(project: dict[str, object]) -> None:
    report = str(project["full"])
    assert report.strip() in str(project["stdout"])  # the same tables are printed
    header, rows = _table(_section(report, "1."))
    labels = [r["method"] for r in rows]
    assert labels[-7:] == [*METHOD_ROWS, "LATA"]
    assert any(label.startswith("θ_inst") for label in labels) and any(label.startswith("experts") for label in labels)
    assert all(r["seeds"] == "1" and r["mean acc"].endswith("± –") for r in rows)
    assert "built instruction vector" in report

    # 1b: the same models with Wilson intervals and McNemar tests against TA (per-example scores kept)
    tables = [block for block in _section(report, "1b.").split("\n\n") if block.startswith("|")]
    _, rows = _table(tables[0])
    assert [r["model"] for r in rows][-7:] == [*METHOD_ROWS, "LATA"]
    assert all(re.match(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$", r["news acc [95% CI]"]) for r in rows)
    assert next(r for r in rows if r["model"] == "TA")["Δ mean acc vs TA [95% CI], McNemar p"] == "(reference)"
    _, rows = _table(tables[1])
    assert [(r["task"], r["method"]) for r in rows] == [("news", "TA"), ("news", "STA"), ("news", "TaLoS + TA")]

    header, rows = _table(_section(report, "2."))
    assert [(r["task"], r["method"]) for r in rows] == [("news", "TA"), ("news", "STA"), ("news", "TaLoS + TA")]
    for row in rows:
        assert 0.0 <= _mean(row["target acc"]) <= 1.0 and 0.0 <= _mean(row["control acc"]) <= 1.0
        assert row["chance"] == "0.200"  # five topics
        assert row[header[-2]] in ("yes", "no") and row[header[-1]] in ("yes", "no")

    _, rows = _table(_section(report, "3."))
    assert len(rows) == 4 and rows[0]["model"] == "base θ0"
    assert all(0.0 <= _mean(r["sentiment acc on other tweets (D, test)"]) <= 1.0 for r in rows)

    _, rows = _table(_section(report, "4."))
    assert [r["method"] for r in rows] == [*METHOD_ROWS, "LATA"]
    for row in rows:
        assert _mean(row["merge wall s"]) > 0 and 0 < _mean(row["merge peak RSS GB"]) < 20
    sta = next(r for r in rows if r["method"] == "STA")
    assert _mean(sta["importance wall s"]) > 0 and _mean(sta["importance peak RSS GB"]) > 0
    assert "Target, addition" in _section(report, "Targets")


def test_plots_and_pruning(project: dict[str, object]) -> None:
    root = Path(project["root"])  # type: ignore[arg-type]
    plots = root / "out" / "plots"
    for name in ("lambda_sweep.png", "lata_layer_weights.png", "negation_news.png"):
        assert (plots / name).stat().st_size > 1000, name
    merged = root / "out" / "seed0" / "work" / "merged"
    assert not any(merged.iterdir()), "prune_merged left merged models behind"


def test_second_run_reused_cached_stages_and_mlflow_holds_the_runs(project: dict[str, object]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    root = Path(project["root"])  # type: ignore[arg-type]
    assert project["runs_after_addition"] == 2  # one per seed
    assert finished_runs(root, "fine-tune:news-full") == 2, "the second run fine-tuned again"
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mergeline-quality-tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    names = [r.info.run_name for r in runs if r.info.status == "FINISHED"]
    assert names.count("quality:seed0") == 2 and names.count("quality:seed1") == 1
    assert names.count("quality:summary") == 2
    stages = {r.data.tags.get("mergeline.stage") for r in runs}
    assert {"fine-tune", "extract-vector", "compute-importance", "merge", "evaluate"} <= stages
    summary = next(r for r in runs if r.info.run_name == "quality:summary")  # newest first
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"quality.md", "quality.json", "plots"} <= artifacts


def test_bad_input_fails_fast_with_one_line(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params" / "quality-tiny.yaml").read_text())
    params["quality"]["negation"]["methods"]["magic"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = _run(tmp_path, bad, "--seeds", "0", timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown negation method 'magic'" in lines[0], result.stderr
    result = _run(tmp_path, REPO / "params" / "quality-tiny.yaml", "--seeds", "0", "0", timeout=300)
    assert result.returncode == 2 and "duplicate seeds" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """``--direct`` (no Prefect, no MLflow: the GPU path) on seed 0 with negation, run twice, then
    ``--report-only`` logging the saved JSON to MLflow."""
    root = tmp_path_factory.mktemp("quality-direct")
    params = _tiny_params()
    path = root / "quality.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    args = ("--seeds", "0", "--only", "negation", "--direct", "--workers", "2", "--export", str(root / "export"))
    first = _run(root, path, *args)
    assert first.returncode == 0, first.stderr[-4000:] + first.stdout[-4000:]
    steps_first = json.loads((root / "out" / "direct-steps.json").read_text())
    second = _run(root, path, *args)
    assert second.returncode == 0, second.stderr[-4000:]
    steps_second = json.loads((root / "out" / "direct-steps.json").read_text())
    report = _run(root, path, "--seeds", "0", "--report-only")
    assert report.returncode == 0, report.stderr[-4000:]
    return {"root": root, "first": steps_first, "second": steps_second, "stdout": first.stdout,
            "report": (root / "out" / "quality.md").read_text()}


def test_direct_mode_writes_the_same_tables_without_prefect(direct: dict[str, object]) -> None:
    root = Path(direct["root"])  # type: ignore[arg-type]
    result = json.loads((root / "out" / "seed0" / "quality.json").read_text())
    assert result["backend"] == "direct" and "negation" in result and "lata" not in result
    assert json.loads((root / "export" / "seed0.json").read_text()) == result
    _, rows = _table(_section(str(direct["report"]), "1."))
    assert [r["method"] for r in rows][3:] == METHOD_ROWS
    _, rows = _table(_section(str(direct["report"]), "2."))
    assert [(r["task"], r["method"]) for r in rows] == [("news", "TA"), ("news", "STA"), ("news", "TaLoS + TA")]
    first = direct["first"]
    assert first["status"] == "done" and not first["failed"]  # type: ignore[index]
    kinds = {t["kind"] for t in first["timings"]}  # type: ignore[index]
    assert {"finetune", "extract_vector", "compute_importance", "evaluate", "merge_evaluate"} <= kinds
    assert direct["second"]["timings"] == []  # type: ignore[index]  # the re-run computed nothing
    assert not list((root / "out" / "seed0" / "work" / "merged").glob("*"))  # merges deleted once scored
    assert not (root / ".prefect").exists() or not any((root / ".prefect").rglob("*.db"))  # no Prefect server


def test_report_only_logs_the_saved_results_to_mlflow(direct: dict[str, object]) -> None:
    from mlflow.tracking import MlflowClient

    root = Path(direct["root"])  # type: ignore[arg-type]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mergeline-quality-tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"quality:seed0", "quality:summary"} <= set(runs)
    seed = runs["quality:seed0"]
    assert seed.data.tags["mergeline.backend"] == "direct"
    assert "addition.task_arithmetic.norm_acc.mean" in seed.data.metrics
    assert "negation.news.task_arithmetic.target" in seed.data.metrics
    artifacts = {a.path for a in client.list_artifacts(runs["quality:summary"].info.run_id)}
    assert {"quality.md", "quality.json", "plots"} <= artifacts
