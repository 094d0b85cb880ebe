"""The free-form answer scorer: option letters, normalised text, containment, partial fit."""

from __future__ import annotations

import pytest

from cope.eval.scoring import match_option, multiple_choice_prompt, score_prediction
from cope.motionqa.render import COLOURS, SHAPES
from cope.motionqa.spec import COUNTS, DIRECTIONS, YES_NO


@pytest.mark.parametrize(
    ("prediction", "options", "expected"),
    [
        ("left", DIRECTIONS, "left"),
        ("The camera pans Left.", DIRECTIONS, "left"),
        ("B", DIRECTIONS, "right"),
        ("(c)", DIRECTIONS, "up"),
        ("D. down", DIRECTIONS, "down"),
        ("left, then right", DIRECTIONS, None),
        ("No, it does not.", YES_NO, "no"),
        ("twice", COUNTS, "2"),
        ("It changes direction three times", COUNTS, "3"),
        ("the red one", ["red circle", "blue square"], "red circle"),
        ("The blue square.", ["red circle", "blue square", "blue star"], "blue square"),
        ("blue", ["red circle", "blue square", "blue star"], None),
        ("Magenta", list(COLOURS), "purple"),
        ("a triangle", list(SHAPES), "triangle"),
    ],
)
def test_match_option(prediction, options, expected):
    assert match_option(prediction, list(options)) == expected
    if expected is not None:
        assert score_prediction(prediction, expected, list(options))


def test_multiple_choice_prompt_letters_score_back():
    prompt = multiple_choice_prompt("Which way does the red circle move?", list(DIRECTIONS))
    assert prompt.splitlines()[1:5] == ["A. left", "B. right", "C. up", "D. down"]
    assert score_prediction("C", "up", list(DIRECTIONS))
