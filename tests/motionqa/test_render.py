"""MotionQA rendering: resolution-independent pictures, and scenes that round-trip through JSON."""

from __future__ import annotations

import json

import numpy as np

from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.render import Scene, render_frames


def test_rendering_is_resolution_independent():
    clip = make_clip("test", 7, 2, *schedule("test", 2, 8)[7])
    small = next(render_frames(clip.scene, 128, 128)).astype(np.float32)
    large = next(render_frames(clip.scene, 256, 256)).astype(np.float32)
    halved = large.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - small).mean() < 6  # same picture; only edge anti-aliasing differs
    wide = next(render_frames(clip.scene, 320, 180))
    assert wide.shape == (180, 320, 3)


def test_scene_round_trips_through_json():
    clip = make_clip("val", 3, 0, "appear", ("red", "star"))
    again = Scene.from_dict(json.loads(json.dumps(clip.scene.to_dict())))
    assert again == clip.scene
