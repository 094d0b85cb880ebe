"""``--codec`` and ``--workers`` on the model commands: a source read in its own codec answers
with the plan's token count; bad options exit 2 before any weights load."""

from __future__ import annotations

import json

import pytest

from cope.cli import main
from tests.clips import H264_BFRAMES, awkward_clip, write_translation_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def h264_clip(clip_dir):
    return write_translation_clip(clip_dir / "ask-h264.mp4", frames=61, dx=2.0, **H264_BFRAMES)


def ask(capsys, *args):
    code = main(["ask", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_reads_h264_natively(capsys, checkpoint, h264_clip, cache_dir):
    """The checkpoint's plan (fusion 5, 2 keyframes per GOP) on the source's GOPs of 30: slots at
    0, 5, …, 25 move to the anchors 0, 3, 9, 15, 18, 24; keyframes at 0 and 15."""
    common = [
        h264_clip,
        "what moves?",
        "--model",
        checkpoint,
        "--cache-dir",
        cache_dir,
        "--max-new-tokens",
        "3",
    ]
    code, out, err = ask(capsys, *common, "--codec", "native", "--workers", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["rgb_frames"], report["delta_frames"]) == (2 + 2 + 1, 4 + 4)
    assert report["visual_tokens"] == 5 * 20 + 8 * 10


def test_bad_codec_options_exit_2(capsys, checkpoint, h264_clip, clip_dir):
    code, _, err = ask(capsys, h264_clip, "q", "--model", checkpoint, "--workers", "0")
    assert code == 2 and err.count("\n") == 1 and "--workers must be ≥ 1" in err, err
    vp9 = awkward_clip(clip_dir / "ask.webm", codec="libvpx-vp9")
    code, _, err = ask(capsys, vp9, "q", "--model", checkpoint, "--codec", "native")
    assert code == 2 and err.count("\n") == 1 and "the stream is vp9" in err, err
