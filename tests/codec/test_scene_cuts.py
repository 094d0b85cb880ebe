"""Adaptive keyframes: a hard cut inside a GOP starts a new keyframe, and no Δ-frame spans it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cope.codec import CanonicalSettings, IFrame, PFrame, open_video
from tests.clips import H264_BFRAMES, write_translation_clip

CUT = 45  # inside the first GOP of 60 frames


@pytest.fixture(scope="module")
def cut_clip(clip_dir):
    return write_translation_clip(clip_dir / "cut.mp4", frames=90, dx=2.0, cut=CUT)


@pytest.fixture(scope="module")
def cut_h264_clip(clip_dir):
    """H.264 with B-frames and no scene-cut I-frame: the cut is a P-frame (45 = 3 × 15)."""
    return write_translation_clip(
        clip_dir / "cut-h264.mp4", frames=90, dx=2.0, cut=CUT, **{**H264_BFRAMES, "g": "60"}
    )


def spanning(entries) -> list:
    return [e for e in entries if isinstance(e, PFrame) and e.ref_index < CUT <= e.index]


@pytest.mark.parametrize(
    ("clip", "settings", "fusion"),
    [
        ("cut_clip", CanonicalSettings(width=128, height=128, gop=60), 10),
        ("cut_h264_clip", CanonicalSettings(width=128, height=128, codec="native"), 9),
    ],
)
def test_a_cut_mid_gop_starts_a_keyframe(clip, settings, fusion, request, cache_dir):
    path = request.getfixturevalue(clip)
    fixed = open_video(path, settings, cache_dir=cache_dir, workers=1)
    adaptive = open_video(path, settings, cache_dir=cache_dir, workers=1, adaptive_keyframes=True)
    assert fixed.scan.scene_cuts == adaptive.keyframe_cuts == [CUT] and fixed.keyframe_cuts == []
    assert fixed.scan.gop_starts == [0, 60]
    assert spanning(fixed.entries(fixed.plan(fusion=fusion)))  # without: a Δ-frame mixes the shots

    plan = adaptive.plan(fusion=fusion)
    entries = list(adaptive.entries(plan))
    assert [e.index for e in entries if isinstance(e, IFrame)] == [0, CUT, 60]
    assert not spanning(entries)
    after = next(e for e in entries if isinstance(e, PFrame) and e.index > CUT)
    assert after.ref_index == CUT and np.median(after.mv[24:-24, 24:-24, 0]) == -2.0 * (after.index - CUT)
    # Exact accounting: the plan's tokens are those of what came out, one RGB frame more per cut.
    assert len(entries) == len(plan.entries)
    assert plan.visual_tokens == 210 * plan.rgb_frames + 10 * plan.delta_frames
    assert plan.rgb_frames == fixed.plan(fusion=fusion).rgb_frames + 1


def test_inspect_reports_the_cut_and_the_plans_with_it(cut_clip, cache_dir, cope_cli):
    common = [
        cut_clip,
        "--json",
        "--size",
        "128x128",
        "--gop",
        "60",
        "--fusion",
        "10",
        "--cache-dir",
        cache_dir,
    ]
    fixed = json.loads(cope_cli("inspect", *common).stdout)
    adaptive = json.loads(cope_cli("inspect", *common, "--adaptive-keyframes").stdout)
    assert fixed["scene_cuts"] == adaptive["scene_cuts"] == [CUT]
    # GOP 0: I0 P10…P50; GOP 1: I60 P70 P80. Adaptive: I0 P10…P40, I45 P55; GOP 1 the same.
    assert fixed["plans"]["cope_k1"] == {
        "visual_tokens": 2 * 210 + 7 * 10,
        "rgb_frames": 2,
        "delta_frames": 7,
    }
    assert adaptive["plans"]["cope_k1"] == {
        "visual_tokens": 3 * 210 + 7 * 10,
        "rgb_frames": 3,
        "delta_frames": 7,
    }
