"""benchmarks/pan_transfer.py: the clip set, and which way a pan moves the content and the MVs."""

from __future__ import annotations

import importlib.util
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cope.codec import CanonicalSettings, PFrame, open_video

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "pan_transfer.py"
_SPEC = importlib.util.spec_from_file_location("pan_transfer", _PATH)
pan_transfer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(pan_transfer)


def textured_still(width: int = 400, height: int = 400) -> Image.Image:
    """Smooth random texture: something for the encoder's motion search to lock on to."""
    noise = np.random.default_rng(0).uniform(0, 255, (height // 8, width // 8, 3)).astype(np.uint8)
    return Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)


def stripe_position(frame: np.ndarray, axis: int) -> int:
    """Where the one bright line lies in a frame: its column (axis 1) or row (axis 0)."""
    return int(frame.sum(axis=2).sum(axis=1 - axis).argmax())


@pytest.mark.parametrize(
    ("direction", "axis", "sign"), [("right", 1, -1), ("left", 1, 1), ("up", 0, 1), ("down", 0, -1)]
)
def test_content_moves_against_the_camera(direction, axis, sign):
    """Camera pans right → content moves left on screen; pans up → content moves down."""
    scale = pan_transfer.source_scale(400, 400, max_speed=20.0)
    # A line through the window's centre at t = 0.5 s: in view during the first second.
    x0, y0, x1, y1 = pan_transfer.window_box(400, 400, scale, direction, 20.0, 0.5)
    still = np.zeros((400, 400, 3), dtype=np.uint8)
    if axis == 1:
        still[:, round((x0 + x1) / 2)] = 255  # a vertical line
    else:
        still[round((y0 + y1) / 2), :] = 255  # a horizontal line
    frames = list(islice(pan_transfer.pan_frames(Image.fromarray(still), scale, direction, 20.0), 31))
    moved = stripe_position(frames[30], axis) - stripe_position(frames[0], axis)
    assert abs(moved - sign * 20) <= 1  # 20 output px in one second, against the camera


def test_windows_stay_inside_the_still():
    width, height, fastest = 640, 272, 35.0
    scale = pan_transfer.source_scale(width, height, fastest)
    for direction in pan_transfer.CAMERA_STEP:
        for t in (0.0, pan_transfer.SECONDS):
            x0, y0, x1, y1 = pan_transfer.window_box(width, height, scale, direction, fastest, t)
            assert 0 <= x0 < x1 <= width + 1e-9 and 0 <= y0 < y1 <= height + 1e-9


def test_clip_set_is_balanced_and_deterministic():
    footage = [Path("a.mp4"), Path("b.mp4")]
    specs = pan_transfer.clip_specs(footage, stills=2, speeds=[10.0, 25.0, 35.0], seed=0)
    assert len(specs) == 24
    assert Counter(s["direction"] for s in specs) == {d: 6 for d in ("left", "right", "up", "down")}
    assert Counter(s["b_frames"] for s in specs) == {0: 12, 2: 12}
    assert {s["footage"] for s in specs} == {"a.mp4", "b.mp4"}
    assert specs == pan_transfer.clip_specs(footage, stills=2, speeds=[10.0, 25.0, 35.0], seed=0)


def test_motion_vectors_point_the_way_the_camera_pans(tmp_path):
    """Through H.264 with B-frames and the canonical transcode: a pan right gives dx > 0 (MVs point
    to where the content was, i.e. with the camera), a pan down dy > 0."""
    still = textured_still()
    scale = pan_transfer.source_scale(still.width, still.height, max_speed=25.0)
    for direction, axis, sign in (("right", 0, 1), ("down", 1, 1)):
        path = tmp_path / f"{direction}.mp4"
        frames = islice(pan_transfer.pan_frames(still, scale, direction, 25.0), 61)  # 2 s
        pan_transfer.write_h264(frames, path, b_frames=2)
        video = open_video(path, CanonicalSettings(), cache_dir=tmp_path / "cache")
        assert video.source.frame_types["B"] > 0
        mvs = [e.mv for e in video.entries(video.plan(fusion=30)) if isinstance(e, PFrame)]
        assert len(mvs) == 2
        assert all(sign * np.median(mv[..., axis]) > 0 for mv in mvs)


def test_run_asks_the_dense_model_with_its_rgb_frames(tmp_path, sample_video):
    """With ``--dense-model``, every clip is also asked of that model in mode dense; its row sits
    beside CoPE's and the I-frames-only one (here the bundled model plays both parts)."""
    from argparse import Namespace

    from cope.model.videolm import resolve_model

    bundled = str(resolve_model(None))
    args = Namespace(
        footage=[sample_video],
        stills=1,
        speeds=[25.0],
        seed=0,
        max_new_tokens=8,
        model=bundled,
        dense_model=bundled,
    )
    report = pan_transfer.run(args, tmp_path)
    assert list(report["summary"]) == ["CoPE k1 + Δ", "I-frames only k1", pan_transfer.DENSE_CONFIG]
    assert all(s["clips"] == 4 for s in report["summary"].values())
    tokens = {
        config: {c["answers"][config]["visual_tokens"] for c in report["clips"]}
        for config in report["summary"]
    }
    # CoPE-Tiny on an 8-s clip: 8 RGB frames × 56 = 448; 1 keyframe (56) + 7 Δ-frames × 10 = 126.
    assert tokens == {"CoPE k1 + Δ": {126}, "I-frames only k1": {56}, pan_transfer.DENSE_CONFIG: {448}}
    for config, summary in report["summary"].items():
        ends = [c["answers"][config]["end_after_choice"] for c in report["clips"]]
        assert all(0.0 <= p <= 1.0 for p in ends)
        assert summary["ends_after_choice"] == 100.0 * sum(p > 0.5 for p in ends) / 4
    # The bundled model names each pan of the sample video in one word and surely ends its turn there.
    cope = [c["answers"]["CoPE k1 + Δ"] for c in report["clips"]]
    assert [a["answer"] for a in cope] == [c["direction"] for c in report["clips"]]
    assert all(a["end_after_choice"] > 0.99 for a in cope)
