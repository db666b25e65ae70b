"""Choice planning: stop strings cut the planned pieces."""

from __future__ import annotations

import pytest

from aigw.sim.choices import cut_at_stop, json_pieces


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["ab", " cd", " ef"], ("cd",), (["ab", " "], "cd")),
        (["ab", " cd", " ef"], ("d e",), (["ab", " c"], "d e")),  # across pieces
        (["ab", " cd", " ef"], ("ef", "b"), (["a"], "b")),  # the earliest match wins
        (["ab", " cd"], (" c",), (["ab", ""], " c")),  # at a piece's start: an empty last piece
        (["ab", " cd"], ("a",), ([""], "a")),
        (["ab", " cd"], ("x",), (["ab", " cd"], None)),
    ],
)
def test_cut_at_stop(
    pieces: list[str], stops: tuple[str, ...], expected: tuple[list[str], str | None]
) -> None:
    assert cut_at_stop(pieces, stops) == expected


def test_json_pieces_are_four_characters() -> None:
    assert json_pieces('{"a":12}') == ['{"a"', ":12}"]
    assert json_pieces("[1]") == ["[1]"]
