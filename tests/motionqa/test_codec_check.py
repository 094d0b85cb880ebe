"""MotionQA and the codec: the canonical stream's motion vectors follow the trajectories, and
``cope motionqa verify`` reports that agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cope.cli import main
from cope.codec import CanonicalSettings, PFrame, open_video
from cope.motionqa.questions import make_clip
from cope.motionqa.render import object_mask, render_frames, write_video
from cope.motionqa.spec import DIRECTIONS
from tests.motionqa.support import label


def _content_direction(mv: np.ndarray, mask: np.ndarray) -> str:
    dx, dy = -np.median(mv[mask], axis=0)  # contract sign: content moving right → dx < 0
    return label(dx, dy)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_motion_vectors_point_where_the_subject_moves(direction, tmp_path):
    clip = make_clip("test", 2, 1, "direction", direction)
    path = tmp_path / "clip.mp4"
    write_video(render_frames(clip.scene, 128, 128), path, 128, 128, 240, 3)
    video = open_video(path, CanonicalSettings(width=128, height=128), cache_dir=tmp_path / "cache")
    subject = len(clip.scene.objects) - 1
    track = clip.scene.objects[subject].positions
    checked = 0
    for entry in video.entries(video.plan(fusion=30, keyframes_per_gop=1)):
        if isinstance(entry, PFrame):
            slot = entry.index // 30
            dx, dy = np.subtract(track[slot], track[slot - 1])
            if math.hypot(dx, dy) > 0.05:
                mask = object_mask(clip.scene, subject, slot, 128, 128)
                assert _content_direction(entry.mv, mask) == direction
                checked += 1
    assert checked >= 1


def test_camera_pan_moves_the_content_the_other_way(tmp_path):
    clip = make_clip("test", 0, 1, "pan", "left")
    path = tmp_path / "pan.mp4"
    write_video(render_frames(clip.scene, 128, 128), path, 128, 128, 240, 3)
    video = open_video(path, CanonicalSettings(width=128, height=128), cache_dir=tmp_path / "cache")
    cam = clip.scene.camera
    checked = 0
    for entry in video.entries(video.plan(fusion=30, keyframes_per_gop=1)):
        if isinstance(entry, PFrame) and cam[entry.index // 30][0] < cam[entry.index // 30 - 1][0] - 0.05:
            background = np.ones((128, 128), dtype=bool)
            for i in range(len(clip.scene.objects)):
                background &= ~object_mask(clip.scene, i, entry.index // 30, 128, 128)
            assert _content_direction(entry.mv, background) == "right"  # camera left → content right
            checked += 1
    assert checked >= 3


def test_verify_reports_agreement(test_split, tmp_path, capsys):
    code = main(
        ["motionqa", "verify", str(test_split), "--split", "test", "--cache-dir", str(tmp_path), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["clips"] == 10
    assert report["object_moves"] > 0 and report["object_agreement"] >= 0.9
    assert report["pan_moves"] > 0 and report["pan_agreement"] == 1.0
