"""`cope ask` end to end on CPU: a tiny random CoPE checkpoint saved by the test, a synthetic clip."""

from __future__ import annotations

import json
import shutil

import pytest

from cope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def ask(capsys, *args):
    code = main(["ask", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_json(capsys, checkpoint, integer_clip, cache_dir):
    common = [str(integer_clip), "what is moving ?", "--model", checkpoint, "--cache-dir", str(cache_dir)]
    code, out, _ = ask(capsys, *common, "--json", "--max-new-tokens", "5")
    assert code == 0
    report = json.loads(out)
    assert {"answer", "model", "visual_tokens", "prompt_tokens", "ttft_s", "e2e_s"} <= set(report)
    # 61 frames, GOP 30, fusion 5, 2 keyframes per GOP: 5 RGB frames × 20 + 8 P-frames × 10.
    assert (report["mode"], report["rgb_frames"], report["delta_frames"]) == ("cope", 5, 8)
    assert report["visual_tokens"] == 180 and report["prompt_tokens"] > 180
    assert report["model"] == checkpoint and report["new_tokens"] == 5
    assert report["e2e_s"] >= report["ttft_s"] > 0

    code, out, _ = ask(
        capsys, *common, "--json", "--max-new-tokens", "5", "--mode", "dense", "--dense-frames", "4"
    )
    assert json.loads(out)["visual_tokens"] == 4 * 20
    code, out, _ = ask(capsys, *common, "--json", "--max-new-tokens", "5", "--keyframes-per-gop", "1")
    assert json.loads(out)["visual_tokens"] == 3 * 20 + 10 * 10

    # Without --json the answer streams to stdout (one line), the numbers go to stderr.
    code, streamed, err = ask(capsys, *common, "--max-new-tokens", "5")
    assert code == 0 and streamed == report["answer"] + "\n"
    assert "180 visual" in err and "TTFT" in err

    # --compile: the static KV cache (with the eager step on a CPU: nothing compiled) answers alike.
    code, out, _ = ask(capsys, *common, "--json", "--max-new-tokens", "5", "--compile")
    compiled = json.loads(out)
    assert code == 0 and compiled["answer"] == report["answer"] and compiled["compile_s"] == 0.0


def test_ask_caps_answers_at_the_models_max_new_tokens(capsys, checkpoint, integer_clip, cache_dir, tmp_path):
    """Without --max-new-tokens the model config's cap applies (CoPE-Tiny: 8); the flag overrides it."""
    capped = tmp_path / "capped"
    shutil.copytree(checkpoint, capped)
    config = json.loads((capped / "config.json").read_text())
    (capped / "config.json").write_text(json.dumps({**config, "max_new_tokens": 3}))
    common = [
        str(integer_clip),
        "what is moving ?",
        "--model",
        str(capped),
        "--cache-dir",
        str(cache_dir),
        "--json",
    ]
    # The random model's greedy answer runs past 5 tokens without its end token (test_ask_json).
    code, out, _ = ask(capsys, *common)
    assert code == 0 and json.loads(out)["new_tokens"] == 3
    code, out, _ = ask(capsys, *common, "--max-new-tokens", "5")
    assert code == 0 and json.loads(out)["new_tokens"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "q", "--model", "{model}"], "missing.mp4: no such file"),
        (
            ["{clip}", "q", "--model", "/nonexistent/cope-model"],
            "/nonexistent/cope-model: no such model directory",
        ),
        (["{clip}", "q", "--model", "{model}", "--keyframes-per-gop", "4"], "keyframes per GOP must divide"),
        (["{clip}", " ", "--model", "{model}"], "the question is empty"),
        (["{clip}", "q", "--model", "{model}", "--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1"),
    ],
)
def test_ask_bad_input_exits_2_with_one_line(
    capsys, checkpoint, integer_clip, cache_dir, tmp_path, args, message
):
    values = {"clip": integer_clip, "model": checkpoint, "missing": tmp_path / "missing.mp4"}
    code, out, err = ask(capsys, *[a.format(**values) for a in args], "--cache-dir", str(cache_dir))
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("cope")]
    assert len(lines) == 1 and message in lines[0]


def test_ask_without_model_needs_the_bundled_one(capsys, integer_clip, tmp_path, monkeypatch):
    import cope.model.videolm.builders as builders

    monkeypatch.setattr(builders, "default_model_path", lambda: tmp_path / "cope-tiny")
    code, _, err = ask(capsys, str(integer_clip), "what ?")
    assert code == 2
    assert err.strip().endswith(
        "the bundled default model is missing; build it with `make tiny-model` or pass --model"
    )
