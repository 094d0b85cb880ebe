"""Rendering of MotionQA scenes: procedural backgrounds, object sprites, frames, and the video file.

A scene is defined in normalised coordinates, so the same scene renders at any resolution:
positions are fractions of the frame's width and height, sizes and texture scales are fractions of
the frame's shorter side (``unit``). Textures are hash-based value noise and closed-form patterns,
functions of those coordinates only, so a 640×360 render shows the same picture as a 128×128 one.

Speed: the background is rendered once per clip (a canvas wider than the frame when the camera
pans); each frame is a crop of it plus a few precomputed sprites blended into small regions.

Shapes: H, W frame size in pixels; S sprite side in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 30  # the canonical stream's frame rate: one slot every FPS frames (fusion s = 30)

# Saturated, well-separated object colours (RGB) and their answer names.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (240, 215, 25),
    "green": (30, 190, 50),
    "cyan": (20, 205, 225),
    "blue": (35, 70, 235),
    "purple": (170, 45, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
OBJECT_TEXTURE_SPACING = 0.025  # lattice of the texture inside objects (≈ 3 px at 128×128)


@dataclass(frozen=True)
class Background:
    """A procedural background texture; every length is in units of the frame's shorter side."""

    family: str  # "noise" | "stripes" | "checkers" | "gradient"
    colour_a: tuple[int, int, int]  # the two palette colours the pattern blends between
    colour_b: tuple[int, int, int]
    angle: float  # degrees: orientation of stripes, checkers and gradients
    scale: float  # stripe period / checker cell / noise lattice spacing
    grain: float  # amplitude (grey levels) of the fine noise every background carries
    seed: int  # hash seed of the noise lattices

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "colour_a": list(self.colour_a),
            "colour_b": list(self.colour_b),
            "angle": self.angle,
            "scale": self.scale,
            "grain": self.grain,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Background:
        return cls(
            d["family"],
            tuple(d["colour_a"]),
            tuple(d["colour_b"]),
            d["angle"],
            d["scale"],
            d["grain"],
            d["seed"],
        )


@dataclass
class SceneObject:
    """One object: its look, and its centre at every slot (whole second) of the clip.

    Between two slots the object moves in a straight line at constant speed; after the last slot
    it holds still. It is visible from slot ``appear`` until just before slot ``disappear``.
    """

    colour: str
    shape: str
    size: float  # bounding side, fraction of the frame's shorter side
    rgb: tuple[int, int, int]  # its exact colour (the named colour, slightly jittered)
    texture_seed: int
    positions: list[tuple[float, float]]  # (x, y) centre per slot, fractions of width and height; y down
    appear: int = 0  # first slot at which it is visible
    disappear: int | None = None  # first slot at which it is gone; None = stays to the end

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def visible_at(self, t: float) -> bool:
        return self.appear <= t and (self.disappear is None or t < self.disappear)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "rgb": list(self.rgb),
            "texture_seed": self.texture_seed,
            "positions": [list(p) for p in self.positions],
            "appear": self.appear,
            "disappear": self.disappear,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        return cls(
            d["colour"],
            d["shape"],
            d["size"],
            tuple(d["rgb"]),
            d["texture_seed"],
            [tuple(p) for p in d["positions"]],
            d["appear"],
            d["disappear"],
        )


@dataclass
class Scene:
    """Everything needed to render a clip. ``camera`` is the view's offset at each slot (fractions
    of the frame): a camera moving left (x decreasing) makes the scene content move right on screen.
    Object positions are on-screen positions (the camera's motion already applied)."""

    seconds: int
    background: Background
    camera: list[tuple[float, float]]
    objects: list[SceneObject] = field(default_factory=list)  # drawn in order: the last is on top

    @property
    def frames(self) -> int:
        return self.seconds * FPS

    def to_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "fps": FPS,
            "background": self.background.to_dict(),
            "camera": [list(c) for c in self.camera],
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            d["seconds"],
            Background.from_dict(d["background"]),
            [tuple(c) for c in d["camera"]],
            [SceneObject.from_dict(o) for o in d["objects"]],
        )


def interpolate(track: list[tuple[float, float]], t: float) -> tuple[float, float]:
    """Position at time ``t`` seconds on a track given per slot (linear between slots, held after)."""
    last = len(track) - 1
    s = min(int(math.floor(t)), last)
    if s >= last:
        return track[last]
    f = t - s
    (x0, y0), (x1, y1) = track[s], track[s + 1]
    return x0 + f * (x1 - x0), y0 + f * (y1 - y0)


# ---------------------------------------------------------------- textures


def _hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A uniform value in [0, 1) per integer lattice point: a pure function of (ix, iy, seed), so
    the texture does not depend on how large a region (or at what resolution) we render."""
    salt = (seed * 0xC2B2AE3D) & 0xFFFFFFFF  # any seed, no int64 overflow
    h = (ix.astype(np.int64) * 0x9E3779B1 + iy.astype(np.int64) * 0x85EBCA77 + salt) & 0xFFFFFFFF
    h = h.astype(np.uint64)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    return h.astype(np.float64) / 2.0**32


def value_noise(u: np.ndarray, v: np.ndarray, spacing: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] at coordinates (u, v) with lattice ``spacing`` (same units)."""
    gu, gv = u / spacing, v / spacing
    iu, iv = np.floor(gu), np.floor(gv)
    fu, fv = gu - iu, gv - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)  # smoothstep: no lattice creases
    c00 = _hash_uniform(iu, iv, seed)
    c10 = _hash_uniform(iu + 1, iv, seed)
    c01 = _hash_uniform(iu, iv + 1, seed)
    c11 = _hash_uniform(iu + 1, iv + 1, seed)
    return (c00 * (1 - fu) + c10 * fu) * (1 - fv) + (c01 * (1 - fu) + c11 * fu) * fv


def _pattern(bg: Background, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The family's blend weight in [0, 1] between ``colour_a`` and ``colour_b``."""
    theta = math.radians(bg.angle)
    along = u * math.cos(theta) + v * math.sin(theta)
    across = -u * math.sin(theta) + v * math.cos(theta)
    if bg.family == "noise":
        return 0.65 * value_noise(u, v, bg.scale, bg.seed) + 0.35 * value_noise(
            u, v, bg.scale / 2.7, bg.seed + 1
        )
    if bg.family == "stripes":
        wave = np.sin(2 * math.pi * along / bg.scale)
        return 0.5 + 0.5 * np.tanh(2.5 * wave)  # soft-edged square wave
    if bg.family == "checkers":
        cells = np.sin(math.pi * along / bg.scale) * np.sin(math.pi * across / bg.scale)
        return 0.5 + 0.5 * np.tanh(4.0 * cells)
    if bg.family == "gradient":
        ramp = 0.5 + 0.5 * np.tanh(along - 0.5 * (math.cos(theta) + math.sin(theta)))
        return 0.55 * ramp + 0.45 * value_noise(u, v, bg.scale, bg.seed)
    raise ValueError(f"unknown background family {bg.family!r}")


def render_background(
    bg: Background, height: int, width: int, unit: float, x0: int = 0, y0: int = 0
) -> np.ndarray:
    """(height, width, 3) uint8 canvas whose pixel (0, 0) is frame pixel (x0, y0) at camera rest."""
    cols = (np.arange(width, dtype=np.float64) + x0 + 0.5) / unit
    rows = (np.arange(height, dtype=np.float64) + y0 + 0.5) / unit
    u, v = np.meshgrid(cols, rows)
    w = _pattern(bg, u, v)[..., None]
    a, b = np.asarray(bg.colour_a, np.float64), np.asarray(bg.colour_b, np.float64)
    image = a * (1 - w) + b * w
    # Fine grain on every background: what the encoder's motion search locks on to when the camera pans.
    grain = (value_noise(u, v, 0.03, bg.seed + 7) - 0.5) * 2 * bg.grain
    return np.clip(image + grain[..., None], 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- sprites


def _polygon(vertices: list[tuple[float, float]], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the sample points."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (xa, ya), (xb, yb) = vertices[i], vertices[(i + 1) % n]
        crosses = (ya > y) != (yb > y)
        x_at = xa + (y - ya) * (xb - xa) / np.where(yb == ya, 1e-12, yb - ya)
        inside ^= crosses & (x < x_at)
    return inside


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a) + 0.08))  # nudged down: centred by area
    return out


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own coordinates: the bounding box is [−1, 1]², y down."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.86) & (np.abs(y) <= 0.86)  # area close to the circle's
    if shape == "triangle":
        return _polygon([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)], x, y)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "star":
        return _polygon(_star(), x, y)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass
class Sprite:
    """An object drawn once at the render resolution: colour premultiplied by alpha."""

    premultiplied: np.ndarray  # (S, S, 3) float32, colour · alpha
    transparency: np.ndarray  # (S, S, 1) float32, 1 − alpha


def make_sprite(obj: SceneObject, unit: float, supersample: int = 4) -> Sprite:
    side = max(4, int(round(obj.size * unit)))
    # Sample points on a supersampled grid; alpha = fraction inside (anti-aliased edges).
    fine = (np.arange(side * supersample) + 0.5) / (side * supersample) * 2 - 1
    x, y = np.meshgrid(fine, fine)
    inside = shape_mask(obj.shape, x, y).astype(np.float32)
    alpha = inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3))
    # A fine, contrasted texture that moves with the object: without it the encoder's motion
    # search finds little to match inside a flat shape and codes much of its motion as residual
    # (fused MVs pointed the right way for 84% of one-axis object moves with a faint texture, 99%
    # with this one, on the same 100 clips). Darker and lighter shades of one hue: the colour stays
    # nameable.
    coords = (np.arange(side) + 0.5) / unit
    u, v = np.meshgrid(coords, coords)
    t = value_noise(u, v, OBJECT_TEXTURE_SPACING, obj.texture_seed)[..., None].astype(np.float32)
    base = np.asarray(obj.rgb, np.float32)[None, None, :]
    dark, light = base * 0.55, base + (255 - base) * 0.4
    colour = dark * (1 - t) + light * t
    return Sprite(
        (colour * alpha[..., None]).astype(np.float32),
        (1.0 - alpha)[..., None].astype(np.float32),
    )


def _placement(side: int, cx: float, cy: float, height: int, width: int):
    """Frame and sprite slices of a ``side``-pixel sprite centred at pixel (cx, cy), clipped."""
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    if x0 >= x1 or y0 >= y1:
        return None
    frame_box = (slice(y0, y1), slice(x0, x1))
    sprite_box = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    return frame_box, sprite_box


def blend(frame: np.ndarray, sprite: Sprite, cx: float, cy: float) -> None:
    """Draw ``sprite`` centred at pixel (cx, cy) into ``frame`` (H, W, 3) uint8, in place, clipped."""
    boxes = _placement(sprite.premultiplied.shape[0], cx, cy, *frame.shape[:2])
    if boxes is None:
        return
    frame_box, sprite_box = boxes
    region = frame[frame_box].astype(np.float32)
    region *= sprite.transparency[sprite_box]
    region += sprite.premultiplied[sprite_box]
    frame[frame_box] = (region + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- frames and video


def render_frames(scene: Scene, width: int, height: int) -> Iterator[np.ndarray]:
    """The clip's frames, (height, width, 3) uint8 RGB, in display order."""
    unit = float(min(width, height))
    cams = np.asarray(scene.camera, dtype=np.float64)
    # Canvas covering every camera offset: pixel (0, 0) of the canvas is frame pixel (x_lo, y_lo).
    x_lo = int(math.floor(cams[:, 0].min() * width)) - 1
    y_lo = int(math.floor(cams[:, 1].min() * height)) - 1
    canvas_w = int(math.ceil(cams[:, 0].max() * width)) + 1 - x_lo + width
    canvas_h = int(math.ceil(cams[:, 1].max() * height)) + 1 - y_lo + height
    canvas = render_background(scene.background, canvas_h, canvas_w, unit, x_lo, y_lo)
    sprites = [make_sprite(obj, unit) for obj in scene.objects]
    for f in range(scene.frames):
        t = f / FPS
        cx, cy = interpolate(scene.camera, t)
        ox, oy = int(round(cx * width)) - x_lo, int(round(cy * height)) - y_lo
        frame = canvas[oy : oy + height, ox : ox + width].copy()
        for obj, sprite in zip(scene.objects, sprites, strict=True):
            if obj.visible_at(t):
                x, y = interpolate(obj.positions, t)
                blend(frame, sprite, x * width, y * height)
        yield frame


def object_footprint(obj: SceneObject, slot: int, width: int, height: int) -> np.ndarray:
    """(height, width) bool: the pixels object ``obj`` covers at ``slot`` (alpha ≥ 0.5)."""
    mask = np.zeros((height, width), dtype=bool)
    if obj.visible_at(slot):
        sprite = make_sprite(obj, float(min(width, height)))
        x, y = obj.positions[slot]
        boxes = _placement(sprite.transparency.shape[0], x * width, y * height, height, width)
        if boxes is not None:
            mask[boxes[0]] = sprite.transparency[boxes[1]][..., 0] <= 0.5
    return mask


def object_mask(scene: Scene, index: int, slot: int, width: int, height: int) -> np.ndarray:
    """(height, width) bool: pixels of object ``index`` at ``slot`` not covered by objects above it."""
    own = object_footprint(scene.objects[index], slot, width, height)
    for above in scene.objects[index + 1 :]:
        own &= ~object_footprint(above, slot, width, height)
    return own


def write_video(
    frames: Iterator[np.ndarray], path: Path, width: int, height: int, gop: int, quantizer: int
) -> None:
    """Encode frames as the canonical stream (MPEG-4 Part 2, I/P only, GOP ``gop``, pinned quantiser).

    Writing the canonical format directly is the fastest end-to-end path (measured in
    docs/motionqa.md), and the file can also be read with ``open_video(..., no_transcode=True)``.
    """
    options = {
        "g": str(gop),
        "bf": "0",
        "sc_threshold": "1000000000",  # I-frames exactly every GOP, never at a "scene cut"
        "qmin": str(quantizer),
        "qmax": str(quantizer),
    }
    encode_mp4(frames, path, "mpeg4", options, width, height)


def encode_mp4(
    frames: Iterable[np.ndarray], path: Path, codec: str, options: dict[str, str], width: int, height: int
) -> None:
    """RGB frames (H, W, 3) uint8 → an MP4 of ``codec`` (yuv420p, FPS) with the encoder ``options``."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.codec_context.thread_count = 1  # one thread: the bitstream is the same on every machine
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def patch_labels(scene: Scene, slot: int, grid: int, side: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch ground truth of one slot's frame: ((grid, grid) colour ids, (grid, grid) shape ids).

    The frame is rendered at ``side``×``side`` (the tiny vision tower's input) and cut into
    grid × grid patches; a patch takes the label of the visible object covering most of it when
    that covers at least a quarter of the patch, else 0 (background). Colour ids are 1 + the index
    in ``COLOURS``, shape ids 1 + the index in ``SHAPES``: the targets of the tiny vision tower's
    pre-training (there is no pretrained SigLIP to start from here).
    """
    cell = side // grid
    colours = np.zeros((grid, grid), dtype=np.int64)
    shapes = np.zeros((grid, grid), dtype=np.int64)
    best = np.zeros((grid, grid), dtype=np.float64)
    names = list(COLOURS)
    for index, obj in enumerate(scene.objects):
        cover = object_mask(scene, index, slot, side, side)[: grid * cell, : grid * cell]
        share = cover.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
        take = (share >= 0.25) & (share > best)
        colours[take] = 1 + names.index(obj.colour)
        shapes[take] = 1 + SHAPES.index(obj.shape)
        best = np.maximum(best, np.where(take, share, best))
    return colours, shapes
