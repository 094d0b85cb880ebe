"""The one free-form answer scorer: which option a generated answer picks (``match_option``),
whether that is the right one (``score_prediction``), and the lettered prompt it can answer by
letter (``multiple_choice_prompt``). ``cope eval`` (``cope.eval.local``), the lmms-eval tasks under
``cope/eval/tasks`` and the MotionQA benchmark all score with it."""

from __future__ import annotations

import re

_NUMBER_WORDS = {
    "zero": "0",
    "none": "0",
    "never": "0",
    "no": "0",
    "one": "1",
    "once": "1",
    "two": "2",
    "twice": "2",
    "three": "3",
    "thrice": "3",
}
_SYNONYMS = {"color": "colour", "magenta": "purple", "violet": "purple", "turquoise": "cyan", "aqua": "cyan"}
_FILLER = {
    "the",
    "a",
    "an",
    "it",
    "its",
    "is",
    "one",
    "object",
    "shape",
    "coloured",
    "colored",
    "times",
    "time",
}
_LETTER = re.compile(r"^\(?([a-z])\)?(?:[.):]|$)")


def _words(text: str, numeric: bool) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    words = [_SYNONYMS.get(w, w) for w in words]
    return [_NUMBER_WORDS.get(w, w) for w in words] if numeric else words


def match_option(prediction: str, options: list[str]) -> str | None:
    """The option a free-form prediction picks, or None if it picks none or several.

    Accepted: an option letter ("B", "(b)", "B. right"), the option's text after normalisation
    (case, punctuation, articles, number words for count options, colour synonyms), a sentence that
    contains exactly one option ("The camera pans left."), or words that fit exactly one option
    ("the red one" → "red circle").
    """
    text = prediction.strip().lower()
    letter = _LETTER.match(text)
    if letter and ord(letter.group(1)) - ord("a") < len(options):
        return options[ord(letter.group(1)) - ord("a")]
    numeric = all(o.isdigit() for o in options)
    words = _words(text, numeric)
    norm = {o: _words(o, numeric) for o in options}
    exact = [o for o in options if words == norm[o]]
    if len(exact) == 1:
        return exact[0]
    joined = f" {' '.join(words)} "
    contained = [o for o in options if f" {' '.join(norm[o])} " in joined]
    if len(contained) == 1:
        return contained[0]
    content = {w for w in words if w not in _FILLER}
    fitting = [o for o in options if content and content <= set(norm[o])]
    return fitting[0] if len(fitting) == 1 else None


def score_prediction(prediction: str, answer: str, options: list[str]) -> bool:
    """True when ``prediction`` picks ``answer`` among ``options`` (see ``match_option``)."""
    return match_option(prediction, options) == answer


def multiple_choice_prompt(question: str, options: list[str]) -> str:
    """The question with lettered options, for evaluation by option letter."""
    lines = [question] + [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter or the answer itself."
