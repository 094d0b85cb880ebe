"""`cope ask`: options checked before any work, honest timings (issue 14)."""

from __future__ import annotations

import json

import pytest

from cope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ask_refuses_a_fusion_that_does_not_divide_the_models_gop(checkpoint, integer_clip, tmp_path, capsys):
    """The model's canonical GOP is 30: fusion 7 was silently planned on a rounded-up GOP of 35."""
    cache = tmp_path / "cache"
    code = main(
        ["ask", str(integer_clip), "q?", "--model", checkpoint, "--fusion", "7", "--cache-dir", str(cache)]
    )
    assert code == 2
    assert "fusion 7 must divide the GOP size 30" in capsys.readouterr().err
    assert not cache.exists()  # refused before transcoding


def test_ask_json_reports_codec_and_wall_time(checkpoint, integer_clip, tmp_path, capsys):
    """Before: e2e_s was all the JSON said, though transcoding and extraction came first.

    With an empty cache the transcode is part of the wait: codec_s counts it, wall_s covers
    everything since the command started, and ttft_s keeps the paper's definition."""
    cache = tmp_path / "cache"
    args = [str(integer_clip), "what moves?", "--model", checkpoint, "--cache-dir", str(cache)]
    assert main(["ask", *args, "--json", "--max-new-tokens", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["codec_s"] > report["extract_s"] > 0  # the transcode is in codec_s
    assert report["wall_s"] > report["codec_s"] + report["e2e_s"]
    assert report["ttft_s"] == pytest.approx(
        report["vision_s"] + report["delta_s"] + report["prefill_s"], abs=1e-5
    )
