"""Names the MLflow registry accepts, checked when params are read (not minutes later, at register).

The rules are MLflow's own (``mlflow.utils.validation``, restated so that reading params does not
import MLflow): a registered model name is non-empty, without '/' or ':', and unchanged by path
normalisation; an alias is letters, digits, '_' or '-', at most 255 characters, not ``latest``
and not a version alias ``v<digits>``. mergeline also keeps '@' out of names and plain digits out of
aliases, since ``NAME@VERSION`` and ``NAME@ALIAS`` share one syntax.
"""

from __future__ import annotations

import posixpath
import re

_ALIAS = re.compile(r"[A-Za-z0-9_\-]{1,255}")
MAX_EXPERIMENT_NAME = 500  # MLflow's limit


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a registered model name, or None when it can."""
    if not name.strip():
        return "must not be empty"
    if any(c in name for c in "/:@"):
        return "must not contain '/', ':' or '@'"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(".."):
        return f"would resolve to the path {norm!r}"
    return None


def alias_problem(alias: str) -> str | None:
    """Why ``alias`` cannot be a model-version alias, or None when it can."""
    if not _ALIAS.fullmatch(alias):
        return "use 1 to 255 letters, digits, '_' or '-'"
    if alias.isdigit() or re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        return "is reserved (a version number, v<digits> or 'latest')"
    return None


def experiment_name_problem(name: str) -> str | None:
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_EXPERIMENT_NAME:
        return f"longer than MLflow's {MAX_EXPERIMENT_NAME} characters"
    return None
