"""PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup, in time linear in the module name.

PEFT (0.21, ``peft.utils.other.get_pattern_key``) takes the first key for which
``re.match(rf"(.*\\.)?({key})$", module)`` holds: the key, read as a regular expression, matches the
whole module name or the part after one of its dots. Handing an adapter's keys to ``re`` runs
whatever expression the adapter's author wrote, and a backtracking engine spends exponential time on
some (a 7-character key took 104 s on one module name). Adapters come from hubs, so the keys are
untrusted: a key must be a plain module-name pattern, which this module matches with the same
meaning and without backtracking.

A key is, in order: an optional ``^``; one or more atoms, each optionally followed by one of ``*``,
``+``, ``?``; an optional ``$``. An atom is a letter, digit, ``_`` or ``-``; ``.`` (any character
but a newline, as in ``re``, so ``layers.0`` also matches ``layers-0``); ``\\.`` or ``\\-`` (the
character itself); ``[0-9]``; ``\\d`` (a Unicode decimal digit, as in ``re``). This covers module
names (``model.layers.0.self_attn.q_proj``, ``re.escape`` of one), PEFT's documented example
``^model.decoder.layers.0.encoder_attn.k_proj``, and simple wildcards (``layers.1[0-9].mlp.*``).
Groups, alternation, classes other than digits, counted repeats and lookarounds are refused.

Matching is a bit-parallel simulation of the key's automaton (one bit per atom, a few integer
operations per character of the module name), so a key costs O(len(module name)) big-integer steps
whatever its shape; a key without ``*``/``+``/``?`` matches at one position only and goes through
``re`` as a plain sequence of single characters, which cannot backtrack. Key length and count are
capped (:data:`MAX_KEY_CHARS`, :data:`MAX_KEYS`, :data:`MAX_WILDCARD_KEYS`) so that the whole lookup
stays bounded by the size of the adapter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Generic, TypeVar

MAX_KEY_CHARS = 256  # a full module name of a large model is under 100
MAX_KEYS = 4096  # per field: one key per module of a 7B model with every linear layer targeted is 224
MAX_WILDCARD_KEYS = 16  # keys with * + or ?, which cost a pass over the module name each
_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ESCAPED = {"\\.": ".", "\\-": "-"}
_ANY, _DIGIT, _ASCII_DIGIT = "any", "digit", "ascii-digit"

V = TypeVar("V")


class PatternError(ValueError):
    """A key outside the accepted subset; the message says why (the caller names adapter and field)."""


@dataclass(frozen=True)
class _Atom:
    what: str  # one literal character, or _ANY / _DIGIT / _ASCII_DIGIT
    repeat: bool = False  # '*' (after rewriting x+ as x x*)
    optional: bool = False  # '?' or '*'

    def regex(self) -> str:
        return {_ANY: ".", _DIGIT: r"\d", _ASCII_DIGIT: "[0-9]"}.get(self.what) or re.escape(self.what)

    def accepts(self, char: str) -> bool:
        if self.what == _ANY:
            return char != "\n"
        if self.what == _DIGIT:
            return char.isdecimal()  # re's \d on str: Unicode category Nd, which is isdecimal()
        if self.what == _ASCII_DIGIT:
            return "0" <= char <= "9"
        return char == self.what


def _parse(key: str) -> tuple[bool, list[_Atom]]:
    """(anchored at the start, atoms) of ``key``; PatternError when it is outside the subset."""
    if not key:
        raise PatternError("an empty key")
    if len(key) > MAX_KEY_CHARS:
        raise PatternError(f"a key of {len(key)} characters (at most {MAX_KEY_CHARS})")
    anchored = key.startswith("^")
    body = key[1:] if anchored else key
    body = body.removesuffix("$")
    atoms: list[_Atom] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char in "*+?":
            raise PatternError(f"{char!r} at character {i + anchored} repeats nothing or repeats a repeat")
        if char in _LITERAL:
            what, size = char, 1
        elif char == ".":
            what, size = _ANY, 1
        elif body.startswith(("\\.", "\\-"), i):
            what, size = _ESCAPED[body[i:i + 2]], 2
        elif body.startswith("\\d", i):
            what, size = _DIGIT, 2
        elif body.startswith("[0-9]", i):
            what, size = _ASCII_DIGIT, 5
        else:
            raise PatternError(f"{char!r} at character {i + anchored}: only letters, digits, '_', '-', '.', "
                               r"'\.', '[0-9]', '\d', a quantifier * + ? after one of them, a leading ^ and a "
                               "trailing $ are accepted in a module-name pattern")
        i += size
        quantifier = body[i] if i < len(body) and body[i] in "*+?" else ""
        i += bool(quantifier)
        if quantifier == "+":  # x+ = x x*
            atoms.append(_Atom(what))
            quantifier = "*"
        atoms.append(_Atom(what, repeat=quantifier == "*", optional=bool(quantifier)))
    if not atoms:
        raise PatternError("a key that names no module")
    return anchored, atoms


class PatternKey:
    """One accepted key; :meth:`matches` is PEFT's ``re.match(rf"(.*\\.)?({key})$", name)``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.anchored, atoms = _parse(key)
        self.wildcard = any(a.optional for a in atoms)
        self.size = len(atoms)
        # A fixed-length key: one start position to try, through re (no repeats: no backtracking).
        self.fixed = None if self.wildcard else re.compile("".join(a.regex() for a in atoms))
        self.atoms = atoms
        # Bit i set in a state: "the next character should match atom i"; bit size: the key is matched.
        self.skippable = sum(1 << i for i, a in enumerate(atoms) if a.optional)
        self.repeats = sum(1 << i for i, a in enumerate(atoms) if a.repeat)
        self.start = self._closure(1)
        self._masks: dict[str, int] = {}

    def _closure(self, state: int) -> int:
        """Add, to each set bit inside a run of skippable atoms, every bit up to the run's end + 1:
        adding the run's bits carries from the lowest set bit through the run (the xor keeps it)."""
        return state | ((self.skippable + (state & self.skippable)) ^ self.skippable)

    def _mask(self, char: str) -> int:
        mask = self._masks.get(char)
        if mask is None:
            mask = sum(1 << i for i, a in enumerate(self.atoms) if a.accepts(char))
            if len(self._masks) < 4096:  # module names use a few dozen characters
                self._masks[char] = mask
        return mask

    def matches(self, name: str, where: ModuleName | None = None) -> bool:
        """Whether the key matches ``name`` as PEFT's regular expression would (``where``: the name's
        start and end positions, computed once for all the keys of a table)."""
        where = where if where is not None else ModuleName(name)
        starts = where.first if self.anchored else where.starts
        if self.fixed is not None:
            # A fixed key is `size` characters long: it can only start at end - size.
            return any(end - self.size in starts and self.fixed.fullmatch(name, end - self.size, end)
                       for end in where.ends)
        done, state, mask = 1 << self.size, 0, self._mask
        skippable, repeats, start = self.skippable, self.repeats, self.start
        before_newline = len(name) - 1 if len(where.ends) > 1 else -1
        for pos, char in enumerate(name):
            if pos in starts:
                state |= start
            if pos == before_newline and state & done:
                return True
            if state:
                hit = state & mask(char)
                moved = (hit << 1) | (hit & repeats)
                state = moved | ((skippable + (moved & skippable)) ^ skippable)  # self._closure, inlined
        if len(name) in starts:
            state |= start
        return bool(state & done)


class ModuleName:
    """Where a key may start in ``name`` (0, or after a dot with no newline before it: ``(.*\\.)?``)
    and where ``$`` matches (the end, or before a final newline)."""

    first = frozenset({0})

    def __init__(self, name: str) -> None:
        newline = name.find("\n")
        limit = len(name) if newline < 0 else newline
        self.starts = frozenset([0] + [i + 1 for i in range(limit) if name[i] == "."])
        self.ends = (len(name), len(name) - 1) if name.endswith("\n") else (len(name),)


class PatternTable(Generic[V]):
    """``rank_pattern`` or ``alpha_pattern``: validated keys in the file's order, first match wins."""

    def __init__(self, patterns: Mapping[str, V], check_value: Callable[[str, object], V]) -> None:
        """``check_value(key, value)`` returns the value or raises PatternError saying why not."""
        if len(patterns) > MAX_KEYS:
            raise PatternError(f"{len(patterns)} keys (at most {MAX_KEYS})")
        self.entries: list[tuple[PatternKey, V]] = []
        for key, value in patterns.items():
            if not isinstance(key, str):
                raise PatternError(f"key {key!r} is not a string")
            try:
                compiled = PatternKey(key)
            except PatternError as exc:
                raise PatternError(f"key {short_repr(key)}: {exc}") from None
            self.entries.append((compiled, check_value(key, value)))
        # A fixed key of n characters can only match a name whose end is n past a start: index them by n.
        self._wildcards = [i for i, (k, _) in enumerate(self.entries) if k.wildcard]
        if len(self._wildcards) > MAX_WILDCARD_KEYS:
            raise PatternError(f"{len(self._wildcards)} keys with * + or ? (at most {MAX_WILDCARD_KEYS})")
        self._by_size: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(self.entries):
            if not key.wildcard:
                self._by_size.setdefault(key.size, []).append(i)

    def lookup(self, module: str, default: V) -> V:
        """The value of the first key matching ``module``, else ``default``."""
        where = ModuleName(module)
        sizes = {end - start for end in where.ends for start in where.starts if end >= start}
        for i in sorted(chain(self._wildcards, *(self._by_size.get(n, ()) for n in sizes))):
            key, value = self.entries[i]
            if key.matches(module, where):
                return value
        return default


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error line quotes a hostile value, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
