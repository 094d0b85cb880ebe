"""Local tasks: the file format, the one scorer, and `cope eval TASK.jsonl` on a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cope.cli import main
from cope.errors import CopeInputError
from cope.eval.local import (
    format_question,
    is_correct,
    load_local_task,
    normalize,
    parse_choice,
    resolve_answer,
    summarize,
)
from tests.eval.support import TASK_LINES

OPTIONS = ["left", "right", "up", "down"]


def test_answer_field_may_be_letter_index_or_text():
    assert resolve_answer("B", OPTIONS) == 1
    assert resolve_answer("b", OPTIONS) == 1
    assert resolve_answer(2, OPTIONS) == 2
    assert resolve_answer("Down.", OPTIONS) == 3
    for bad in ("E", 4, "sideways", True):
        with pytest.raises(ValueError):
            resolve_answer(bad, OPTIONS)


@pytest.mark.parametrize(
    ("prediction", "picked"),
    [
        ("B", 1),
        ("(b)", 1),
        ("B. right", 1),
        ("right", 1),
        ("It moves right.", 1),
        ("Right!", 1),
        ("A square moves up", 2),
        ("left or right", None),
        ("E", None),
        ("", None),
    ],
)
def test_option_match_by_letter_or_text(prediction, picked):
    assert parse_choice(prediction, OPTIONS) == picked
    assert is_correct(prediction, "right", OPTIONS) is (picked == 1)


def test_open_questions_need_a_normalised_exact_match():
    assert normalize("  The Square!! ") == "square"
    assert is_correct("the square.", "Square")
    assert not is_correct("a red square", "square")


def test_prompt_styles():
    assert format_question(" which way ? ", OPTIONS) == "which way ?"
    lettered = format_question("which way ?", OPTIONS, "options").splitlines()
    assert lettered[:5] == ["which way ?", "A. left", "B. right", "C. up", "D. down"]
    assert "letter" in lettered[5]
    assert format_question("what moves ?", None, "options").startswith("what moves ?\n")
    with pytest.raises(ValueError):
        format_question("q", OPTIONS, "fancy")


def test_load_resolves_videos_and_keeps_extra_fields(eval_task):
    samples = load_local_task(eval_task)
    assert [s.index for s in samples] == [0, 1, 2]
    assert samples[0].video == (eval_task.parent / "right.mp4").resolve()
    assert samples[0].fields == {"type": "direction", "needs_motion": True}
    assert samples[0].answer_option == 1 and samples[2].answer_option == 1
    assert samples[1].options is None and samples[1].answer_option is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not a JSON object"),
        ('["a list"]', "expected a JSON object"),
        ('{"video": "right.mp4", "question": "q"}', "missing answer"),
        ('{"video": "nowhere.mp4", "question": "q", "answer": "a"}', "does not exist"),
        ('{"video": "right.mp4", "question": "q", "options": ["x"], "answer": "x"}', "options must be"),
        ('{"video": "right.mp4", "question": "q", "options": ["x", "y"], "answer": "z"}', "neither"),
    ],
)
def test_bad_lines_name_the_file_and_line(eval_task, tmp_path, line, reason):
    bad = eval_task.parent / "bad.jsonl"
    bad.write_text(json.dumps(TASK_LINES[1]) + "\n\n" + line + "\n")
    with pytest.raises(CopeInputError, match=rf"bad\.jsonl:3: .*{reason}"):
        load_local_task(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CopeInputError, match="no samples"):
        load_local_task(empty)


def test_summary_breaks_accuracy_down_by_type_and_motion():
    records = [
        {"correct": True, "type": "direction", "needs_motion": True},
        {"correct": False, "type": "direction", "needs_motion": True},
        {"correct": True, "type": "colour", "needs_motion": False},
        {"correct": False, "error": "x.mp4: unreadable"},
    ]
    summary = summarize(records)
    assert (summary["samples"], summary["correct"], summary["accuracy"], summary["errors"]) == (4, 2, 0.5, 1)
    assert summary["by_type"] == {
        "colour": {"samples": 1, "correct": 1, "accuracy": 1.0, "chance": 0.0},
        "direction": {"samples": 2, "correct": 1, "accuracy": 0.5, "chance": 0.0},
    }
    assert summary["by_needs_motion"]["true"] == {"samples": 2, "correct": 1, "accuracy": 0.5, "chance": 0.0}
    assert summary["splits"] == summary["by_needs_motion"]


def test_chance_is_the_mean_uniform_guess_among_each_questions_options():
    records = [
        {"correct": True, "options": ["a", "b", "c", "d"], "type": "direction"},
        {"correct": False, "options": ["a", "b"], "type": "direction"},
        {"correct": False, "type": "object"},  # open question: a guess never matches
    ]
    summary = summarize(records)
    assert summary["chance"] == pytest.approx((1 / 4 + 1 / 2 + 0) / 3)
    assert summary["by_type"]["direction"]["chance"] == pytest.approx(3 / 8)
    assert summary["by_type"]["object"]["chance"] == 0.0


def test_cope_eval_on_a_tiny_model(eval_checkpoint, eval_task, tmp_path, eval_env, capsys):
    from cope.model.videolm import CopeVideoLM, GenerationConfig

    out = tmp_path / "pred.jsonl"
    args = [
        "eval",
        str(eval_task),
        "--model",
        str(eval_checkpoint),
        "--mode",
        "cope",
        "--keyframes-per-gop",
        "1",
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
        "--scoring",
        "generate",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert [row["type"] for row in rows] == ["direction", "object", "direction"]

    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    for row, sample in zip(rows, load_local_task(eval_task), strict=True):
        answer = model.ask(
            sample.video,
            sample.question,
            mode="cope",
            keyframes_per_gop=1,
            generation=GenerationConfig(max_new_tokens=6),
        )
        assert row["prediction"] == answer.text
        assert row["correct"] == is_correct(answer.text, sample.answer, sample.options)
        assert row["visual_tokens"] == answer.visual_tokens and row["ttft_s"] > 0
    # 61-frame clips: one GOP, slots at frames 0, 30, 60 → 1 RGB frame (3×4 = 12) + 2 P-frames (2×10)
    assert {row["visual_tokens"] for row in rows} == {32}
    assert report["samples"] == 3 and report["errors"] == 0
    assert report["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 3)
    assert set(report["by_type"]) == {"direction", "object"}
    assert set(report["by_needs_motion"]) == {"true", "false"}

    before = out.read_text()
    assert main(args) == 2  # never overwrite without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == before
    assert main(["eval", str(tmp_path / "missing.jsonl"), "--model", str(eval_checkpoint)]) == 2
    assert main(["eval", "--model", str(eval_checkpoint)]) == 2


def test_forced_choice_picks_the_most_likely_option(eval_checkpoint, eval_task, tmp_path, eval_env, capsys):
    """Default scoring: each multiple-choice row holds the argmax of the per-option log-probabilities
    (computed here one option at a time); the open question is still generated."""
    from cope.eval.choice import continuation_logprob
    from cope.model.videolm import CopeVideoLM, GenerationConfig
    from cope.model.videolm.prompting import tokenize

    out = tmp_path / "choice.jsonl"
    sampling = ["--mode", "cope", "--keyframes-per-gop", "1", "--device", "cpu"]
    assert (
        main(
            ["eval", str(eval_task), "--model", str(eval_checkpoint), *sampling, "--out", str(out), "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["scoring"] for row in rows] == ["choice", "generate", "choice"]

    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    for row, sample in zip(rows, load_local_task(eval_task), strict=True):
        prompt = model.build_prompt(
            model.encode_video(sample.video, "cope", keyframes_per_gop=1), sample.question
        )
        if sample.options is None:
            answer = model.generate(prompt, GenerationConfig(max_new_tokens=32))
            assert row["prediction"] == answer.text and row["choice"] is None
            continue
        one_by_one = [
            continuation_logprob(model, prompt.inputs_embeds, tokenize(model, option))[0]
            for option in sample.options
        ]
        assert row["option_logprobs"] == pytest.approx(one_by_one, abs=1e-4)
        best = max(range(len(one_by_one)), key=one_by_one.__getitem__)
        assert row["choice"] == "ABCD"[best] and row["prediction"] == sample.options[best]
        assert row["correct"] == (best == resolve_answer(sample.answer, sample.options))
        assert row["visual_tokens"] == 32
    assert report["scoring"] == "choice"
    assert report["chance"] == pytest.approx((1 / 4 + 0 + 1 / 2) / 3)
    assert report["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 3)


def test_option_logprobs_of_options_with_different_lengths(eval_checkpoint):
    """The batched forward pads shorter options; padding must not change any option's score."""
    from cope.eval.choice import continuation_logprob, option_logprobs
    from cope.model.videolm import CopeVideoLM
    from cope.model.videolm.prompting import tokenize

    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    width = model.embed_text(torch.tensor([0])).shape[-1]
    prompt = model.build_prompt(
        torch.randn(5, width, generator=torch.Generator().manual_seed(0)), "which way ?"
    )
    options = ["left", "up and then down", "square"]
    assert len({tokenize(model, o).numel() for o in options}) > 1
    batched = option_logprobs(model, prompt.inputs_embeds, options)
    single = [continuation_logprob(model, prompt.inputs_embeds, tokenize(model, o))[0] for o in options]
    assert batched == pytest.approx(single, abs=1e-4)


def test_end_of_turn_probability_is_the_stop_tokens_share_of_the_next_token(eval_checkpoint):
    """p(end | answer) = Σ over stop tokens s of p(answer s) / p(answer), from continuation_logprob."""
    from cope.eval.choice import continuation_logprob, end_of_turn_probability
    from cope.model.videolm import CopeVideoLM
    from cope.model.videolm.prompting import tokenize

    model = CopeVideoLM.from_pretrained(eval_checkpoint)
    width = model.embed_text(torch.tensor([0])).shape[-1]
    prompt = model.build_prompt(
        torch.randn(5, width, generator=torch.Generator().manual_seed(0)), "which way ?"
    )
    answer = tokenize(model, "left")
    assert len(model.stop_token_ids) >= 2  # EOS and the chat template's end of turn
    alone, _ = continuation_logprob(model, prompt.inputs_embeds, answer)
    ended = [
        continuation_logprob(model, prompt.inputs_embeds, torch.cat([answer, torch.tensor([stop])]))[0]
        for stop in model.stop_token_ids
    ]
    expected = sum(math.exp(total - alone) for total in ended)
    assert end_of_turn_probability(model, prompt.inputs_embeds, answer) == pytest.approx(expected, rel=1e-4)
