"""The codec primitives a VideoLM consumes, as plain dataclasses (numpy arrays, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamInfo:
    """Summary of one video stream (the ``STREAM`` object of ``cope inspect --json``)."""

    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    gops: int
    frame_types: dict[str, int] = field(default_factory=lambda: {"I": 0, "P": 0, "B": 0})

    def to_dict(self) -> dict:
        return {
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 6),
            "frames": self.frames,
            "duration_s": round(self.duration_s, 6),
            "gops": self.gops,
            "frame_types": dict(self.frame_types),
        }


@dataclass
class IFrame:
    """A frame that becomes image tokens: the GOP's I-frame or an extra decoded keyframe."""

    index: int  # display-order index in the canonical stream
    pts: float  # seconds
    gop: int
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class PFrame:
    """A (fused) P-frame that becomes Δ-tokens: motion and residual against frame ``ref_index``.

    ``mv[y, x] = (dx, dy)``: pixel (x, y) of this frame comes from (x + dx, y + dy) of the
    reference. ``residual`` = this frame − the reference's prediction (RGB, signed).
    """

    index: int
    ref_index: int
    pts: float
    gop: int
    mv: np.ndarray  # (H, W, 2) float32, pixels
    residual: np.ndarray  # (H, W, 3) int16, −255…255
    rgb: np.ndarray | None = None  # (H, W, 3) uint8 decoded frame, when asked for (pre-training)
    # Unfused P-frames only: (H/16, W/16) bool, macroblocks coded intra (no vector; their
    # residual is the whole block). None after fusion, where every pixel has a traced origin.
    intra: np.ndarray | None = None


@dataclass
class Gop:
    """The sampled entries of one group of pictures, in temporal order."""

    index: int
    start: int  # display index of its I-frame
    entries: list[IFrame | PFrame]
