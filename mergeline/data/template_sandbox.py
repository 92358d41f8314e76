"""lm-eval's Jinja templates render in a sandbox unless the task is trusted.

lm-eval 0.4.13 renders every template of a task (``doc_to_text``, ``doc_to_target``, ``doc_to_choice``,
``gen_prefix``, ...) through one module-level ``jinja2.Environment``, ``lm_eval.utils.env``, which lets a
template reach Python internals (``{{ cycler.__init__.__globals__.os }}``). :func:`install` replaces it,
once per process, with a dispatcher: a template compiles in a ``SandboxedEnvironment`` (same options
and filters), where underscore attributes and unsafe callables raise and memory and time are bounded
(:mod:`mergeline.data.template_limits`), unless the caller is inside
:func:`trusted_templates`. The flag is a ContextVar, so a thread starts sandboxed and one task's trust
never leaks into another task rendered at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from jinja2 import Environment, Template
from jinja2.sandbox import SecurityError

from mergeline.data.template_limits import BoundedSandbox, render_bounded

_TRUSTED: ContextVar[bool] = ContextVar("mergeline_trusted_templates", default=False)


class TemplateRefused(SecurityError):
    """A sandboxed template tried something unsafe; ``source`` is the template's text."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(reason)
        self.source = source
        self.reason = reason


class _Refusing:
    """A sandboxed template whose refusal carries the template's text (to name the YAML key)."""

    def __init__(self, template: Template, source: str) -> None:
        self._template = template
        self._source = source

    def render(self, *args: Any, **kwargs: Any) -> str:
        try:
            return render_bounded(self._template, *args, **kwargs)
        except SecurityError as exc:
            raise TemplateRefused(self._source, (str(exc).splitlines() or [""])[0]) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._template, name)


class _Dispatch:
    """Stands in for ``lm_eval.utils.env``: trusted or sandboxed compilation, by the caller's context."""

    def __init__(self, trusted: Environment) -> None:
        self.trusted = trusted
        # lm-eval's filters (regex_replace), and any added later, each bounded
        self.sandboxed = BoundedSandbox(trusted.filters, loader=trusted.loader, undefined=trusted.undefined,
                                        keep_trailing_newline=trusted.keep_trailing_newline)

    def from_string(self, source: str, *args: Any, **kwargs: Any) -> Template | _Refusing:
        if _TRUSTED.get():
            return self.trusted.from_string(source, *args, **kwargs)
        return _Refusing(self.sandboxed.from_string(source, *args, **kwargs), source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trusted, name)


def install() -> None:
    """Put the dispatcher in place of lm-eval's template environment (idempotent)."""
    import lm_eval.utils

    if not isinstance(lm_eval.utils.env, _Dispatch):
        lm_eval.utils.env = _Dispatch(lm_eval.utils.env)


@contextmanager
def trusted_templates(trusted: bool) -> Iterator[None]:
    """Templates compiled inside render unsandboxed only when ``trusted``."""
    token = _TRUSTED.set(trusted)
    try:
        yield
    finally:
        _TRUSTED.reset(token)
