"""Scene building blocks: backgrounds, object looks, start positions, and the per-second moves
that plans combine into trajectories. Positions and distances are fractions of the frame."""

from __future__ import annotations

import colorsys
import math

import numpy as np

from cope.motionqa.render import COLOURS, SHAPES, Background
from cope.motionqa.spec import (
    BACKGROUND_FAMILIES,
    BOUNDS,
    HELD_OUT_PAIRS,
    MAX_SPEED,
    MIN_SPEED,
    PLACE_BOX,
    SUBJECT_BOX,
    VECTOR,
)


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [p for p in pairs if p not in HELD_OUT_PAIRS] if split == "train" else pairs


def _binned(rng: np.random.Generator, split: str, edges: np.ndarray) -> float:
    """A value from interleaved bins: train draws from the even bins, val/test from the odd ones."""
    parity = 0 if split == "train" else 1
    bins = len(edges) - 1
    k = 2 * int(rng.integers((bins - parity + 1) // 2)) + parity
    return float(edges[k] + rng.random() * (edges[k + 1] - edges[k]))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def draw_background(rng: np.random.Generator, split: str) -> Background:
    """Low-contrast, desaturated textures, so saturated objects stay salient. Val/test hue, angle
    and scale come from bins train never uses."""
    hue = _binned(rng, split, np.linspace(0, 360, 13)) / 360
    sat, val = rng.uniform(0.05, 0.25), rng.uniform(0.35, 0.7)
    val_b = float(np.clip(val + rng.choice([-1, 1]) * rng.uniform(0.08, 0.2), 0.25, 0.8))
    return Background(
        family=str(rng.choice(BACKGROUND_FAMILIES)),
        colour_a=_hsv(hue, sat, val),
        colour_b=_hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.05, 0.25), val_b),
        angle=round(_binned(rng, split, np.linspace(0, 180, 13)), 3),
        scale=round(_binned(rng, split, np.geomspace(0.05, 0.3, 7)), 4),
        grain=round(float(rng.uniform(9, 15)), 3),
        seed=int(rng.integers(2**31)),
    )


def size_range(count: int) -> tuple[float, float]:
    return {1: (0.16, 0.28), 2: (0.15, 0.24), 3: (0.14, 0.2)}[min(count, 3)]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)


def draw_looks(rng: np.random.Generator, split: str, count: int) -> list[dict]:
    """Looks of ``count`` objects with distinct colours (no held-out colour–shape pair in train)."""
    pairs = allowed_pairs(split)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    lo, hi = size_range(count)
    looks = []
    for colour in colours:
        shapes = [s for c, s in pairs if c == colour]
        looks.append(draw_look(rng, str(colour), str(rng.choice(shapes)), lo, hi))
    return looks


def draw_look(rng: np.random.Generator, colour: str, shape: str, lo: float, hi: float) -> dict:
    return {
        "colour": colour,
        "shape": shape,
        "size": round(float(rng.uniform(lo, hi)), 4),
        "rgb": _jitter(rng, COLOURS[colour]),
        "texture_seed": int(rng.integers(2**31)),
    }


def apart(p: tuple[float, float], size: float, others: list[tuple[tuple[float, float], float]]) -> bool:
    return all(math.hypot(p[0] - q[0], p[1] - q[1]) >= 0.55 * (size + s) for q, s in others)


def place(
    rng: np.random.Generator, sizes: list[float], subject: int | None = None
) -> list[tuple[float, float]]:
    """Non-overlapping start centres; the subject (if any) inside SUBJECT_BOX, others in PLACE_BOX."""
    for _ in range(1000):
        placed: list[tuple[tuple[float, float], float]] = []
        for i, size in enumerate(sizes):
            box = SUBJECT_BOX if i == subject else PLACE_BOX
            for _ in range(200):
                p = (float(rng.uniform(*box)), float(rng.uniform(*box)))
                if apart(p, size, placed):
                    placed.append((p, size))
                    break
        if len(placed) == len(sizes):
            return [p for p, _ in placed]
    raise RuntimeError("could not place the objects without overlap")  # sizes are bounded: unreachable


def room(p: tuple[float, float], direction: str) -> float:
    """How far an object at ``p`` can go in ``direction`` before leaving BOUNDS."""
    return {
        "left": p[0] - BOUNDS[0],
        "right": BOUNDS[1] - p[0],
        "up": p[1] - BOUNDS[0],
        "down": BOUNDS[1] - p[1],
    }[direction]


def split_distance(rng: np.random.Generator, total: float, count: int) -> list[float]:
    """``total`` split over ``count`` seconds, each between MIN_SPEED and MAX_SPEED (speed changes)."""
    if not count * MIN_SPEED <= total + 1e-9 <= count * MAX_SPEED + 2e-9:
        raise ValueError(f"cannot split {total} over {count} seconds")
    extra = total - count * MIN_SPEED
    for _ in range(100):
        parts = MIN_SPEED + extra * rng.dirichlet(np.full(count, 2.0))
        if parts.max() <= MAX_SPEED:
            return [float(p) for p in parts]
    return [total / count] * count


def moving_count(rng: np.random.Generator, total: float, available: int, most: int | None = None) -> int:
    """How many seconds a move of ``total`` takes: any count keeping speeds in range."""
    lo = max(1, math.ceil(total / MAX_SPEED - 1e-9))
    hi = min(available, math.floor(total / MIN_SPEED + 1e-9), most or available)
    if lo > hi:
        raise ValueError(f"a move of {total} does not fit in {available} seconds")
    return int(rng.integers(lo, hi + 1))


def pick_seconds(rng: np.random.Generator, window: range, count: int) -> list[int]:
    """``count`` seconds of ``window``: a contiguous run or (half the time) with pauses between."""
    if count >= len(window) or rng.random() < 0.5:
        start = int(rng.integers(len(window) - count + 1))
        return list(window[start : start + count])
    return sorted(int(s) for s in rng.choice(list(window), size=count, replace=False))


def add_move(steps: np.ndarray, rng: np.random.Generator, vector, total: float, seconds: list[int]) -> None:
    """Add a move of length ``total`` along unit ``vector`` spread over ``seconds`` to ``steps``."""
    for s, dist in zip(seconds, split_distance(rng, total, len(seconds)), strict=True):
        steps[s] += np.asarray(vector) * dist


def track_from_steps(start: tuple[float, float], steps: np.ndarray) -> list[tuple[float, float]]:
    """Per-slot positions from per-second displacements (L, 2), rounded for stable JSON."""
    points = np.vstack([np.asarray(start)[None], np.asarray(start)[None] + np.cumsum(steps, axis=0)])
    return [(round(float(x), 4), round(float(y), 4)) for x, y in points]


def wander(rng: np.random.Generator, start: tuple[float, float], seconds: int) -> np.ndarray:
    """(seconds, 2) steps of an object no question asks about: still, or 1–2 moves (sometimes
    diagonal) that keep it inside BOUNDS."""
    last = seconds
    steps = np.zeros((last, 2))
    if rng.random() < 0.35 or last < 1:
        return steps
    pos, t = np.asarray(start, dtype=float), int(rng.integers(0, max(1, last // 2)))
    for _ in range(int(rng.integers(1, 3))):
        if t >= last:
            break
        diagonal = rng.random() < 0.3
        choices = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else list(VECTOR.values())
        vec = np.asarray(choices[int(rng.integers(len(choices)))], dtype=float)
        vec /= np.linalg.norm(vec)
        reach = min(_reach_along(pos, vec), 0.3, MAX_SPEED * min(3, last - t))
        if reach < 0.1:
            continue
        total = float(rng.uniform(0.1, reach))
        count = moving_count(rng, total, min(3, last - t))
        add_move(steps, rng, vec, total, list(range(t, t + count)))
        pos = pos + vec * total
        t += count + int(rng.integers(0, 2))
    return steps


def _reach_along(pos: np.ndarray, vec: np.ndarray) -> float:
    """Distance along unit ``vec`` from ``pos`` to the edge of BOUNDS."""
    limits = []
    for p, v in zip(pos, vec, strict=True):
        if v > 1e-9:
            limits.append((BOUNDS[1] - p) / v)
        elif v < -1e-9:
            limits.append((p - BOUNDS[0]) / -v)
    return max(0.0, min(limits))
