"""`cope chat`: questions on stdin, streamed answers on stdout, one KV cache for the whole session."""

from __future__ import annotations

import io
import json

import pytest

from cope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def chat(capsys, monkeypatch, stdin: str, *args):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_turns_share_the_cache(capsys, monkeypatch, checkpoint, integer_clip, cache_dir):
    common = [
        str(integer_clip),
        "--model",
        checkpoint,
        "--cache-dir",
        str(cache_dir),
        "--max-new-tokens",
        "4",
    ]
    script = "what is moving ?\n\nwhich direction ?\n<video> again\n/quit\nnever asked\n"
    code, out, err = chat(capsys, monkeypatch, script, *common, "--json")
    assert code == 0
    report = json.loads(out)
    first, second = report["turns"]
    assert [t["question"] for t in report["turns"]] == ["what is moving ?", "which direction ?"]
    assert report["visual_tokens"] == first["visual_tokens"] == 180
    # Turn 2's context is turn 1's prompt + its answer + the new turn; the video cost is paid once.
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["new_tokens"]
    assert first["vision_s"] > 0 and second["vision_s"] == 0.0 and second["delta_s"] == 0.0
    assert "must not contain the video placeholder" in err and err.count("you> ") == 5

    # Streaming: one answer line per question, the same answers as the JSON run (greedy).
    code, out, _ = chat(capsys, monkeypatch, "what is moving ?\nwhich direction ?\n", *common)
    assert code == 0 and out.splitlines() == [first["answer"], second["answer"]]
    # --compile: the turns share one static KV cache and answer alike.
    code, out, _ = chat(capsys, monkeypatch, "what is moving ?\nwhich direction ?\n", *common, "--compile")
    assert code == 0 and out.splitlines() == [first["answer"], second["answer"]]


def test_chat_bad_video_exits_2(capsys, monkeypatch, checkpoint, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    code, out, err = chat(capsys, monkeypatch, "q\n", str(tmp_path / "notes.mp4"), "--model", checkpoint)
    assert code == 2 and out == "" and err.count("\n") == 1 and "notes.mp4" in err
