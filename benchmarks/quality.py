"""The quality experiments: params files run by the pipeline, one sweep over the seeds each, then the report.

    .venv/bin/python benchmarks/quality.py params/quality-cpu.yaml params/quality-analogy-cpu.yaml \
        --seeds 0 1 2 --out bench_out/quality

Each params file declares its experiment (addition in ``merge.methods``, negation in ``negation``, the
task analogy in ``analogy``: docs/quality.md). Per file, one ``mergeline-sweep`` flow run
(``flows/sweep.py``) whose points set every seed key to each seed, so each seed is one ``mergeline
run`` with its own MLflow parent run and lineage, in its own work folder (a re-run recomputes
nothing it already has). Then ``mergeline report`` over the experiment's runs writes the tables
(mean ± sd over the seeds, per method and per edit) and plots to ``<out>/<experiment>/`` and prints
them. Bad input (a params file, a seed): one line, exit 2, before anything runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout's mergeline/flows/tasks, also where the package is not installed
    sys.path.insert(1, str(ROOT))

from mergeline.env import configure_offline_defaults, configure_pipeline_env  # noqa: E402

SEED_KEYS = ("data.seed", "finetune.seed", "merge.seed")


def seed_points(seeds: list[int], keys: list[str]) -> list[list[str]]:
    """One override set per seed: every seed key set to the seed."""
    return [[f"{key}={seed}" for key in keys] for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("params", nargs="+", help="experiment params files (params/quality*.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds: one pipeline run each")
    parser.add_argument("--seed-keys", nargs="+", default=list(SEED_KEYS), help="params keys set to the seed")
    parser.add_argument("--out", type=Path, default=Path("bench_out/quality"), help="one report folder per experiment")
    args = parser.parse_args(argv)

    from mergeline.cli import main as mergeline
    from mergeline.errors import MergelineError
    from mergeline.params import load_params

    points = seed_points(args.seeds, args.seed_keys)
    try:
        if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
            raise MergelineError(f"--seeds: expected distinct non-negative seeds, got {args.seeds}")
        experiments = [load_params(path, points[0]).experiment for path in args.params]  # each file, validated
    except MergelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_offline_defaults()
    configure_pipeline_env(Path.cwd())  # before Prefect is imported: it reads its settings then
    from flows.sweep import sweep

    for path in args.params:
        sweep(params_file=path, points=points)
    status = 0
    for experiment in dict.fromkeys(experiments):
        status |= mergeline(["report", experiment, "--out", str(args.out / experiment), "--overwrite"])
    return status


if __name__ == "__main__":
    sys.exit(main())
