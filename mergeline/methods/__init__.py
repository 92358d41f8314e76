"""Registry of merge methods: one module per method, registered in one place (``_MODULES``).

Adding a method: write ``mergeline/methods/<name>.py`` with a :class:`MergeMethod` subclass decorated
by :func:`register`, add the module name to ``_MODULES``, and add its test.
"""

from __future__ import annotations

import importlib

from mergeline.errors import MergelineError
from mergeline.methods.base import MergeMethod, MethodParameters, ModelParameters, TensorInputs

__all__ = ["MergeMethod", "MethodParameters", "ModelParameters", "TensorInputs", "register", "get_method", "method_names"]

_REGISTRY: dict[str, type[MergeMethod]] = {}

# The one list of method modules. Importing a module registers the methods it defines.
_MODULES: tuple[str, ...] = (
    "task_arithmetic",
    "linear",
    "slerp",
    "ties",
    "dare",
    "breadcrumbs",
    "metagpt",
    "sta",
    "lata",
    "talos",
    "della",
    "model_stock",
    "sce",
    "nuslerp",
    "multislerp",
    "karcher",
    "nearswap",
    "arcee_fusion",
    "passthrough",
    "ram",
)
_loaded = False


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"merge method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
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
