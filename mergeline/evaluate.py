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
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import yaml

from mergeline.assets import DTYPES, ensure_offline
from mergeline.data.records import load_records
from mergeline.errors import MergelineError

TEMPLATE = Path(__file__).parent / "eval_tasks" / "mergeline_mc.yaml"
SEED = 0


def load_causal_lm(model_dir: str | os.PathLike[str], device: str = "cpu", dtype: str = "float32"):
    """Load ``(model, tokenizer)`` from a Hugging Face folder, in eval mode on ``device``."""
    if dtype not in DTYPES:
        raise MergelineError(f"dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    ensure_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        raise MergelineError(f"{model_dir}: not a model folder (no config.json)")
    try:
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


def write_task_yamls(tasks: Mapping[str, Path], folder: Path, cache_dir: Path) -> dict[str, str]:
    """Write one lm-eval YAML per task file into ``folder``; return ``{name: lm-eval task name}``."""
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    names = {}
    for index, (name, path) in enumerate(tasks.items()):
        config = dict(template)
        config["task"] = _lm_eval_name(index, name)
        data_files = {"test": str(Path(path).resolve())}
        config["dataset_kwargs"] = {"data_files": data_files, "cache_dir": str(cache_dir)}
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        names[name] = config["task"]
    return names


@contextmanager
def _without_env_report():
    """Skip lm-eval's per-call environment report: it shells out to collect_env (pip, nvidia-smi, ...), ~1.4 s
    per call on a 2-core CPU, and the pipeline records its environment in MLflow once per run anyway."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        evaluator.add_env_info = original


@contextmanager
def _preserved_state(model):
    """Restore global RNGs and the model's training flag: lm-eval seeds globally and calls eval()."""
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
) -> dict[str, dict[str, float]]:
    """Score ``model`` on each task file; return ``{name: {"acc", "acc_norm", "n", "correct"}}``.

    ``tasks`` maps a result name (e.g. ``"news"``) to a JSONL file of the record contract; ``limit``
    scores only the first ``limit`` records of each file. Files are validated before lm-eval runs.
    ``correct`` is one ``"0"``/``"1"`` per scored record, in file order (acc of that record).
    """
    if not tasks:
        raise MergelineError("tasks: no task files to evaluate")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise MergelineError(f"limit: must be a positive integer or None, got {limit!r}")
    counts = {name: len(load_records(path)) for name, path in tasks.items()}
    ensure_offline()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = model.to(device)
    with tempfile.TemporaryDirectory(prefix="mergeline-eval-") as tmp, _preserved_state(model), _without_env_report():
        include, cache = Path(tmp) / "tasks", Path(tmp) / "datasets-cache"
        include.mkdir()
        names = write_task_yamls({k: Path(v) for k, v in tasks.items()}, include, cache)
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
        metrics = output["results"][lm_name]
        n = output.get("n-samples", {}).get(lm_name, {}).get("effective")
        results[name] = {
            "acc": float(metrics["acc,none"]),
            "acc_norm": float(metrics["acc_norm,none"]),
            "n": int(n if n is not None else min(counts[name], limit or counts[name])),
            "correct": _correct_bits(output.get("samples", {}).get(lm_name, [])),
        }
    return results


def _correct_bits(samples: list[dict]) -> str:
    """Per-example acc in file order as a compact ``"0110..."`` string (``mergeline.stats`` reads it)."""
    return "".join("1" if float(s["acc"]) > 0 else "0" for s in sorted(samples, key=lambda s: s["doc_id"]))
