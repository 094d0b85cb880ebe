"""`cope infer`: a list of videos → JSONL, resumable, bad videos recorded and skipped over."""

from __future__ import annotations

import json

import pytest

from cope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def infer(capsys, *args):
    code = main(["infer", *args])
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_infer_list_is_resumable(capsys, checkpoint, integer_clip, static_clip, cache_dir, tmp_path):
    (tmp_path / "broken.mp4").write_text("not a video")
    videos = tmp_path / "videos.txt"
    videos.write_text(f"{integer_clip}\n# a comment\n\nbroken.mp4\n{static_clip}\n")
    out = tmp_path / "answers.jsonl"
    common = ["--model", checkpoint, "--cache-dir", str(cache_dir), "--max-new-tokens", "3", "--json"]
    code, stdout, _ = infer(capsys, str(videos), "--question", "what is moving ?", "--out", str(out), *common)
    assert code == 0
    assert json.loads(stdout) == {"out": str(out), "answered": 2, "failed": 1, "skipped": 0, "total": 3}
    records = read_jsonl(out)
    assert [r["video"] for r in records] == [str(integer_clip), "broken.mp4", str(static_clip)]
    assert records[0]["visual_tokens"] == 180 and records[0]["question"] == "what is moving ?"
    assert "answer" not in records[1] and "broken.mp4" in records[1]["error"]
    assert {"answer", "model", "visual_tokens", "prompt_tokens", "ttft_s", "e2e_s"} <= set(records[2])

    # A rerun skips everything already in the output; a torn last line (killed run) is dropped.
    with out.open("a") as sink:
        sink.write('{"video": "half a rec')
    code, stdout, _ = infer(capsys, str(videos), "--question", "what is moving ?", "--out", str(out), *common)
    assert json.loads(stdout)["skipped"] == 3 and read_jsonl(out) == records

    # --retry-errors runs the failed entry again (it fails again, and is recorded once).
    code, stdout, _ = infer(
        capsys, str(videos), "--question", "what is moving ?", "--out", str(out), "--retry-errors", *common
    )
    assert json.loads(stdout) == {"out": str(out), "answered": 0, "failed": 1, "skipped": 2, "total": 3}
    assert [r["video"] for r in read_jsonl(out)] == [str(integer_clip), str(static_clip), "broken.mp4"]


def test_infer_jsonl_questions(capsys, checkpoint, integer_clip, cache_dir, tmp_path):
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"video": str(integer_clip), "question": "what is moving ?", "id": 7},
        {"video": str(integer_clip), "question": "which direction ?"},
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    code, _, err = infer(
        capsys,
        str(requests),
        "--out",
        str(out),
        "--model",
        checkpoint,
        "--cache-dir",
        str(cache_dir),
        "--max-new-tokens",
        "3",
        "--mode",
        "iframes-only",
    )
    assert code == 0 and "2 answered, 0 failed" in err
    records = read_jsonl(out)
    assert [(r["question"], r.get("id")) for r in records] == [
        ("what is moving ?", 7),
        ("which direction ?", None),
    ]
    assert all(r["mode"] == "iframes-only" and r["visual_tokens"] == 5 * 20 for r in records)


def test_infer_bad_inputs(capsys, checkpoint, tmp_path):
    videos = tmp_path / "videos.txt"
    videos.write_text("a.mp4\n")
    code, _, err = infer(capsys, str(videos), "--out", str(tmp_path / "o.jsonl"), "--model", checkpoint)
    assert code == 2 and "no question" in err
    other = tmp_path / "notes.jsonl"
    other.write_text('{"something": "else"}\n')
    code, _, err = infer(capsys, str(videos), "--question", "q", "--out", str(other), "--model", checkpoint)
    assert code == 2 and "not a `cope infer` output line" in err
    assert other.read_text() == '{"something": "else"}\n'
