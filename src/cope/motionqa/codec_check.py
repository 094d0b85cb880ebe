"""Codec check: do the canonical codec's fused motion vectors follow the ground-truth trajectories
(``cope motionqa verify``)?"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cope.errors import CopeInputError
from cope.motionqa.render import FPS, Scene, object_footprint, object_mask
from cope.motionqa.spec import STILL
from cope.motionqa.truth import step_direction


def motion_vector_agreement(
    out_dir: str | Path, split: str, clips: int | None = None, cache_dir: str | Path | None = None
) -> dict:
    """How often the codec's fused motion vectors point the way the ground truth moved.

    Each clip goes through the canonical codec path (``open_video`` with the split's size rounded
    up to multiples of 16, fusion 30, one keyframe per GOP). For every Δ-frame at slot s and every
    object that moved along one axis by ≥ 0.05 of the frame during second s − 1 (and is visible
    and on top at slot s), the median MV over the object's pixels, negated (contract sign: content
    moving right gives dx < 0), must have the same direction label; for camera pans, the median
    over background pixels must point opposite to the camera.
    """
    from cope.codec import PFrame, open_video

    meta_path = Path(out_dir) / f"{split}-meta.jsonl"
    if not meta_path.is_file():
        raise CopeInputError(f"{meta_path}: no such file (generate the {split} split first)")
    metas = [json.loads(line) for line in meta_path.read_text().splitlines() if line.strip()]
    metas = metas[:clips] if clips else metas
    counts = {"object": [0, 0], "pan": [0, 0]}  # [agree, total]
    started = time.perf_counter()
    for meta in metas:
        scene = Scene.from_dict(meta["scene"])
        video = open_video(
            Path(out_dir) / meta["video"], _canonical_for(Path(out_dir), split), cache_dir=cache_dir
        )
        height, width = video.info.height, video.info.width
        for entry in video.entries(video.plan(fusion=FPS, keyframes_per_gop=1)):
            if not isinstance(entry, PFrame) or entry.index % FPS:
                continue
            slot = entry.index // FPS
            for kind, truth, mask in _moves_at(scene, slot, width, height):
                moved = -np.median(entry.mv[mask], axis=0)  # content motion in pixels
                got = step_direction(moved[0] / width, moved[1] / height)
                counts[kind][0] += got == truth
                counts[kind][1] += 1
    return {
        "clips": len(metas),
        "object_moves": counts["object"][1],
        "object_agreement": round(counts["object"][0] / max(1, counts["object"][1]), 4),
        "pan_moves": counts["pan"][1],
        "pan_agreement": round(counts["pan"][0] / max(1, counts["pan"][1]), 4),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def _canonical_for(out_dir: Path, split: str):
    from cope.codec import CanonicalSettings

    try:
        width, height = json.loads((out_dir / "manifest.json").read_text())["splits"][split]["size"]
    except (OSError, ValueError, KeyError, TypeError):
        width, height = 128, 128
    return CanonicalSettings(width=-(-width // 16) * 16, height=-(-height // 16) * 16)


def _moves_at(scene: Scene, slot: int, width: int, height: int):
    """(kind, true direction of the content, pixel mask) of the clear one-axis moves into ``slot``."""
    cam = np.subtract(scene.camera[slot], scene.camera[slot - 1])
    if np.hypot(*cam) >= 0.05:
        background = np.ones((height, width), dtype=bool)
        for obj in scene.objects:
            for s in (slot - 1, slot):
                background &= ~object_footprint(obj, s, width, height)
        yield "pan", step_direction(-cam[0], -cam[1]), background
        return
    for i, obj in enumerate(scene.objects):
        step = np.subtract(obj.positions[slot], obj.positions[slot - 1])
        one_axis = min(abs(step)) < STILL
        if np.hypot(*step) < 0.05 or not one_axis or not (obj.visible_at(slot - 1) and obj.visible_at(slot)):
            continue
        mask = object_mask(scene, i, slot, width, height)
        if mask.sum() >= 0.5 * object_footprint(obj, slot, width, height).sum():  # mostly unoccluded
            yield "object", step_direction(*step), mask
