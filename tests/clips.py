"""Synthetic clips with known motion, made by the tests themselves (plain helpers, no fixtures)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SIDE = 128  # small canonical frames keep the suite fast; motion maths is size-independent
# x264 with 2 B-frames in a fixed pattern (no adaptive B decision, no scene-cut I-frames) and a
# GOP of 30: I B B P B B P … P B P, then the next I at 30 (``write_translation_clip`` options).
H264_BFRAMES = {"bf": "2", "g": "30", "crf": "10", "x264-params": "b-adapt=0:scenecut=0"}


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (float32, 0–255), detailed enough for motion search."""
    rng = np.random.default_rng(seed)
    tex = rng.random((height, width, 3)).astype(np.float32) * 255
    for _ in range(12):  # smooth enough that bilinear half-pel interpolation is accurate
        tex = (tex + np.roll(tex, 1, 0) + np.roll(tex, -1, 0) + np.roll(tex, 1, 1) + np.roll(tex, -1, 1)) / 5
    # Studio range 16–235: no clipping in the decoder, so residuals are pure dequantised DCT.
    return 16 + (tex - tex.min()) / (tex.max() - tex.min()) * 219


def write_translation_clip(
    path: Path,
    frames: int,
    dx: float,
    dy: float = 0.0,
    side: int = SIDE,
    codec: str = "libx264",
    cut: int | None = None,
    **options,
) -> Path:
    """A texture translating by (dx, dy) pixels per frame (multiples of 0.5), losslessly encoded.

    Half-pel shifts are exact: the texture is drawn at 2× and every output pixel averages a 2×2
    block, so shifting by one fine pixel moves the picture by exactly half a pixel. From frame
    ``cut`` on, another texture moves the same way: a hard scene cut.
    """
    margin = int(2 * max(abs(dx), abs(dy)) * frames) + 8
    shots = [
        texture(2 * side + 2 * margin, 2 * side + 2 * margin, seed)
        for seed in (0, 1)[: 1 + (cut is not None)]
    ]
    options = {"crf": "0", **options} if codec == "libx264" else options
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30, options=options)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        for i in range(frames):
            # Content moves by +d per frame → the crop window moves by −d.
            oy, ox = margin - int(round(2 * dy * i)), margin - int(round(2 * dx * i))
            fine = shots[1] if cut is not None and i >= cut else shots[0]
            crop = fine[oy : oy + 2 * side, ox : ox + 2 * side]
            image = crop.reshape(side, 2, side, 2, 3).mean(axis=(1, 3))
            frame = av.VideoFrame.from_ndarray(np.rint(image).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def awkward_clip(
    path: Path, size=(96, 64), rotation=0, vfr=False, codec="libx264", pix_fmt="yuv420p"
) -> Path:
    """45 frames whose left half is red (it tells the orientation), at an odd size, with display
    rotation, variable frame rate or another codec as asked."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt if codec != "gif" else "rgb8"
        if rotation:
            stream.set_display_rotation(rotation)
        stream.time_base = Fraction(1, 1000)
        t = 0
        for i in range(45):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[:, : size[0] // 2] = (200, 30, 30)  # left half red: tells us the orientation
            image[:, :, 1] = (i * 5) % 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += (20 if i % 2 else 50) if vfr else 33
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
