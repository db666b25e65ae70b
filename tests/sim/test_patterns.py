"""Strings drawn from regular expressions match them."""

from __future__ import annotations

import random
import re

import pytest

from aigw.sim.patterns import PatternError, compile_pattern


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\d{3}-\d{4}$",
        r"^[A-Za-z_][A-Za-z0-9_]*$",
        r"^(red|green|blue)$",
        r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$",
        r"^\+?[1-9]\d{1,14}$",
        r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        r"^(?:\w+\s?)+$",
        r"ab*?c+d?",
        r"^(\w)\w*\1$",
        r"[^abc]x",
        r"^.{2,5}$",
        r"^\S+\W\D$",
    ],
)
def test_samples_match(pattern: str) -> None:
    draw = compile_pattern(pattern)
    rng = random.Random(1)
    for _ in range(50):
        text = draw(rng)
        assert re.search(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern", [r"^(?=a)\w+$", r"(?<!x)y", r"(a)?(?(1)b|c)", "(unclosed"])
def test_lookarounds_conditionals_and_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)
