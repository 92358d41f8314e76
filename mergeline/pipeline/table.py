"""The pipeline, declared once: every stage, its steps, what they read, write and fan out over.

Everything else is derived from :data:`STAGES`: the Prefect tasks and their cache keys
(``tasks/``), the choices of ``mergeline stage``, ``dvc.yaml`` (``mergeline dvc-yaml``), the
walk that runs the stages in order (:mod:`mergeline.pipeline.walker`) and the params each call
reports to MLflow. Nothing here imports Prefect, MLflow or DVC.
"""

from __future__ import annotations

from mergeline.pipeline.steps import Fanout, Out, Stage, Step

# Functions by ``module:name``: reading the table (``mergeline stage``'s choices) imports no stage code.
PLAN = "mergeline.pipeline.plan"
STAGE_FNS = "mergeline.stages"

STAGES: tuple[Stage, ...] = (
    Stage("prepare-data",
          steps=(Step("prepare-data", f"{STAGE_FNS}.prepare:prepare_data", ("data", "tasks", "control", "data_dir"),
                      Fanout.ONCE),),
          plans=(), needs=(), outs=(Out("{data_dir}"),), code=("mergeline/data", "mergeline/task_params.py"),
          plan=f"{PLAN}:prepare_data"),
    Stage("import-base",
          steps=(Step("import-base", f"{STAGE_FNS}.prepare:import_base", ("base_model", "work_dir"), Fanout.ONCE),),
          plans=(), needs=(), outs=(Out("{work_dir}/base"),), code=("mergeline/assets.py",),
          plan=f"{PLAN}:import_base"),
    Stage("fine-tune",
          steps=(Step("fine-tune", f"{STAGE_FNS}.train:finetune", ("finetune", "talos", "lora", "work_dir", "device"),
                      Fanout.PER_FIT, pool=True),
                 Step("import-task-model", f"{STAGE_FNS}.train:import_task_model", ("tasks", "work_dir"),
                      Fanout.PER_GIVEN)),
          plans=("tasks",), needs=("prepare-data", "import-base"), outs=(Out("{work_dir}/checkpoints"),),
          code=("mergeline/finetune", "mergeline/given_models.py"), plan=f"{PLAN}:fine_tune"),
    Stage("extract-vector",
          steps=(Step("extract-vector", f"{STAGE_FNS}.train:extract_vector", ("work_dir",), Fanout.PER_VECTOR),),
          plans=(), needs=("import-base", "fine-tune"), outs=(Out("{work_dir}/vectors"),),
          code=("mergeline/merge/lora.py", "mergeline/finetune/checkpoint.py"), plan=f"{PLAN}:extract_vector"),
    Stage("compute-importance",
          steps=(Step("compute-importance", f"{STAGE_FNS}.importance:compute_importance",
                      ("importance", "finetune.max_length", "finetune.batch_size", "work_dir", "device"),
                      Fanout.PER_TASK),
                 Step("compute-gram", f"{STAGE_FNS}.importance:compute_gram",
                      ("importance.calib_examples", "finetune.max_length", "finetune.batch_size", "work_dir", "device"),
                      Fanout.PER_TASK),
                 Step("vector-diagnostics", f"{STAGE_FNS}.importance:vector_diagnostics", ("work_dir",), Fanout.ONCE)),
          plans=("tasks", "merge.methods", "negation.tasks", "negation.methods"),
          needs=("prepare-data", "import-base", "fine-tune", "extract-vector"),
          outs=(Out("{work_dir}/importance"),), code=("mergeline/importance",), plan=f"{PLAN}:compute_importance"),
    Stage("merge",
          steps=(Step("merge", f"{STAGE_FNS}.merge:merge_variant", ("work_dir", "device"), Fanout.PER_VARIANT),),
          plans=("merge", "tasks", "negation.tasks", "negation.methods", "analogy"),
          needs=("import-base", "extract-vector", "compute-importance"),
          outs=(Out("{work_dir}/merged.json", persist=False),),
          code=("mergeline/methods", "mergeline/merge", "mergeline/pipeline/edits.py"),
          plan=f"{PLAN}:merge"),
    Stage("evaluate",
          steps=(Step("evaluate", f"{STAGE_FNS}.evaluate:evaluate",
                      ("evaluate.batch_size", "evaluate.max_length", "work_dir", "device"), Fanout.PER_SCORING,
                      pool=True),),
          plans=("evaluate", "tasks", "control", "negation.control_ratio", "registry.candidates",
                 "registry.keep_merged"),
          needs=("prepare-data", "import-base", "fine-tune", "merge"),
          outs=(Out("{work_dir}/eval/metrics.json", metric=True), Out("{work_dir}/eval/details.json", persist=False)),
          code=("mergeline/evaluate.py", "mergeline/eval_tasks", "mergeline/pipeline/edits.py"),
          plan=f"{PLAN}:evaluate"),
    Stage("register", steps=(), plans=("registry",), needs=("evaluate", "merge"), outs=(), code=(), plan=None),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
STEPS: dict[str, Step] = {step.name: step for s in STAGES for step in s.steps}


def stage(name: str) -> Stage:
    return STAGES[STAGE_NAMES.index(name)]


def stage_of(step: Step) -> Stage:
    """The stage a step belongs to."""
    return next(s for s in STAGES if step in s.steps)


def stages_until(name: str) -> tuple[Stage, ...]:
    """The stages up to and including ``name``, in order."""
    return STAGES[: STAGE_NAMES.index(name) + 1]


__all__ = ["STAGES", "STAGE_NAMES", "STEPS", "stage", "stage_of", "stages_until"]
