"""Strings that match a regular expression: the ``pattern`` keyword of a JSON Schema.

A pattern is parsed once, with the parser of Python's own ``re`` module, into a tree of small
sampling functions; a sample walks it, choosing repeat counts, branches and characters with the
caller's RNG. Repeats without an upper bound repeat at most ``_SPREAD`` times beyond their
minimum; characters are printable ASCII. JSON Schema patterns are ECMA-262 regexes, which
Python's syntax covers for the patterns schemas use in practice (character classes,
quantifiers, groups, alternation, anchors).

Lookarounds and conditional groups cannot be sampled this way: :func:`compile_pattern` raises
:class:`PatternError` for them (and for patterns Python cannot parse), and the caller falls
back to plain text. A sample is checked against the compiled pattern and drawn again (a few
times) when a construct such as a negated class next to a literal made it miss.
"""

from __future__ import annotations

import importlib
import random
import re
import string
from collections.abc import Callable
from typing import Any

__all__ = ["PatternError", "compile_pattern"]

# re's parser is private (and the public alias sre_parse warns of its deprecation); its tree
# has been stable since Python 3.5. Loaded by name because typeshed has no stubs for it.
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

_SPREAD = 3
_TRIES = 4
_PRINTABLE = string.ascii_letters + string.digits + " -_.,:;!?@#$%&*+=/()[]{}<>'\"|~^`\\"
_CATEGORIES = {
    _c.CATEGORY_DIGIT: string.digits,
    _c.CATEGORY_NOT_DIGIT: string.ascii_letters + "_ -",
    _c.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    _c.CATEGORY_NOT_WORD: " -.,:;!?",
    _c.CATEGORY_SPACE: " ",
    _c.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}

Part = Callable[[random.Random, list[str], dict[int, str]], None]


class PatternError(ValueError):
    """A pattern that cannot be sampled (or parsed)."""


def compile_pattern(pattern: str) -> Callable[[random.Random], str]:
    """A function drawing strings that match ``pattern`` (searched, as JSON Schema does).

    Raises PatternError when the pattern does not parse or uses lookarounds or conditionals.
    """
    try:
        matcher = re.compile(pattern)
        tree = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise PatternError(f"invalid pattern {pattern!r}: {exc}") from exc
    part = _sequence(list(tree))

    def sample(rng: random.Random) -> str:
        text = ""
        for _ in range(_TRIES):
            out: list[str] = []
            part(rng, out, {})
            text = "".join(out)
            if matcher.search(text):
                break
        return text

    return sample


def _sequence(items: list[tuple[Any, Any]]) -> Part:
    parts = [_item(op, arg) for op, arg in items]

    def run(rng: random.Random, out: list[str], groups: dict[int, str]) -> None:
        for part in parts:
            part(rng, out, groups)

    return run


def _choices(chars: str) -> Part:
    def run(rng: random.Random, out: list[str], groups: dict[int, str]) -> None:
        out.append(rng.choice(chars))

    return run


def _item(op: Any, arg: Any) -> Part:
    if op is _c.LITERAL:
        char = chr(arg)
        return lambda rng, out, groups: out.append(char)
    if op is _c.NOT_LITERAL:
        return _choices(_PRINTABLE.replace(chr(arg), "") or "a")
    if op is _c.ANY:
        return _choices(string.ascii_letters)
    if op is _c.IN:
        return _choices(_class_chars(arg))
    if op is _c.AT:
        return lambda rng, out, groups: None  # anchors produce nothing
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        return _repeat(*arg)
    if op is _c.SUBPATTERN:
        return _group(arg[0], _sequence(list(arg[3])))
    if op is _c.ATOMIC_GROUP:
        return _sequence(list(arg))
    if op is _c.BRANCH:
        branches = [_sequence(list(b)) for b in arg[1]]
        return lambda rng, out, groups: rng.choice(branches)(rng, out, groups)
    if op is _c.GROUPREF:
        index = arg
        return lambda rng, out, groups: out.append(groups.get(index, ""))
    raise PatternError(f"cannot sample the regex construct {op}")


def _repeat(low: int, high: Any, items: Any) -> Part:
    top = low + _SPREAD if high is _c.MAXREPEAT else min(high, low + _SPREAD)
    body = _sequence(list(items))

    def run(rng: random.Random, out: list[str], groups: dict[int, str]) -> None:
        for _ in range(rng.randint(low, top)):
            body(rng, out, groups)

    return run


def _group(index: int | None, body: Part) -> Part:
    if index is None:
        return body

    def run(rng: random.Random, out: list[str], groups: dict[int, str]) -> None:
        start = len(out)
        body(rng, out, groups)
        groups[index] = "".join(out[start:])

    return run


def _class_chars(items: list[tuple[Any, Any]]) -> str:
    """The printable characters a character class ``[...]`` admits."""
    negate = False
    chars: list[str] = []
    for op, arg in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            chars.append(chr(arg))
        elif op is _c.RANGE:
            low, high = arg
            chars.extend(chr(code) for code in range(low, min(high, low + 256) + 1))
        elif op is _c.CATEGORY:
            chars.extend(_CATEGORIES.get(arg, ""))
        else:
            raise PatternError(f"cannot sample the character class item {op}")
    if negate:
        excluded = set(chars)
        return "".join(ch for ch in _PRINTABLE if ch not in excluded) or "a"
    return "".join(dict.fromkeys(chars)) or "a"
