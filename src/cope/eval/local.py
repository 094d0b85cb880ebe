"""Local evaluation tasks: a JSONL of questions about videos, scored by exact or option match.

One line per sample::

    {"video": "clips/a.mp4", "question": "Which way does the square move?",
     "options": ["left", "right", "up", "down"], "answer": "B", "type": "direction", "needs_motion": true}

* ``video`` — a path, relative to the JSONL file's folder (or absolute);
* ``question`` — the question text;
* ``options`` — optional list of choices (scored by option match; listed in the prompt with
  ``--prompt options``);
* ``answer`` — for multiple choice: the letter ("B"), the 0-based index (1) or the option text
  ("right"); otherwise the expected short answer;
* any other field (``id``, ``type``, ``needs_motion``, …) is kept and copied to the per-sample output;
  ``type`` and ``needs_motion`` also get their own accuracy breakdowns.

Prompt (``format_question``): ``bare`` (default) asks the question as written, the way MotionQA's
training data asks it; ``options`` appends the lettered options and asks for a letter (for
general instruction-tuned checkpoints).

Scoring, ``scoring="choice"`` (the default): a multiple-choice question is answered by forced
choice — the option whose tokens have the highest summed log-probability as the answer
(``cope.eval.choice``) — so every question gets one of its options and accuracy sits on top of the
chance level ``1 / len(options)`` that ``summarize`` reports beside it. Open questions are always
generated. ``scoring="generate"``: every answer is generated greedily and scored by ``is_correct``:
multiple choice is right when the prediction picks the answer's option — by letter ("B", "(b)",
"B. right") or by text ("right", "It moves right.") — as decided by
``cope.eval.scoring.match_option``; open questions are right when prediction and answer agree
after ``normalize`` (case, punctuation, articles, whitespace). The option matching is the one
free-form scorer (``cope.eval.scoring``): ``cope eval``, the lmms-eval tasks under ``cope/eval/tasks``
and the MotionQA benchmark all use it.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cope.errors import CopeInputError
from cope.eval.scoring import match_option, multiple_choice_prompt

LETTERS = string.ascii_uppercase
PROMPT_STYLES = ("bare", "options")
SCORINGS = ("choice", "generate")
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
BREAKDOWN_FIELDS = ("type", "needs_motion")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass
class LocalSample:
    """One question of a local task."""

    index: int  # 0-based position in the file
    video: Path
    question: str
    answer: str
    options: list[str] | None = None
    fields: dict = field(default_factory=dict)  # every other key of the line, passed through

    @property
    def answer_option(self) -> int | None:
        """Index of the correct option (multiple choice), else None."""
        return None if self.options is None else resolve_answer(self.answer, self.options)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: "The Left." → "left"."""
    text = _PUNCTUATION.sub(" ", str(text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def resolve_answer(answer, options: list[str]) -> int:
    """The option an ``answer`` field designates: a letter, a 0-based index or the option's text."""
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is neither an option letter, index nor option text")
    if isinstance(answer, int):
        if 0 <= answer < len(options):
            return answer
        raise ValueError(f"answer index {answer} is out of range for {len(options)} options")
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return LETTERS.index(text.upper())
    matches = [i for i, option in enumerate(options) if normalize(option) == normalize(text)]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"answer {answer!r} is neither an option letter, index nor option text")


def format_question(question: str, options: list[str] | None = None, style: str = "bare") -> str:
    """The prompt text: the question as written (``bare``), or with lettered options (``options``)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    if style == "bare":
        return question.strip()
    if options:
        return multiple_choice_prompt(question.strip(), options)
    return f"{question.strip()}\n{OPEN_INSTRUCTION}"


def parse_choice(prediction: str, options: list[str]) -> int | None:
    """Index of the option a free-form prediction picks, or None (``scoring.match_option``)."""
    picked = match_option(prediction, options)
    return None if picked is None else options.index(picked)


def is_correct(prediction: str, answer, options: list[str] | None = None) -> bool:
    """Option match for multiple choice, normalised exact match otherwise."""
    if options:
        return parse_choice(prediction, options) == resolve_answer(answer, options)
    return normalize(prediction) == normalize(answer)


def load_local_task(path: str | Path) -> list[LocalSample]:
    """Read and validate a local task; every problem is a one-line ``CopeInputError`` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise CopeInputError(f"{path}: no such task file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CopeInputError(f"{path}: cannot read the task file ({exc})") from exc
    samples = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            samples.append(_parse_line(path, number, line, len(samples)))
    if not samples:
        raise CopeInputError(f"{path}: the task file has no samples")
    return samples


def _parse_line(path: Path, number: int, line: str, index: int) -> LocalSample:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CopeInputError(f"{where}: not a JSON object ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise CopeInputError(f"{where}: expected a JSON object")
    missing = [key for key in ("video", "question", "answer") if key not in data]
    if missing:
        raise CopeInputError(f"{where}: missing {', '.join(missing)}")
    options = data.pop("options", None)
    if options is not None:
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
            raise CopeInputError(f"{where}: options must be a list of 2 to 26 strings")
        options = [str(option) for option in options]
        try:
            resolve_answer(data["answer"], options)
        except ValueError as exc:
            raise CopeInputError(f"{where}: {exc}") from exc
    video = Path(str(data.pop("video"))).expanduser()
    video = video if video.is_absolute() else path.parent / video
    if not video.is_file():
        raise CopeInputError(f"{where}: video {video} does not exist")
    return LocalSample(
        index=index,
        video=video.resolve(),
        question=str(data.pop("question")),
        answer=data.pop("answer"),
        options=options,
        fields=data,
    )


def sample_record(sample: LocalSample, prediction: str, choice: int | None = None) -> dict:
    """The scored per-sample output line (without timings).

    ``choice``: the option picked by forced choice; None parses it from the free-form ``prediction``.
    """
    if choice is None and sample.options:
        choice = parse_choice(prediction, sample.options)
    correct = (
        choice == sample.answer_option
        if sample.options
        else is_correct(prediction, sample.answer, sample.options)
    )
    return {
        "index": sample.index,
        **sample.fields,
        "video": str(sample.video),
        "question": sample.question,
        "options": sample.options,
        "answer": sample.answer,
        "prediction": prediction,
        "choice": LETTERS[choice] if choice is not None else None,
        "correct": correct,
    }


def summarize(records: list[dict]) -> dict:
    """Accuracy overall and per value of ``type`` / ``needs_motion`` where samples carry them, each
    beside its ``chance``: the expected accuracy of a uniform guess among the options (0 for open
    questions)."""

    def score(rows: list[dict]) -> dict:
        correct = sum(bool(r["correct"]) for r in rows)
        guess = sum(1 / len(r["options"]) for r in rows if r.get("options"))
        return {
            "samples": len(rows),
            "correct": correct,
            "accuracy": correct / len(rows) if rows else 0.0,
            "chance": guess / len(rows) if rows else 0.0,
        }

    summary = score(records)
    summary["errors"] = sum("error" in r for r in records)
    for key in BREAKDOWN_FIELDS:
        groups: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            if key in record:
                groups[json.dumps(record[key]) if not isinstance(record[key], str) else record[key]].append(
                    record
                )
        if groups:
            summary[f"by_{key}"] = {value: score(rows) for value, rows in sorted(groups.items())}
    if "by_needs_motion" in summary:
        summary["splits"] = summary["by_needs_motion"]  # the name the JSON contract gives these groups
    return summary


def evaluate_local(
    model,
    samples: list[LocalSample],
    mode: str | None = None,
    sampling: dict | None = None,
    max_new_tokens: int = 32,
    prompt_style: str = "bare",
    scoring: str = "choice",
    progress: bool = False,
):
    """Ask ``model`` (a ``CopeVideoLM``) every question; yield one scored record per sample.

    ``scoring``: ``choice`` answers multiple-choice questions by forced choice and generates the
    open ones; ``generate`` generates every answer greedily. A video that cannot be read gives a
    record with ``error`` set (scored wrong) instead of ending the run; ``summarize`` counts them.
    """
    from tqdm import tqdm

    from cope.model.videolm import GenerationConfig

    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    for sample in tqdm(samples, desc="eval", unit="question", disable=not progress):
        question = format_question(sample.question, sample.options, prompt_style)
        try:
            if scoring == "choice" and sample.options:
                yield _choose(model, sample, question, mode, sampling or {})
            else:
                yield _generate(model, sample, question, mode, sampling or {}, generation)
        except CopeInputError as exc:
            yield {**sample_record(sample, ""), "prediction": None, "correct": False, "error": str(exc)}


def _choose(model, sample: LocalSample, question: str, mode: str | None, sampling: dict) -> dict:
    from cope.eval.choice import pick_option

    prompt = model.build_prompt(model.encode_video(sample.video, mode, **sampling), question)
    picked, scores = pick_option(model, prompt.inputs_embeds, sample.options)
    return {
        **sample_record(sample, sample.options[picked], choice=picked),
        "scoring": "choice",
        "option_logprobs": scores,
        "visual_tokens": prompt.visual_tokens,
        "prompt_tokens": prompt.prompt_tokens,
    }


def _generate(
    model, sample: LocalSample, question: str, mode: str | None, sampling: dict, generation
) -> dict:
    answer = model.ask(sample.video, question, mode=mode, generation=generation, **sampling)
    return {
        **sample_record(sample, answer.text),
        "scoring": "generate",
        "visual_tokens": answer.visual_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "ttft_s": answer.timings.ttft_s,
        "e2e_s": answer.timings.e2e_s,
    }
