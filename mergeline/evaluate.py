"""Evaluation adapter: score an in-memory causal LM on mergeline task files with lm-eval.

Each ``{name: jsonl_path}`` becomes one lm-eval ``multiple_choice`` task (template
``mergeline/eval_tasks/mergeline_mc.yaml``: ``dataset_path: json``, the prompt as context, every
choice scored as a continuation with an empty target delimiter, metrics acc and acc_norm). The task
YAMLs are written to a temporary ``include_path`` and read by ``TaskManager(include_defaults=False)``
(indexing lm-eval's 228 built-in task folders costs ~20 s). The model object is passed to
``HFLM(pretrained=model, tokenizer=tokenizer)``, so nothing is saved or re-loaded.

acc is ``mean_i [argmax_j log p(choice_ij | prompt_i) == label_i]``; acc_norm divides each
log-likelihood by the choice's length in characters first. Choices of one token (news, sentiment)
share one forward pass per prompt (lm-eval groups them by context).

No hub access: offline flags are forced, the datasets cache is a temporary folder deleted after the
call. Global RNG states and the model's train/eval mode are restored afterwards.

Errors (MergelineError): no tasks; a task file that is missing, empty or malformed (named, with its
line, before lm-eval starts); a model folder that does not load (``load_causal_lm``).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import yaml

from mergeline.assets import DTYPES, MODEL_LOAD_LOCK, ensure_offline
from mergeline.data.records import GENERATION_KEYS, load_records, record_keys
from mergeline.errors import MergelineError

TEMPLATE = Path(__file__).parent / "eval_tasks" / "mergeline_mc.yaml"
GENERATION_TEMPLATE = Path(__file__).parent / "eval_tasks" / "mergeline_gen.yaml"
# Corpus metrics lm-eval reports on a 0-100 scale: divided by 100, so every task's score is in [0, 1].
PERCENT_METRICS = ("bleu", "chrf")
SEED = 0


def load_causal_lm(model_dir: str | os.PathLike[str], device: str = "cpu", dtype: str = "float32"):
    """Load ``(model, tokenizer)`` from a Hugging Face folder, in eval mode on ``device``."""
    if dtype not in DTYPES:
        raise MergelineError(f"dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    ensure_offline()
    import torch

    if not (Path(model_dir) / "config.json").is_file():
        raise MergelineError(f"{model_dir}: not a model folder (no config.json)")
    try:
        with MODEL_LOAD_LOCK:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except Exception as exc:  # bad config, missing weights, an encoder with no LM head...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise MergelineError(f"{model_dir}: does not load as a causal LM: {type(exc).__name__}: {first}") from exc
    return model.to(device).eval(), _with_pad(tokenizer)


def _with_pad(tokenizer):
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; padded positions are masked
    return tokenizer


def _lm_eval_name(index: int, name: str) -> str:
    # lm-eval task names are also file stems and registry keys: keep them plain and unique
    return f"mergeline_{index}_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}"


def write_task_yamls(tasks: Mapping[str, Path], folder: Path, cache_dir: Path,
                     metrics: Mapping[str, str] | None = None) -> dict[str, str]:
    """Write one lm-eval YAML per task file into ``folder``; return ``{name: lm-eval task name}``.

    A file of generation records gets the generate_until template, scored by ``metrics[name]``
    (default exact_match); a multiple-choice file the multiple_choice one (acc, acc_norm).
    """
    templates = {path: yaml.safe_load(path.read_text(encoding="utf-8")) for path in (TEMPLATE, GENERATION_TEMPLATE)}
    names = {}
    for index, (name, path) in enumerate(tasks.items()):
        generation = is_generation_file(path)
        config = dict(templates[GENERATION_TEMPLATE if generation else TEMPLATE])
        metric = (metrics or {}).get(name, "acc")
        if generation and metric not in ("acc", "exact_match"):
            config["metric_list"] = [{"metric": metric}]
        config["task"] = _lm_eval_name(index, name)
        data_files = {"test": str(Path(path).resolve())}
        config["dataset_kwargs"] = {"data_files": data_files, "cache_dir": str(cache_dir)}
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        names[name] = config["task"]
    return names


def is_generation_file(path: str | os.PathLike[str]) -> bool:
    """Whether a task file holds generation records (its first record has a target, no choices).

    A file not (yet) there counts as multiple choice: :func:`evaluate_model` checks every file first.
    """

    return Path(path).is_file() and record_keys(load_records(path)[0]) == GENERATION_KEYS


def _score(metrics: Mapping[str, float], generation: bool) -> tuple[str, float]:
    """(metric, value in [0, 1]) of one task's lm-eval results: acc, or the generation metric."""
    if not generation:
        return "acc", float(metrics["acc,none"])
    name, value = next((k.split(",")[0], float(v)) for k, v in metrics.items()
                       if k.endswith(",none") and not k.endswith("_stderr,none") and isinstance(v, (int, float)))
    return name, value / 100 if name in PERCENT_METRICS else value


_ENV_REPORT_LOCK = threading.Lock()
_env_report_users: list[object] = []  # the original add_env_info while any evaluation runs


@contextmanager
def _without_env_report():
    """Skip lm-eval's per-call environment report: it shells out to collect_env (pip, nvidia-smi, ...), ~1.4 s
    per call on a 2-core CPU, and the pipeline records its environment in MLflow once per run anyway.

    Evaluations may run at once in threads: the first one in patches lm-eval, the last one out restores it.
    """
    with MODEL_LOAD_LOCK:
        import lm_eval.evaluator as evaluator
    with _ENV_REPORT_LOCK:
        if not _env_report_users:
            _env_report_users.append(evaluator.add_env_info)
            evaluator.add_env_info = lambda results: None
        _env_report_users.append(evaluator.add_env_info)
    try:
        yield
    finally:
        with _ENV_REPORT_LOCK:
            _env_report_users.pop()
            if len(_env_report_users) == 1:
                evaluator.add_env_info = _env_report_users.pop()


@contextmanager
def _preserved_state(model):
    """Restore global RNGs and the model's training flag: lm-eval seeds globally and calls eval().

    With evaluations running at once in threads, the RNGs end as the last one out left them; no
    stage draws from the global RNGs without seeding them first (fine-tunes, merges).
    """
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    training = model.training
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        model.train(training)


def evaluate_model(
    model,
    tokenizer,
    tasks: Mapping[str, str | os.PathLike[str]],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int = 256,
    metrics: Mapping[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``model`` on each task file; return ``{name: {"acc", "acc_norm", "n", "correct"}}``.

    ``tasks`` maps a result name (e.g. ``"news"``) to a JSONL file of the record contract; ``limit``
    scores only the first ``limit`` records of each file. Files are validated before lm-eval runs.
    ``correct`` is one ``"0"``/``"1"`` per scored record, in file order (acc of that record).
    For a file of generation records ``acc`` is the task's generation metric (``metrics[name]``,
    default exact_match; named under ``metric``; ``correct`` is its per-record value > 0) and there
    is no ``acc_norm``: the pipeline ranks every task by one score.
    """
    if not tasks:
        raise MergelineError("tasks: no task files to evaluate")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise MergelineError(f"limit: must be a positive integer or None, got {limit!r}")
    counts = {name: len(load_records(path)) for name, path in tasks.items()}
    ensure_offline()
    with MODEL_LOAD_LOCK:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

    model = model.to(device)
    with tempfile.TemporaryDirectory(prefix="mergeline-eval-") as tmp, _preserved_state(model), _without_env_report():
        include, cache = Path(tmp) / "tasks", Path(tmp) / "datasets-cache"
        include.mkdir()
        names = write_task_yamls({k: Path(v) for k, v in tasks.items()}, include, cache, metrics)
        lm = HFLM(
            pretrained=model,
            tokenizer=_with_pad(tokenizer),
            batch_size=batch_size,
            max_length=max_length,
            device=device,
        )
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=TaskManager(include_path=str(include), include_defaults=False),
            limit=limit,
            bootstrap_iters=0,
            log_samples=True,  # per-example correctness: the paired tests of benchmarks/ need it
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
        )
    results = {}
    for name, lm_name in names.items():
        scores = output["results"][lm_name]
        n = output.get("n-samples", {}).get(lm_name, {}).get("effective")
        generation = is_generation_file(tasks[name])
        metric, score = _score(scores, generation)
        results[name] = {"acc": score, "n": int(n if n is not None else min(counts[name], limit or counts[name])),
                         "correct": _correct_bits(output.get("samples", {}).get(lm_name, []), metric)}
        if generation:
            results[name]["metric"] = metric
        else:
            results[name]["acc_norm"] = float(scores["acc_norm,none"])
    return results


def _correct_bits(samples: list[dict], metric: str = "acc") -> str:
    """Per-example ``metric`` (> 0) in file order as a compact ``"0110..."`` string (``mergeline.stats`` reads it)."""
    def hit(sample: dict) -> bool:
        value = sample.get(metric, 0.0)
        return isinstance(value, (int, float)) and float(value) > 0  # corpus metrics (bleu) keep no per-doc score

    return "".join("1" if hit(s) else "0" for s in sorted(samples, key=lambda s: s["doc_id"]))
