"""Plans: what happens in a clip, built so it produces a planned answer, and the schedule that
gives every clip of a split its plan and answer from balanced bags."""

from __future__ import annotations

from collections import deque

import numpy as np

from cope.motionqa.render import COLOURS, Scene, SceneObject
from cope.motionqa.scenes import (
    add_move,
    allowed_pairs,
    apart,
    draw_background,
    draw_look,
    draw_looks,
    moving_count,
    pick_seconds,
    place,
    room,
    size_range,
    track_from_steps,
    wander,
)
from cope.motionqa.spec import (
    DIRECTIONS,
    MAX_SPEED,
    MIN_SPEED,
    OPPOSITE,
    PAN_SPEED,
    PLACE_BOX,
    PLANS,
    SPLIT_KEY,
    STILL,
    SUBJECT_REACH,
    VECTOR,
    WINNER_MARGIN,
    YES_NO,
)


class Builder:
    """Collects a clip's objects (looks + per-second steps) and turns them into a Scene.

    Two random streams: ``layout`` draws what frame 0 shows (background, object count, looks,
    start positions) and nothing else; ``rng`` draws the motion. A plan may consume ``rng``
    differently for different answers, but never touches ``layout`` after ``add_objects``, so
    frame 0 is the same whatever the answer. ``pan_speed`` is the range a camera pan's speed is
    drawn from (frame sides per second); it changes pan clips' motion and nothing else.
    """

    def __init__(
        self,
        layout: np.random.Generator,
        rng: np.random.Generator,
        split: str,
        seconds: int,
        pan_speed: tuple[float, float] = PAN_SPEED,
    ):
        self.layout, self.rng, self.split, self.seconds = layout, rng, split, seconds
        self.pan_speed = pan_speed
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


def _subject_plan(b: Builder) -> int:
    """1–3 objects; the subject is the last one, the others wander."""
    count = b.add_objects(1, 3, subject=True)
    b.wander_all(skip=(count - 1,))
    return count - 1


def plan_direction(b: Builder, answer: str) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    total = float(b.rng.uniform(0.2, SUBJECT_REACH))
    count = moving_count(b.rng, total, b.last, most=5)
    add_move(b.steps[s], b.rng, VECTOR[answer], total, pick_seconds(b.rng, range(b.last), count))
    return [("direction", [s])]


def plan_halves(b: Builder, answer: tuple[str, str]) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    mid = b.seconds // 2
    for direction, window in zip(answer, (range(0, mid), range(mid, b.last)), strict=True):
        total = float(b.rng.uniform(0.1, SUBJECT_REACH / 2))  # two moves the same way still fit
        count = moving_count(b.rng, total, len(window))
        add_move(b.steps[s], b.rng, VECTOR[direction], total, pick_seconds(b.rng, window, count))
    return [("first_half", [s]), ("second_half", [s])]


def plan_reverse(b: Builder, answer: str) -> list[tuple[str, list[int]]]:
    s = _subject_plan(b)
    rng = b.rng
    first = str(rng.choice(DIRECTIONS))
    turn = int(rng.integers(2, b.last - 1))  # the second leg starts at this second
    total1, total2 = float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.12, SUBJECT_REACH - 0.2))
    add_move(
        b.steps[s],
        rng,
        VECTOR[first],
        total1,
        pick_seconds(rng, range(turn), moving_count(rng, total1, turn)),
    )
    if answer == "yes":
        second = OPPOSITE[first]
    else:  # carries on, turns sideways, or stops (leg lengths and timing never depend on the answer)
        second = str(rng.choice([first, *sorted(set(DIRECTIONS) - {first, OPPOSITE[first]}), "stop"]))
    if second != "stop":
        window = range(turn, b.last)
        add_move(
            b.steps[s],
            rng,
            VECTOR[second],
            total2,
            pick_seconds(rng, window, moving_count(rng, total2, len(window))),
        )
    return [("reverse", [s])]


def plan_changes(b: Builder, answer: int) -> list[tuple[str, list[int]]]:
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
        add_move(b.steps[s], rng, VECTOR[direction], total, list(range(t, t + duration)))
        t += duration  # legs follow each other without pauses: a stop never looks like a turn
    return [("direction_changes", [s])]


def _monotone_move(b: Builder, i: int, total: float, window: range, most: int | None = None) -> None:
    """Object ``i`` moves ``total`` in one direction that has room, during seconds of ``window``."""
    rng = b.rng
    if total < STILL:
        return
    options = [d for d in DIRECTIONS if room(b.starts[i], d) >= total]
    direction = str(rng.choice(options))
    count = moving_count(rng, total, len(window), most)
    add_move(b.steps[i], rng, VECTOR[direction], total, pick_seconds(rng, window, count))


def plan_most_moved(b: Builder, answer: int) -> list[tuple[str, list[int]]]:
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


def plan_fastest(b: Builder, answer: int) -> list[tuple[str, list[int]]]:
    rng = b.rng
    count = b.add_objects(2, 3)
    winner = answer % count
    top = float(rng.uniform(0.18, MAX_SPEED))
    cap = 0.97 * top / WINNER_MARGIN  # everybody else stays below half the winner's speed
    for i in range(count):
        # The roomiest direction: ≥ 0.4 from any start in PLACE_BOX, enough for every move below.
        direction = max(DIRECTIONS, key=lambda d: room(b.starts[i], d))
        vector = np.asarray(VECTOR[direction])
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


def plan_order(b: Builder, answer: int) -> list[tuple[str, list[int]]]:
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
        add_move(b.steps[i], rng, VECTOR[str(rng.choice(options))], total, seconds)
    return [("order_first", list(range(count)))]


def plan_pan(b: Builder, answer: str) -> list[tuple[str, list[int]]]:
    rng = b.rng
    b.add_objects(1, 3)  # world-static: they move on screen with the background
    speed = float(rng.uniform(*b.pan_speed))
    length = int(rng.integers(min(4, b.last), b.last + 1))
    start = int(rng.integers(b.last - length + 1))
    for s in range(start, start + length):
        b.camera_steps[s] = np.asarray(VECTOR[answer]) * speed * float(rng.uniform(1.0, 1.25))
    return [("pan", [])]


def plan_appear(b: Builder, answer: tuple[str, str]) -> list[tuple[str, list[int]]]:
    rng = b.rng
    visible = b.add_objects(1, 2)
    b.wander_all()
    lo, hi = size_range(visible + 1)
    look = draw_look(rng, answer[0], answer[1], lo, hi)
    slot = int(rng.integers(1, max(2, b.last - 2)))
    # Where it appears: clear of the others at that moment (the answer plays no part in this).
    at_slot = [
        (track_from_steps(p, st)[slot], lk["size"])
        for p, st, lk in zip(b.starts, b.steps, b.looks, strict=True)
    ]
    for _ in range(200):
        start = (float(rng.uniform(*PLACE_BOX)), float(rng.uniform(*PLACE_BOX)))
        if apart(start, look["size"], at_slot):
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


def plan_disappear(b: Builder, answer: int) -> list[tuple[str, list[int]]]:
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
        shapes = {c: [s for c2, s in allowed_pairs(split) if c2 == c] for c in COLOURS}
        return [(c, shapes[c][k % len(shapes[c])]) for c in COLOURS for k in range(20)]
    return list(range(6))


def schedule(split: str, seed: int, clips: int) -> list[tuple[str, object]]:
    """(plan, planned answer) for clips 0 … clips − 1: plans and answers drawn from bags (random
    permutations, one after another), so both are balanced to within one bag. Each plan has its own
    answer stream, so a prefix of a longer split is the same as a shorter split."""
    key = SPLIT_KEY[split]
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
