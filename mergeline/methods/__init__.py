"""Registry of merge methods: one module per method in this package, found by listing the package.

Adding a method: write ``mergeline/methods/<name>.py`` with a :class:`MergeMethod` subclass decorated
by :func:`register` (and, to sweep it in the experiment pipeline, its ``pipeline`` entries), and add
its test. Every public module of this package (name not starting with ``_``, not ``base``) is imported
on first lookup, so no other file lists the methods.
"""

from __future__ import annotations

import importlib
import pkgutil

from mergeline.errors import MergelineError
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, PipelineEntry, TensorInputs

__all__ = ["MergeMethod", "MethodParameters", "ModelParameters", "PipelineEntry", "TensorInputs", "register",
           "get_method", "method_names", "pipeline_method", "pipeline_methods"]

_REGISTRY: dict[str, type[MergeMethod]] = {}
_loaded = False


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"merge method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_modules() -> list[str]:
    """The method modules of this package, in name order (helpers start with ``_``)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_") and info.name != "base")


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in method_modules():
            importlib.import_module(f"mergeline.methods.{module}")
        _loaded = True


def get_method(name: str) -> type[MergeMethod]:
    """Look a method up by its config name; unknown names are a :class:`MergelineError`."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MergelineError(
            f"unknown merge_method {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def method_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def pipeline_methods() -> dict[str, tuple[type[MergeMethod], PipelineEntry]]:
    """Every ``merge.methods`` key of the experiment pipeline → (method class, its entry), by key."""
    _load_all()
    found: dict[str, tuple[type[MergeMethod], PipelineEntry]] = {}
    for cls in _REGISTRY.values():
        for entry in cls.pipeline:
            key = entry.name or cls.name
            if key in found:
                raise RuntimeError(f"pipeline method {key!r} declared by {found[key][0].name!r} and {cls.name!r}")
            found[key] = (cls, entry)
    return dict(sorted(found.items()))


def pipeline_method(key: str) -> tuple[type[MergeMethod], PipelineEntry]:
    """The method class and pipeline entry of ``merge.methods.<key>`` (unknown: :class:`MergelineError`)."""
    known = pipeline_methods()
    try:
        return known[key]
    except KeyError:
        raise MergelineError(f"unknown method {key!r}; known: {', '.join(known)}") from None
