"""A Jinja sandbox that also bounds what a template may cost: memory and time, not only attribute access.

Jinja's ``SandboxedEnvironment`` stops a template from reaching Python internals, but not from
exhausting memory (``{{ 'a' * 10**10 }}``, ``{{ 9**9**9 }}``, ``'x'|center(10**9)``) or time (nested
loops over ``range``). :class:`BoundedSandbox` refuses, with a :class:`SecurityError` whose message
says which bound, before the cost is paid where it can be predicted, and as soon as it is exceeded
elsewhere:

- ``*``, ``**``, ``%`` and ``+`` are checked on their operands before they run (a repeated string or
  list, a power, a ``%`` format with a huge width);
- a str method, filter or global that builds text or a list of a size it is given (``center``,
  ``ljust``, ``indent``, ``range``, ...) may not be given more than :data:`MAX_TEXT`; a format
  string (``%``, ``str.format``, the ``format`` filter) may not hold a width or precision of 7 digits
  or take one from an argument; ``replace`` and ``join`` are bounded by the most they could build;
  and no call's or filter's result may exceed :data:`MAX_TEXT`;
- every value joined with ``~`` is checked once joined: each operand is already bounded, so what is
  built before the check is bounded too;
- every ``{% for %}`` loop draws from one budget of :data:`MAX_STEPS` iterations per render;
- the rendered text may not exceed :data:`MAX_TEXT` characters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2 import Environment, nodes
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import generate_lorem_ipsum

MAX_TEXT = 1_000_000  # characters or items of any value a template builds, and of what it renders
MAX_STEPS = 1_000_000  # loop iterations per render (a prompt template loops over a few choices)
MAX_POWER_BITS = 100_000  # an integer power may have at most this many bits
# Filters resolve when a template compiles, so a template cannot shadow these (as it could a global).
_LOOP_FILTER = "mergeline_counted_loop"
_JOIN_FILTER = "mergeline_checked_join"
# A width or precision of 7+ digits in a %-format or a str.format spec, or a width taken from an argument.
_BIG_WIDTH = re.compile(r"%[-#0 +]*(\d{7,}|\*)|%[-#0 +]*\d*\.(\d{7,}|\*)|\{[^{}]*:[^{}]*(\d{7,}|\{)")
# Callables whose integer arguments are sizes of what they build (str methods; Jinja filters and globals).
_SIZE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZE_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
_FORMAT_FILTERS = frozenset({"format"})

_STEPS: ContextVar[list[int]] = ContextVar("mergeline_template_steps")


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_result(value: Any, what: str) -> Any:
    size = _sized(value)
    if size is not None and size > MAX_TEXT:
        raise SecurityError(f"{what} built a value of {size:,} characters or items; at most {MAX_TEXT:,}")
    return value


def _check_sizes(args: Iterable[Any], what: str, limit: int = MAX_TEXT) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > limit:
            raise SecurityError(f"{what} given {arg:,} as a size; at most {limit:,}")


def _check_format(text: Any, what: str) -> None:
    if isinstance(text, str) and _BIG_WIDTH.search(text):
        raise SecurityError(f"{what}: a format width or precision of 7 digits or more, or taken from an argument")


def _check_growth(method: str, text: str, args: tuple[Any, ...]) -> None:
    """``replace`` and ``join`` build up to a product of their operands' sizes: bound it before they run."""
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        worst = len(text) + (len(text) // max(len(args[0]), 1) + 1) * len(args[1])
    elif method == "join" and args and (count := _sized(args[0])) is not None:
        worst = len(text) * count
    else:
        return
    if worst > MAX_TEXT:
        raise SecurityError(f"str.{method}() could build {worst:,} characters; at most {MAX_TEXT:,}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            size = _sized(seq)
            if size is not None and isinstance(count, int) and size * count > MAX_TEXT:
                raise SecurityError(f"'*' would build {size * count:,} characters or items; at most {MAX_TEXT:,}")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if max(abs(left), 1).bit_length() * right > MAX_POWER_BITS:
            raise SecurityError(f"'**' would build an integer of over {MAX_POWER_BITS:,} bits")
    elif operator == "%":
        _check_format(left, "'%' formatting")
    elif operator == "+":
        left_size, right_size = _sized(left), _sized(right)
        if left_size is not None and right_size is not None and left_size + right_size > MAX_TEXT:
            raise SecurityError(f"'+' would build {left_size + right_size:,} characters or items; at most {MAX_TEXT:,}")


def _counted(values: Any) -> Iterator[Any]:
    """The loop's values, each counted against the render's budget of :data:`MAX_STEPS`."""
    steps = _STEPS.get(None) or [0]  # rendered outside render_bounded: a budget for this loop alone
    for value in values:
        steps[0] += 1
        if steps[0] > MAX_STEPS:
            raise SecurityError(f"loops ran over {MAX_STEPS:,} iterations")
        yield value


def _checked_join(value: str) -> str:
    return _check_result(value, "'~'")


def _bounded_range(*args: int) -> range:
    values = range(*args)
    if len(values) > MAX_TEXT:
        raise SecurityError(f"range() of {len(values):,} numbers; at most {MAX_TEXT:,}")
    return values


def _bounded_lipsum(*args: Any, **kwargs: Any) -> Any:
    _check_sizes([*args, *kwargs.values()], "lipsum()", 1000)
    return generate_lorem_ipsum(*args, **kwargs)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps ``jinja_pass_arg``: the context/environment argument is passed as before
    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not isinstance(a, (Context, Environment, EvalContext))]
        if name in _SIZE_FILTERS:
            _check_sizes([*values[1:], *kwargs.values()], f"filter {name}")
        if name in _FORMAT_FILTERS and values:
            _check_format(values[0], f"filter {name}")
        if name == "join" and values and (count := _sized(values[0])) is not None:
            separator = values[1] if len(values) > 1 else kwargs.get("d", "")
            if isinstance(separator, str) and len(separator) * count > MAX_TEXT:
                raise SecurityError(f"filter join could build {len(separator) * count:,} characters; at most {MAX_TEXT:,}")
        return _check_result(func(*args, **kwargs), f"filter {name}")

    return bounded


class _Filters(Mapping[str, Callable[..., Any]]):
    """The filters of the environment sandboxed (its later additions included), each bounded."""

    def __init__(self, filters: Mapping[str, Callable[..., Any]]) -> None:
        self._filters = filters

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name == _LOOP_FILTER:
            return _counted
        if name == _JOIN_FILTER:
            return _checked_join
        return _bounded_filter(name, self._filters[name])

    def __iter__(self) -> Iterator[str]:
        return iter([*self._filters, _LOOP_FILTER, _JOIN_FILTER])

    def __len__(self) -> int:
        return len(self._filters) + 2


class BoundedSandbox(SandboxedEnvironment):
    """A ``SandboxedEnvironment`` whose templates' memory and time are bounded (module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, filters: Mapping[str, Callable[..., Any]], **options: Any) -> None:
        super().__init__(**options)
        self.filters = _Filters(filters)  # type: ignore[assignment]
        self.globals.update(range=_bounded_range, lipsum=_bounded_lipsum)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        for concat in list(tree.find_all(nodes.Concat)):
            _replace(tree, concat, nodes.Filter(concat, _JOIN_FILTER, [], [], None, None, lineno=concat.lineno))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # str.format / format_map reach templates wrapped here (at attribute access), not as bound methods
        if isinstance(getattr(value, "__self__", None), str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format(value.__self__, f"str.{value.__name__}()")
        return super().wrap_str_format(value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        what = f"{getattr(__obj, '__name__', 'a call')}()"
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if __obj.__name__ in _SIZE_METHODS:
                _check_sizes([*args, *kwargs.values()], f"str.{what}")
            _check_growth(__obj.__name__, owner, args)
        return _check_result(super().call(__context, __obj, *args, **kwargs), what)


def _replace(tree: nodes.Node, old: nodes.Node, new: nodes.Node) -> None:
    """Put ``new`` where ``old`` is in ``tree`` (a field or an item of a list field)."""
    for parent in tree.find_all(nodes.Node):
        for field in parent.fields:
            value = getattr(parent, field, None)
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(item is old for item in value):
                setattr(parent, field, [new if item is old else item for item in value])
                return


def render_bounded(template: Any, *args: Any, **kwargs: Any) -> str:
    """``template.render(...)`` with a fresh loop budget, stopped once the text exceeds :data:`MAX_TEXT`."""
    token = _STEPS.set([0])
    try:
        parts, size = [], 0
        for part in template.generate(*args, **kwargs):
            size += len(part)
            if size > MAX_TEXT:
                raise SecurityError(f"the template rendered over {MAX_TEXT:,} characters")
            parts.append(part)
        return "".join(parts)
    finally:
        _STEPS.reset(token)
