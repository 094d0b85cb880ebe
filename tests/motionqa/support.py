"""Helpers of the MotionQA tests: generating a split, and a direction label written independently
of the generator's."""

from __future__ import annotations

from pathlib import Path

from cope.motionqa import generate_split


def generated(out: Path, split: str = "test", clips: int = 10, **kwargs) -> dict:
    return generate_split(out, split, clips, **kwargs)


def label(dx, dy):
    """Direction of an axis-aligned displacement (y down), written independently of the generator."""
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
