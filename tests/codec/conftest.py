"""Codec test fixtures: the CLI in this process, and source streams with B-frames for native mode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cope.cli import main
from tests.clips import H264_BFRAMES, write_translation_clip


@pytest.fixture
def cope_cli(capsys):
    """``cope`` in this process: (exit code, stdout, stderr) as a CompletedProcess."""

    def run(*args) -> subprocess.CompletedProcess:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="session")
def h264_pan_clip(clip_dir) -> Path:
    """Content moving right by 2 px per frame, H.264 with B-frames."""
    return write_translation_clip(clip_dir / "pan-h264.mp4", frames=61, dx=2.0, **H264_BFRAMES)


@pytest.fixture(scope="session")
def h264_diagonal_clip(clip_dir) -> Path:
    """Content moving left by 1.5 px and down by 0.5 px per frame, H.264 with B-frames."""
    return write_translation_clip(clip_dir / "diagonal-h264.mp4", frames=61, dx=-1.5, dy=0.5, **H264_BFRAMES)
