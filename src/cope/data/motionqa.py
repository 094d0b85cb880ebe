"""MotionQA: a procedural video QA benchmark whose motion questions the first frame cannot answer.

Every clip is a textured background with 1–3 coloured shapes, rendered at 30 fps and written as the
canonical MPEG-4 stream. Time is organised in **slots**: whole seconds 0, 1, …, L (L = seconds − 1),
the frames 0, 30, …, 30·L a CoPE plan with fusion s = 30 samples. Objects and the camera move with a
constant velocity inside each second, so a trajectory is fully given by its positions at the slots,
and every answer is computed from those positions (``answer_for``).

Each clip follows one **plan** (what happens in it, chosen so each question type gets the same
number of clips), asks the plan's motion question(s) and one appearance question:

| plan       | motion question types                 | answers                        |
|------------|---------------------------------------|--------------------------------|
| direction  | direction                             | left / right / up / down       |
| halves     | first_half, second_half               | left / right / up / down       |
| reverse    | reverse                               | yes / no                       |
| changes    | direction_changes                     | 0 / 1 / 2 / 3                  |
| most_moved | most_moved                            | one of the clip's objects      |
| fastest    | fastest                               | one of the clip's objects      |
| order      | order_first                           | one of the clip's objects      |
| pan        | pan                                   | left / right / up / down       |
| appear     | appear_colour, appear_shape           | a colour / a shape             |
| disappear  | disappear                             | one of the clip's objects      |
| (every)    | colour, shape (appearance, control)   | a colour / a shape             |

**Why frame 0 cannot answer a motion question (by construction).** A clip's answers are drawn from
split-level "bags" (random permutations of the answer set, one after another). The clip's own
``layout`` stream draws everything frame 0 shows (background, objects' looks, start positions) and
nothing else; motion and wording have streams of their own, and options are fixed vocabularies or
the frame-0 objects in scene order. Every answer is feasible from every start layout (the subject
of a direction question starts in a central box from which all four directions have room), so
nothing is redrawn because of the answer. Hence for every ``needs_motion`` question the answer is
statistically independent of frame 0 together with the question text and options: a model that
sees only the I-frame at t = 0 is at chance. Objects that appear later are not in frame 0, so their
colour/shape questions are needs-motion too; colour/shape questions about objects visible at t = 0
are the appearance control (``needs_motion = False``).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import re
import tempfile
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cope.codec.canonical import CanonicalSettings
from cope.data.motionqa_render import (
    COLOURS,
    FPS,
    SHAPES,
    Background,
    Scene,
    SceneObject,
    render_frames,
    write_video,
)
from cope.errors import CopeInputError

GENERATOR_VERSION = "1"
SPLITS = ("train", "val", "test")
_SPLIT_KEY = {"train": 0, "val": 1, "test": 2}

DIRECTIONS = ("left", "right", "up", "down")
_VECTOR = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
YES_NO = ("yes", "no")
COUNTS = ("0", "1", "2", "3")

# Geometry, in fractions of the frame side (x of the width, y of the height).
BOUNDS = (0.1, 0.9)  # every moving object's centre stays inside this range on both axes
SUBJECT_BOX = (0.45, 0.55)  # start of the subject of direction-type questions: room all round
PLACE_BOX = (0.15, 0.85)  # start of every other object
SUBJECT_REACH = BOUNDS[1] - SUBJECT_BOX[1]  # 0.35: largest excursion a subject may make
MIN_SPEED, MAX_SPEED = 0.08, 0.25  # per second, whenever something moves
STILL = 0.01  # a per-second displacement below this counts as "not moving"
WINNER_MARGIN = 2.0  # "moves most" / "fastest": the winner beats the runner-up by at least this factor

# Train objects never use these colour–shape pairs; val and test use every pair. One pair per
# shape, each with another colour: drawing a colour uniformly, then a shape uniformly among the
# colour's allowed ones, keeps both colours and shapes uniform in train.
HELD_OUT_PAIRS = frozenset(
    {("red", "square"), ("yellow", "star"), ("green", "circle"), ("cyan", "triangle"), ("blue", "diamond")}
)
BACKGROUND_FAMILIES = ("noise", "stripes", "checkers", "gradient")

PLANS = (
    "direction",
    "halves",
    "reverse",
    "changes",
    "most_moved",
    "fastest",
    "order",
    "pan",
    "appear",
    "disappear",
)

# Whether a question type needs more than the RGB frame at t = 0 (see the module docstring).
NEEDS_MOTION = {
    "direction": True,
    "first_half": True,
    "second_half": True,
    "reverse": True,
    "direction_changes": True,
    "most_moved": True,
    "fastest": True,
    "order_first": True,
    "pan": True,
    "appear_colour": True,
    "appear_shape": True,
    "disappear": True,
    "colour": False,
    "shape": False,
}

# Types whose answer is one of the clip's objects ("red circle"); their options list the objects.
OBJECT_ANSWER_TYPES = ("most_moved", "fastest", "order_first", "disappear")

# Paraphrases per question type. {obj}: "red circle"; {colour}, {shape}: one attribute;
# {mid}: the length of the first half in seconds. docs/motionqa.md lists them all.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "direction": (
        "Which way does the {obj} move?",
        "In which direction is the {obj} moving?",
        "Where does the {obj} go: left, right, up or down?",
        "Which direction does the {obj} travel in this video?",
        "Is the {obj} moving left, right, up or down?",
    ),
    "first_half": (
        "Which way does the {obj} move in the first half of the video?",
        "At the beginning of the video, which direction is the {obj} moving?",
        "During the first {mid} seconds, where does the {obj} move?",
        "Early in the clip, which way is the {obj} going?",
    ),
    "second_half": (
        "Which way does the {obj} move in the second half of the video?",
        "Towards the end of the video, which direction is the {obj} moving?",
        "After the first {mid} seconds, where does the {obj} move?",
        "Late in the clip, which way is the {obj} going?",
    ),
    "reverse": (
        "Does the {obj} reverse direction?",
        "Does the {obj} turn around and go back the way it came?",
        "Does the {obj} ever move back in the opposite direction?",
        "Does the {obj} change to the opposite direction at some point?",
    ),
    "direction_changes": (
        "How many times does the {obj} change direction?",
        "How often does the {obj} change its direction of motion?",
        "Count the direction changes of the {obj}. How many are there?",
        "How many turns does the {obj} make?",
    ),
    "most_moved": (
        "Which object moves the farthest?",
        "Which object travels the greatest distance?",
        "Which object moves the most?",
        "Which of the objects covers the most distance?",
    ),
    "fastest": (
        "Which object moves fastest?",
        "Which object is the fastest?",
        "Which object reaches the highest speed?",
        "Which object moves the quickest at any moment?",
    ),
    "order_first": (
        "Which object starts moving first?",
        "Which object begins to move before the others?",
        "Which object is the first to move?",
        "Which object sets off first?",
    ),
    "pan": (
        "Which way does the camera pan?",
        "In which direction does the camera move?",
        "Is the camera panning left, right, up or down?",
        "Where does the camera pan to?",
    ),
    "appear_colour": (
        "What colour is the object that appears?",
        "An object appears during the video. What colour is it?",
        "What is the colour of the object that shows up later?",
        "What color is the new object that appears?",
    ),
    "appear_shape": (
        "What shape is the object that appears?",
        "An object appears during the video. What shape is it?",
        "What is the shape of the object that shows up later?",
        "Which shape appears partway through the video?",
    ),
    "disappear": (
        "Which object disappears?",
        "Which object vanishes during the video?",
        "Which of the objects is gone by the end?",
        "Which object is no longer visible at the end of the video?",
    ),
    "colour": (
        "What colour is the {shape}?",
        "What is the colour of the {shape}?",
        "What color is the {shape} in the video?",
        "Which colour does the {shape} have?",
    ),
    "shape": (
        "What shape is the {colour} object?",
        "What is the shape of the {colour} object?",
        "Which shape is {colour}?",
        "What kind of shape is the {colour} one?",
    ),
}


@dataclass
class Question:
    """One question about a clip. ``objects`` are the indices of the objects it is about."""

    type: str
    question: str
    options: list[str]
    answer: str
    objects: list[int] = field(default_factory=list)

    @property
    def needs_motion(self) -> bool:
        return NEEDS_MOTION[self.type]


@dataclass
class Clip:
    """A generated clip before rendering: its scene, its plan, its questions."""

    split: str
    index: int
    plan: str
    scene: Scene
    questions: list[Question]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


# ============================================================== ground truth from trajectories


def step_direction(dx: float, dy: float) -> str | None:
    """Direction label of a per-second displacement (y grows downwards); None when still."""
    if math.hypot(dx, dy) < STILL:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def step_directions(track: list[tuple[float, float]], start: int = 0, end: int | None = None) -> list[str]:
    """Labels of the moving seconds in [start, end) of a per-slot track, still seconds dropped."""
    end = len(track) - 1 if end is None else end
    labels = [
        step_direction(track[s + 1][0] - track[s][0], track[s + 1][1] - track[s][1])
        for s in range(start, end)
    ]
    return [label for label in labels if label is not None]


def single_direction(track, start: int = 0, end: int | None = None) -> str | None:
    """The direction of motion over [start, end) if the object moves, all the time the same way."""
    labels = set(step_directions(track, start, end))
    return labels.pop() if len(labels) == 1 else None


def direction_change_count(track) -> int:
    labels = step_directions(track)
    return sum(a != b for a, b in zip(labels, labels[1:], strict=False))


def reverses(track) -> bool:
    labels = step_directions(track)
    return any(_OPPOSITE[a] == b for a, b in zip(labels, labels[1:], strict=False))


def step_lengths(track) -> list[float]:
    return [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(track, track[1:], strict=False)]


def motion_start(track) -> int | None:
    """First second in which the object moves."""
    return next((s for s, d in enumerate(step_lengths(track)) if d >= STILL), None)


def clear_winner(values: list[float]) -> int | None:
    """Index of the largest value if it is at least WINNER_MARGIN times every other one."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    best, runner_up = values[order[0]], values[order[1]]
    return order[0] if best > 0 and best >= WINNER_MARGIN * runner_up else None


def answer_for(scene: Scene, qtype: str, objects: list[int]) -> str | None:
    """The answer to a question of type ``qtype`` about ``objects``, computed from the scene's slot
    positions alone; None when the question is not well defined for this scene."""
    objs = scene.objects
    mid = scene.seconds // 2
    if qtype == "direction":
        return single_direction(objs[objects[0]].positions)
    if qtype == "first_half":
        return single_direction(objs[objects[0]].positions, 0, mid)
    if qtype == "second_half":
        return single_direction(objs[objects[0]].positions, mid)
    if qtype == "reverse":
        return "yes" if reverses(objs[objects[0]].positions) else "no"
    if qtype == "direction_changes":
        return str(direction_change_count(objs[objects[0]].positions))
    if qtype == "pan":
        return single_direction(scene.camera)
    if qtype == "order_first":
        starts = [motion_start(objs[i].positions) for i in objects]
        if None in starts or starts.count(min(starts)) > 1:
            return None
        return objs[objects[starts.index(min(starts))]].name
    if qtype in ("most_moved", "fastest"):
        measure = sum if qtype == "most_moved" else max  # path length / fastest second
        winner = clear_winner([measure(step_lengths(objs[i].positions)) for i in objects])
        return None if winner is None else objs[objects[winner]].name
    if qtype in ("appear_colour", "appear_shape"):
        late = [o for o in objs if o.appear > 0]
        if len(late) != 1:
            return None
        return late[0].colour if qtype == "appear_colour" else late[0].shape
    if qtype == "disappear":
        gone = [o for o in objs if o.disappear is not None]
        return gone[0].name if len(gone) == 1 else None
    if qtype == "colour":
        obj = objs[objects[0]]
        return obj.colour if sum(o.shape == obj.shape for o in objs) == 1 else None
    if qtype == "shape":
        obj = objs[objects[0]]
        return obj.shape if sum(o.colour == obj.colour for o in objs) == 1 else None
    raise ValueError(f"unknown question type {qtype!r}")


# ============================================================== scene building blocks


def _allowed_pairs(split: str) -> list[tuple[str, str]]:
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


def _size_range(count: int) -> tuple[float, float]:
    return {1: (0.16, 0.28), 2: (0.15, 0.24), 3: (0.14, 0.2)}[min(count, 3)]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in rgb)


def draw_looks(rng: np.random.Generator, split: str, count: int) -> list[dict]:
    """Looks of ``count`` objects with distinct colours (no held-out colour–shape pair in train)."""
    pairs = _allowed_pairs(split)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    lo, hi = _size_range(count)
    looks = []
    for colour in colours:
        shapes = [s for c, s in pairs if c == colour]
        looks.append(_look(rng, str(colour), str(rng.choice(shapes)), lo, hi))
    return looks


def _look(rng: np.random.Generator, colour: str, shape: str, lo: float, hi: float) -> dict:
    return {
        "colour": colour,
        "shape": shape,
        "size": round(float(rng.uniform(lo, hi)), 4),
        "rgb": _jitter(rng, COLOURS[colour]),
        "texture_seed": int(rng.integers(2**31)),
    }


def _apart(p: tuple[float, float], size: float, others: list[tuple[tuple[float, float], float]]) -> bool:
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
                if _apart(p, size, placed):
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
        choices = [(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else list(_VECTOR.values())
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


# ============================================================== plans


class _Builder:
    """Collects a clip's objects (looks + per-second steps) and turns them into a Scene.

    Two random streams: ``layout`` draws what frame 0 shows (background, object count, looks,
    start positions) and nothing else; ``rng`` draws the motion. A plan may consume ``rng``
    differently for different answers, but never touches ``layout`` after ``add_objects``, so
    frame 0 is the same whatever the answer.
    """

    def __init__(self, layout: np.random.Generator, rng: np.random.Generator, split: str, seconds: int):
        self.layout, self.rng, self.split, self.seconds = layout, rng, split, seconds
        self.last = seconds - 1  # L: the last slot
        self.background = draw_background(layout, split)
        self.camera_steps = np.zeros((self.last, 2))
        self.looks: list[dict] = []
        self.starts: list[tuple[float, float]] = []
        self.steps: list[np.ndarray] = []
        self.appear: list[int] = []
        self.disappear: list[int | None] = []

    def add_objects(self, fewest: int, most: int, subject: bool = False) -> int:
        """Between ``fewest`` and ``most`` objects visible from t = 0; with ``subject`` the last one
        starts in SUBJECT_BOX (and, drawn last, is never hidden by another object)."""
        count = int(self.layout.integers(fewest, most + 1))
        self.looks = draw_looks(self.layout, self.split, count)
        self.starts = place(
            self.layout, [look["size"] for look in self.looks], count - 1 if subject else None
        )
        self.steps = [np.zeros((self.last, 2)) for _ in range(count)]
        self.appear = [0] * count
        self.disappear = [None] * count
        return count

    def wander_all(self, skip: tuple[int, ...] = ()) -> None:
        for i, start in enumerate(self.starts):
            if i not in skip:
                self.steps[i] = wander(self.rng, start, self.last)

    def scene(self) -> Scene:
        camera = track_from_steps((0.0, 0.0), self.camera_steps)
        objects = []
        for i, look in enumerate(self.looks):
            track = track_from_steps(self.starts[i], self.steps[i])
            # On-screen position = world position − camera offset (the camera's motion applied).
            track = [
                (round(x - cx, 4), round(y - cy, 4)) for (x, y), (cx, cy) in zip(track, camera, strict=True)
            ]
            objects.append(
                SceneObject(positions=track, appear=self.appear[i], disappear=self.disappear[i], **look)
            )
        return Scene(self.seconds, self.background, camera, objects)


def _subject_plan(b: _Builder) -> int:
    """1–3 objects; the subject is the last one, the others wander."""
    count = b.add_objects(1, 3, subject=True)
    b.wander_all(skip=(count - 1,))
    return count - 1


def plan_direction(b: _Builder, answer: str) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    total = float(b.rng.uniform(0.2, SUBJECT_REACH))
    count = moving_count(b.rng, total, b.last, most=5)
    add_move(b.steps[s], b.rng, _VECTOR[answer], total, pick_seconds(b.rng, range(b.last), count))
    return [("direction", [s])]


def plan_halves(b: _Builder, answer: tuple[str, str]) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    mid = b.seconds // 2
    for direction, window in zip(answer, (range(0, mid), range(mid, b.last)), strict=True):
        total = float(b.rng.uniform(0.1, SUBJECT_REACH / 2))  # two moves the same way still fit
        count = moving_count(b.rng, total, len(window))
        add_move(b.steps[s], b.rng, _VECTOR[direction], total, pick_seconds(b.rng, window, count))
    return [("first_half", [s]), ("second_half", [s])]


def plan_reverse(b: _Builder, answer: str) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    rng = b.rng
    first = str(rng.choice(DIRECTIONS))
    turn = int(rng.integers(2, b.last - 1))  # the second leg starts at this second
    total1, total2 = float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.12, SUBJECT_REACH - 0.2))
    add_move(
        b.steps[s],
        rng,
        _VECTOR[first],
        total1,
        pick_seconds(rng, range(turn), moving_count(rng, total1, turn)),
    )
    if answer == "yes":
        second = _OPPOSITE[first]
    else:  # carries on, turns sideways, or stops (leg lengths and timing never depend on the answer)
        second = str(rng.choice([first, *sorted(set(DIRECTIONS) - {first, _OPPOSITE[first]}), "stop"]))
    if second != "stop":
        window = range(turn, b.last)
        add_move(
            b.steps[s],
            rng,
            _VECTOR[second],
            total2,
            pick_seconds(rng, window, moving_count(rng, total2, len(window))),
        )
    return [("reverse", [s])]


def plan_changes(b: _Builder, answer: int) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    rng = b.rng
    legs = [str(rng.choice(DIRECTIONS))]
    for _ in range(answer):
        legs.append(str(rng.choice([d for d in DIRECTIONS if d != legs[-1]])))
    # No two consecutive legs share a direction, so at most two of ≤ 4 legs go the same way:
    # legs of at most SUBJECT_REACH / 2 keep the subject inside BOUNDS.
    totals = [float(rng.uniform(0.1, SUBJECT_REACH / 2)) for _ in legs]
    durations = [1 if t < 2 * MIN_SPEED or rng.random() < 0.5 else 2 for t in totals]
    while sum(durations) > b.last:
        durations[durations.index(2)] = 1
    t = int(rng.integers(b.last - sum(durations) + 1))
    for direction, total, duration in zip(legs, totals, durations, strict=True):
        add_move(b.steps[s], rng, _VECTOR[direction], total, list(range(t, t + duration)))
        t += duration  # legs follow each other without pauses: a stop never looks like a turn
    return [("direction_changes", [s])]


def _monotone_move(b: _Builder, i: int, total: float, window: range, most: int | None = None) -> None:
    """Object ``i`` moves ``total`` in one direction that has room, during seconds of ``window``."""
    rng = b.rng
    if total < STILL:
        return
    options = [d for d in DIRECTIONS if room(b.starts[i], d) >= total]
    direction = str(rng.choice(options))
    count = moving_count(rng, total, len(window), most)
    add_move(b.steps[i], rng, _VECTOR[direction], total, pick_seconds(rng, window, count))


def plan_most_moved(b: _Builder, answer: int) -> list[tuple[str, list[int]]]:
    rng = b.rng
    count = b.add_objects(2, 3)
    winner = answer % count
    best = float(rng.uniform(0.28, 0.38))  # every start in PLACE_BOX has ≥ 0.4 of room one way
    for i in range(count):
        if i == winner:
            total = best
        else:
            total = 0.0 if rng.random() < 0.25 else float(rng.uniform(MIN_SPEED, 0.97 * best / WINNER_MARGIN))
        _monotone_move(b, i, total, range(b.last))
    return [("most_moved", list(range(count)))]


def plan_fastest(b: _Builder, answer: int) -> list[tuple[str, list[int]]]:
    rng = b.rng
    count = b.add_objects(2, 3)
    winner = answer % count
    top = float(rng.uniform(0.18, MAX_SPEED))
    cap = 0.97 * top / WINNER_MARGIN  # everybody else stays below half the winner's speed
    for i in range(count):
        # The roomiest direction: ≥ 0.4 from any start in PLACE_BOX, enough for every move below.
        direction = max(DIRECTIONS, key=lambda d: room(b.starts[i], d))
        vector = np.asarray(_VECTOR[direction])
        if i == winner:
            fast = int(rng.integers(b.last))  # one fast second, sometimes after slower ones
            b.steps[i][fast] = vector * top
            for s in [s for s in range(fast) if rng.random() < 0.3][:2]:
                speed = float(rng.uniform(MIN_SPEED, cap))
                if np.abs(b.steps[i]).sum() + speed <= room(b.starts[i], direction):
                    b.steps[i][s] = vector * speed
        elif rng.random() > 0.2:
            for s in pick_seconds(rng, range(b.last), int(rng.integers(1, 4))):
                b.steps[i][s] = vector * float(rng.uniform(MIN_SPEED, cap))
    return [("fastest", list(range(count)))]


def plan_order(b: _Builder, answer: int) -> list[tuple[str, list[int]]]:
    rng = b.rng
    count = b.add_objects(2, 3)
    winner = answer % count
    first = int(rng.integers(0, 3))
    later = iter(sorted(int(s) for s in rng.choice(range(first + 2, b.last), size=count - 1, replace=False)))
    order = [int(i) for i in rng.permutation([i for i in range(count) if i != winner])]
    starts = {winner: first, **{i: next(later) for i in order}}
    for i in range(count):
        window = range(starts[i], b.last)
        total = float(rng.uniform(0.12, min(0.3, MAX_SPEED * min(3, len(window)))))
        count_s = moving_count(rng, total, len(window), most=3)
        seconds = list(range(starts[i], starts[i] + count_s))  # starts exactly at its slot
        options = [d for d in DIRECTIONS if room(b.starts[i], d) >= total]
        add_move(b.steps[i], rng, _VECTOR[str(rng.choice(options))], total, seconds)
    return [("order_first", list(range(count)))]


def plan_pan(b: _Builder, answer: str) -> list[tuple[str, list[int]]]:
    rng = b.rng
    b.add_objects(1, 3)  # world-static: they move on screen with the background
    speed = float(rng.uniform(MIN_SPEED, 0.14))
    length = int(rng.integers(min(4, b.last), b.last + 1))
    start = int(rng.integers(b.last - length + 1))
    for s in range(start, start + length):
        b.camera_steps[s] = np.asarray(_VECTOR[answer]) * speed * float(rng.uniform(1.0, 1.25))
    return [("pan", [])]


def plan_appear(b: _Builder, answer: tuple[str, str]) -> list[tuple[str, list[int]]]:
    rng = b.rng
    visible = b.add_objects(1, 2)
    b.wander_all()
    lo, hi = _size_range(visible + 1)
    look = _look(rng, answer[0], answer[1], lo, hi)
    slot = int(rng.integers(1, max(2, b.last - 2)))
    # Where it appears: clear of the others at that moment (the answer plays no part in this).
    at_slot = [
        (track_from_steps(p, st)[slot], lk["size"])
        for p, st, lk in zip(b.starts, b.steps, b.looks, strict=True)
    ]
    for _ in range(200):
        start = (float(rng.uniform(*PLACE_BOX)), float(rng.uniform(*PLACE_BOX)))
        if _apart(start, look["size"], at_slot):
            break
    steps = np.zeros((b.last, 2))
    steps[slot:] = wander(rng, start, b.last - slot)
    # Its track is defined from t = 0 (it is invisible until ``slot``): hold still before appearing.
    b.looks.append(look)
    b.starts.append(start)
    b.steps.append(steps)
    b.appear.append(slot)
    b.disappear.append(None)
    new = len(b.looks) - 1
    return [("appear_colour", [new]), ("appear_shape", [new])]


def plan_disappear(b: _Builder, answer: int) -> list[tuple[str, list[int]]]:
    rng = b.rng
    count = b.add_objects(2, 3)
    b.wander_all()
    b.disappear[answer % count] = int(rng.integers(2, b.last - 1))
    return [("disappear", list(range(count)))]


PLAN_FUNCTIONS = {
    "direction": plan_direction,
    "halves": plan_halves,
    "reverse": plan_reverse,
    "changes": plan_changes,
    "most_moved": plan_most_moved,
    "fastest": plan_fastest,
    "order": plan_order,
    "pan": plan_pan,
    "appear": plan_appear,
    "disappear": plan_disappear,
}


def answer_space(plan: str, split: str) -> list:
    """What a plan's balanced answer bag holds (entries may repeat). Object answers are indices
    taken modulo the clip's object count (2 or 3): a bag of 0…5 makes both counts uniform."""
    if plan in ("direction", "pan"):
        return list(DIRECTIONS)
    if plan == "halves":
        return [(a, b) for a in DIRECTIONS for b in DIRECTIONS]
    if plan == "reverse":
        return list(YES_NO)
    if plan == "changes":
        return [0, 1, 2, 3]
    if plan == "appear":
        # Colour uniform, then shape uniform among the colour's allowed shapes (4 or 5 of them):
        # 20 entries per colour keep both marginals exactly uniform over a full bag.
        shapes = {c: [s for c2, s in _allowed_pairs(split) if c2 == c] for c in COLOURS}
        return [(c, shapes[c][k % len(shapes[c])]) for c in COLOURS for k in range(20)]
    return list(range(6))


# ============================================================== questions


def _options(qtype: str, scene: Scene) -> list[str]:
    if qtype in ("direction", "first_half", "second_half", "pan"):
        return list(DIRECTIONS)
    if qtype == "reverse":
        return list(YES_NO)
    if qtype == "direction_changes":
        return list(COUNTS)
    if qtype in ("appear_colour", "colour"):
        return list(COLOURS)
    if qtype in ("appear_shape", "shape"):
        return list(SHAPES)
    # Object answers: the objects visible at t = 0, in scene order (independent of the answer).
    return [o.name for o in scene.objects if o.appear == 0]


def _phrase(rng: np.random.Generator, qtype: str, scene: Scene, objects: list[int]) -> str:
    template = TEMPLATES[qtype][int(rng.integers(len(TEMPLATES[qtype])))]
    obj = scene.objects[objects[0]] if objects else None
    return template.format(
        obj=obj.name if obj else "",
        colour=obj.colour if obj else "",
        shape=obj.shape if obj else "",
        mid=scene.seconds // 2,
    )


def _appearance_question(rng: np.random.Generator, scene: Scene) -> tuple[str, list[int]] | None:
    """One colour/shape question about an object visible at t = 0 that its attribute names uniquely."""
    candidates = [
        (qtype, [i])
        for i, obj in enumerate(scene.objects)
        if obj.appear == 0
        for qtype in ("colour", "shape")
        if answer_for(scene, qtype, [i]) is not None
    ]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def make_clip(split: str, index: int, seed: int, plan: str, answer, seconds: int = 8) -> Clip:
    """Build clip ``index`` of ``split`` with the given plan and planned answer (see ``schedule``).

    The clip's own random streams (seed, split, index) draw everything the planned answer does
    not decide: one for what frame 0 shows, one for the motion, one for the wording. Every written
    answer is recomputed from the trajectories and checked against the plan, so a plan bug cannot
    produce a wrong label.
    """
    layout, motion, text = (
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEY[split], 1, index, k)))
        for k in range(3)
    )
    builder = _Builder(layout, motion, split, seconds)
    asked = PLAN_FUNCTIONS[plan](builder, answer)
    scene = builder.scene()
    # Wording comes from its own stream, motion questions first: their text never depends on the answer.
    phrased = [(qtype, objects, _phrase(text, qtype, scene, objects)) for qtype, objects in asked]
    appearance = _appearance_question(text, scene)
    if appearance:
        qtype, objects = appearance
        phrased.append((qtype, objects, _phrase(text, qtype, scene, objects)))
    questions = []
    for qtype, objects, wording in phrased:
        truth = answer_for(scene, qtype, objects)
        if truth is None or truth != _planned(plan, qtype, answer, scene, objects, truth):
            raise AssertionError(
                f"{split}-{index}: plan {plan} did not produce its {qtype} answer {answer!r}"
            )
        questions.append(Question(qtype, wording, _options(qtype, scene), truth, objects))
    return Clip(split, index, plan, scene, questions)


def _planned(plan: str, qtype: str, answer, scene: Scene, objects: list[int], truth: str) -> str:
    """The answer the plan intended for ``qtype`` (appearance questions: the truth itself)."""
    if qtype in ("colour", "shape"):
        return truth
    if plan == "halves":
        return answer[0] if qtype == "first_half" else answer[1]
    if plan == "appear":
        return answer[0] if qtype == "appear_colour" else answer[1]
    if qtype in OBJECT_ANSWER_TYPES:
        return scene.objects[objects[answer % len(objects)]].name
    return str(answer)


def schedule(split: str, seed: int, clips: int) -> list[tuple[str, object]]:
    """(plan, planned answer) for clips 0 … clips − 1: plans and answers drawn from bags (random
    permutations, one after another), so both are balanced to within one bag. Each plan has its own
    answer stream, so a prefix of a longer split is the same as a shorter split."""
    key = _SPLIT_KEY[split]
    plan_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 0, 0)))
    answer_rngs = {
        p: np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 0, 1 + i)))
        for i, p in enumerate(PLANS)
    }
    plans: deque = deque()
    bags: dict[str, deque] = {p: deque() for p in PLANS}
    out = []
    for _ in range(clips):
        if not plans:
            plans.extend(PLANS[i] for i in plan_rng.permutation(len(PLANS)))
        plan = plans.popleft()
        if not bags[plan]:
            space = answer_space(plan, split)
            bags[plan].extend(space[i] for i in answer_rngs[plan].permutation(len(space)))
        out.append((plan, bags[plan].popleft()))
    return out


# ============================================================== records and files


def clip_records(clip: Clip) -> tuple[list[dict], list[dict], dict]:
    """The clip's LLaVA-Video-178K records, local evaluation records, and ground-truth meta."""
    video = f"videos/{clip.name}.mp4"
    llava, local, meta_questions = [], [], []
    for k, q in enumerate(clip.questions):
        qid = f"{clip.name}-{k}"
        llava.append(
            {
                "id": qid,
                "video": video,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + q.question},
                    {"from": "gpt", "value": q.answer},
                ],
            }
        )
        local.append(
            {
                "video": video,
                "question": q.question,
                "options": q.options,
                "answer": q.answer,
                "type": q.type,
                "needs_motion": q.needs_motion,
                "id": qid,
            }
        )
        meta_questions.append({"id": qid, "type": q.type, "answer": q.answer, "objects": q.objects})
    meta = {
        "id": clip.name,
        "video": video,
        "split": clip.split,
        "index": clip.index,
        "plan": clip.plan,
        "slot_frames": [s * FPS for s in range(clip.scene.seconds)],
        "scene": clip.scene.to_dict(),
        "questions": meta_questions,
    }
    return llava, local, meta


@dataclass(frozen=True)
class _Task:
    split: str
    index: int
    seed: int
    plan: str
    answer: object
    seconds: int
    width: int
    height: int
    video_path: str


def _generate_one(task: _Task) -> tuple[list[dict], list[dict], dict]:
    """Worker: build one clip, render and encode it, return its records."""
    clip = make_clip(task.split, task.index, task.seed, task.plan, task.answer, task.seconds)
    settings = CanonicalSettings()
    path = Path(task.video_path)
    partial = path.with_name(path.name + ".partial")
    try:
        frames = render_frames(clip.scene, task.width, task.height)
        write_video(frames, partial, task.width, task.height, settings.gop, settings.quantizer)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return clip_records(clip)


def validate_args(
    split: str, clips: int, seed: int, size: tuple[int, int], seconds: int, workers: int
) -> None:
    if split not in SPLITS:
        raise CopeInputError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if clips < 1:
        raise CopeInputError(f"--clips must be at least 1, got {clips}")
    if seed < 0:
        raise CopeInputError(f"--seed must be ≥ 0, got {seed}")
    width, height = size
    if width < 64 or height < 64 or width % 2 or height % 2 or max(width, height) > 2048:
        raise CopeInputError(f"--size {width}x{height}: sides must be even, between 64 and 2048")
    if not 8 <= seconds <= 60:
        raise CopeInputError(f"--seconds must be between 8 and 60, got {seconds}")
    if workers < 1:
        raise CopeInputError(f"--workers must be at least 1, got {workers}")


STEP_TEMPLATES = (
    "Which way does the {subject} move between second {t} and second {u}?",
    "From second {t} to second {u}, where does the {subject} go?",
    "Between seconds {t} and {u}, which direction is the {subject} moving?",
)
STEPS_PER_CLIP = 6  # per-second motion turns added to each training conversation


def step_questions(
    scene: Scene, rng: np.random.Generator, limit: int = STEPS_PER_CLIP
) -> list[tuple[str, str]]:
    """Per-second motion questions about one clip: (question, answer) pairs, training only.

    One question asks which way one object (visible at t = 0, so named by colour and shape) or the
    camera moves between two consecutive slots; the answer is left / right / up / down, or still.
    Every Δ-frame of the K = 1 plan spans exactly one such second, so these turns supervise the
    reading of single Δ-frames, which the clip-level questions only do in aggregate. At most a
    third of the chosen questions are "still"; the test split never asks them.
    """
    subjects = [(o.name, o.positions, o) for o in scene.objects if o.appear == 0]
    if any(a != b for a, b in zip(scene.camera, scene.camera[1:], strict=False)):
        subjects.append(("camera", scene.camera, None))
    moving, still = [], []
    for name, track, obj in subjects:
        for t in range(scene.seconds - 1):
            if obj is not None and not (obj.visible_at(t) and obj.visible_at(t + 1)):
                continue
            label = step_direction(track[t + 1][0] - track[t][0], track[t + 1][1] - track[t][1])
            (moving if label else still).append((name, t, label or "still"))
    chosen = [moving[i] for i in rng.permutation(len(moving))[:limit]]
    room = min(limit - len(chosen), max(1, limit // 3))
    chosen += [still[i] for i in rng.permutation(len(still))[:room]]
    turns = []
    for name, t, label in chosen:
        template = STEP_TEMPLATES[int(rng.integers(len(STEP_TEMPLATES)))]
        question = template.format(subject=name, t=t, u=t + 1)
        if name == "camera":
            question = question.replace("does the camera move", "does the camera pan")
        turns.append((question, label))
    return turns


def chat_records(llava: list[dict], scenes: dict[str, Scene] | None = None, seed: int = 0) -> list[dict]:
    """One multi-turn record per clip: its questions in order, the video placeholder in the first turn.

    Training on these encodes each clip once for all of its questions (2.2 on average). With
    ``scenes`` (video path → Scene) each conversation ends with the clip's per-second motion turns
    (``step_questions``), after its real questions so that no real answer can lean on them.
    """
    by_video: dict[str, dict] = {}
    for record in llava:
        human, answer = record["conversations"]
        chat = by_video.get(record["video"])
        if chat is None:
            clip_id = record["id"].rsplit("-", 1)[0]
            by_video[record["video"]] = {
                "id": clip_id,
                "video": record["video"],
                "conversations": [human, answer],
            }
        else:
            question = human["value"].removeprefix("<image>\n")
            chat["conversations"] += [{"from": "human", "value": question}, answer]
    for video, chat in by_video.items():
        if scenes is None or video not in scenes:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(chat["id"].encode())])
        for question, answer in step_questions(scenes[video], rng):
            chat["conversations"] += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return list(by_video.values())


def output_paths(out_dir: Path, split: str) -> dict[str, Path]:
    return {
        "llava": out_dir / f"{split}.json",
        "chat": out_dir / f"{split}-chat.json",
        "appearance": out_dir / f"{split}-appearance.json",
        "local": out_dir / f"{split}.jsonl",
        "meta": out_dir / f"{split}-meta.jsonl",
    }


def generate_split(
    out_dir: str | Path,
    split: str,
    clips: int,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    seconds: int = 8,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Generate one split into ``out_dir`` (videos, LLaVA json, local jsonl, meta, manifest).

    Deterministic: the same arguments give byte-identical JSON and identical frames, whatever
    ``workers`` is. Returns a summary with the measured generation speed. With ``workers`` > 1
    clips render in a spawn-based process pool: call this under ``if __name__ == "__main__":``.
    """
    validate_args(split, clips, seed, size, seconds, workers)
    out_dir = Path(out_dir)
    videos = _prepare_output(out_dir, split, overwrite)
    tasks = [
        _Task(split, i, seed, plan, answer, seconds, size[0], size[1], str(videos / f"{split}-{i:06d}.mp4"))
        for i, (plan, answer) in enumerate(schedule(split, seed, clips))
    ]
    started = time.perf_counter()
    results = _run(tasks, workers, progress)
    elapsed = time.perf_counter() - started

    paths = output_paths(out_dir, split)
    llava = [r for result in results for r in result[0]]
    local = [r for result in results for r in result[1]]
    _atomic_write(paths["llava"], json.dumps(llava, indent=1) + "\n")
    scenes = {meta["video"]: Scene.from_dict(meta["scene"]) for _, _, meta in results}
    _atomic_write(paths["chat"], json.dumps(chat_records(llava, scenes, seed), indent=1) + "\n")
    appearance = [r for r, q in zip(llava, local, strict=True) if not q["needs_motion"]]
    _atomic_write(paths["appearance"], json.dumps(appearance, indent=1) + "\n")
    _atomic_write(paths["local"], "".join(json.dumps(r) + "\n" for r in local))
    _atomic_write(paths["meta"], "".join(json.dumps(result[2]) + "\n" for result in results))
    entry = {
        "seed": seed,
        "clips": clips,
        "questions": len(local),
        "seconds": seconds,
        "size": list(size),
        "fps": FPS,
        "codec": "mpeg4",
        "needs_motion_fraction": question_stats(local)["needs_motion_fraction"],
    }
    _update_manifest(out_dir / "manifest.json", split, entry)
    return {
        "out": str(out_dir),
        "split": split,
        **entry,
        "elapsed_s": round(elapsed, 3),
        "clips_per_s": round(clips / elapsed, 3) if elapsed > 0 else None,
        "workers": workers,
    }


def _prepare_output(out_dir: Path, split: str, overwrite: bool) -> Path:
    """Refuse to replace an existing split unless told to; return the videos directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CopeInputError(f"{out_dir}: exists and is not a directory")
    videos = out_dir / "videos"
    existing = [p for p in output_paths(out_dir, split).values() if p.exists()]
    existing += sorted(videos.glob(f"{split}-*.mp4"))
    if existing and not overwrite:
        raise CopeInputError(f"{existing[0]}: already exists (pass --overwrite to replace the {split} split)")
    videos.mkdir(parents=True, exist_ok=True)
    for old in videos.glob(f"{split}-*.mp4"):
        old.unlink()  # only reached with --overwrite: a shorter split leaves no stale clips behind
    return videos


def _run(tasks: list[_Task], workers: int, progress: bool) -> list[tuple[list[dict], list[dict], dict]]:
    """Every task's records, in task order, from one process or a pool."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), unit="clip", desc="motionqa", disable=not progress, leave=False) as bar:
        if workers == 1:
            results = []
            for task in tasks:
                results.append(_generate_one(task))
                bar.update(1)
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-way.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = []
            for result in pool.map(_generate_one, tasks, chunksize=4):
                results.append(result)
                bar.update(1)
            return results


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _update_manifest(path: Path, split: str, entry: dict) -> None:
    manifest = {"generator": "cope.data.motionqa", "version": GENERATOR_VERSION, "splits": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("version") == GENERATOR_VERSION:
                manifest["splits"] = dict(old.get("splits", {}))
        except (ValueError, AttributeError):
            pass  # a damaged manifest is rebuilt from this split
    manifest["splits"][split] = entry
    manifest["splits"] = dict(sorted(manifest["splits"].items()))
    _atomic_write(path, json.dumps(manifest, indent=1) + "\n")


def load_split(out_dir: str | Path, split: str) -> list[dict]:
    """The local evaluation records of a generated split (``DIR/<split>.jsonl``)."""
    path = Path(out_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise CopeInputError(f"{path}: no such file (generate the {split} split first)")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as exc:
        raise CopeInputError(f"{path}: not valid JSON lines ({exc})") from None


def question_stats(records: list[dict]) -> dict:
    """Per-type counts and answer distributions, and the share of needs-motion questions."""
    by_type: dict[str, Counter] = {}
    positions: dict[str, Counter] = {}
    for r in records:
        by_type.setdefault(r["type"], Counter())[r["answer"]] += 1
        positions.setdefault(r["type"], Counter())[r["options"].index(r["answer"])] += 1
    types = {}
    for qtype in sorted(by_type):
        counts = by_type[qtype]
        total = sum(counts.values())
        # The best a constant guess can do: the most common answer, or for object answers (whose
        # names vary per clip) the most common option slot.
        majority = max((positions if qtype in OBJECT_ANSWER_TYPES else by_type)[qtype].values())
        types[qtype] = {
            "questions": total,
            "needs_motion": NEEDS_MOTION[qtype],
            "answers": dict(sorted(counts.items())),
            "majority_share": round(majority / total, 4),
            # Where the answer sits among the options (object answers: which listed object).
            "answer_positions": {str(k): v for k, v in sorted(positions[qtype].items())},
        }
    motion = sum(r["needs_motion"] for r in records)
    return {
        "questions": len(records),
        "needs_motion": motion,
        "needs_motion_fraction": round(motion / len(records), 4) if records else 0.0,
        "types": types,
    }


# ============================================================== scoring


_NUMBER_WORDS = {
    "zero": "0",
    "none": "0",
    "never": "0",
    "no": "0",
    "one": "1",
    "once": "1",
    "two": "2",
    "twice": "2",
    "three": "3",
    "thrice": "3",
}
_SYNONYMS = {"color": "colour", "magenta": "purple", "violet": "purple", "turquoise": "cyan", "aqua": "cyan"}
_FILLER = {
    "the",
    "a",
    "an",
    "it",
    "its",
    "is",
    "one",
    "object",
    "shape",
    "coloured",
    "colored",
    "times",
    "time",
}
_LETTER = re.compile(r"^\(?([a-z])\)?(?:[.):]|$)")


def _words(text: str, numeric: bool) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    words = [_SYNONYMS.get(w, w) for w in words]
    return [_NUMBER_WORDS.get(w, w) for w in words] if numeric else words


def match_option(prediction: str, options: list[str]) -> str | None:
    """The option a free-form prediction picks, or None if it picks none or several.

    Accepted: an option letter ("B", "(b)", "B. right"), the option's text after normalisation
    (case, punctuation, articles, number words for count options, colour synonyms), a sentence that
    contains exactly one option ("The camera pans left."), or words that fit exactly one option
    ("the red one" → "red circle").
    """
    text = prediction.strip().lower()
    letter = _LETTER.match(text)
    if letter and ord(letter.group(1)) - ord("a") < len(options):
        return options[ord(letter.group(1)) - ord("a")]
    numeric = all(o.isdigit() for o in options)
    words = _words(text, numeric)
    norm = {o: _words(o, numeric) for o in options}
    exact = [o for o in options if words == norm[o]]
    if len(exact) == 1:
        return exact[0]
    joined = f" {' '.join(words)} "
    contained = [o for o in options if f" {' '.join(norm[o])} " in joined]
    if len(contained) == 1:
        return contained[0]
    content = {w for w in words if w not in _FILLER}
    fitting = [o for o in options if content and content <= set(norm[o])]
    return fitting[0] if len(fitting) == 1 else None


def score_prediction(prediction: str, answer: str, options: list[str]) -> bool:
    """True when ``prediction`` picks ``answer`` among ``options`` (see ``match_option``)."""
    return match_option(prediction, options) == answer


def multiple_choice_prompt(question: str, options: list[str]) -> str:
    """The question with lettered options, for evaluation by option letter."""
    lines = [question] + [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter or the answer itself."


# ============================================================== codec check


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
    from cope.data.motionqa_render import object_footprint, object_mask

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
