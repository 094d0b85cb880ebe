"""Ground truth from trajectories: every answer is computed from the objects' and the camera's
positions at the slots (whole seconds), never taken from the plan that produced them."""

from __future__ import annotations

import math

from cope.motionqa.render import Scene
from cope.motionqa.spec import OPPOSITE, STILL, WINNER_MARGIN


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
    return any(OPPOSITE[a] == b for a, b in zip(labels, labels[1:], strict=False))


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
    for answers in (_motion_answer, _object_choice_answer, _appearance_answer):
        found, answer = answers(scene, qtype, objects)
        if found:
            return answer
    raise ValueError(f"unknown question type {qtype!r}")


def _motion_answer(scene: Scene, qtype: str, objects: list[int]) -> tuple[bool, str | None]:
    """Questions about one subject's (or the camera's) path: (is this such a type, the answer)."""
    if qtype == "pan":
        return True, single_direction(scene.camera)
    if qtype not in ("direction", "first_half", "second_half", "reverse", "direction_changes"):
        return False, None
    track, mid = scene.objects[objects[0]].positions, scene.seconds // 2
    if qtype == "direction":
        return True, single_direction(track)
    if qtype == "first_half":
        return True, single_direction(track, 0, mid)
    if qtype == "second_half":
        return True, single_direction(track, mid)
    if qtype == "reverse":
        return True, "yes" if reverses(track) else "no"
    return True, str(direction_change_count(track))


def _object_choice_answer(scene: Scene, qtype: str, objects: list[int]) -> tuple[bool, str | None]:
    """Questions whose answer is one of the objects: (is this such a type, the answer)."""
    objs = scene.objects
    if qtype == "order_first":
        starts = [motion_start(objs[i].positions) for i in objects]
        if None in starts or starts.count(min(starts)) > 1:
            return True, None
        return True, objs[objects[starts.index(min(starts))]].name
    if qtype in ("most_moved", "fastest"):
        measure = sum if qtype == "most_moved" else max  # path length / fastest second
        winner = clear_winner([measure(step_lengths(objs[i].positions)) for i in objects])
        return True, None if winner is None else objs[objects[winner]].name
    if qtype == "disappear":
        gone = [o for o in objs if o.disappear is not None]
        return True, gone[0].name if len(gone) == 1 else None
    return False, None


def _appearance_answer(scene: Scene, qtype: str, objects: list[int]) -> tuple[bool, str | None]:
    """Colour and shape questions, of a late-appearing object or of one seen at the start."""
    objs = scene.objects
    if qtype in ("appear_colour", "appear_shape"):
        late = [o for o in objs if o.appear > 0]
        if len(late) != 1:
            return True, None
        return True, late[0].colour if qtype == "appear_colour" else late[0].shape
    if qtype == "colour":
        obj = objs[objects[0]]
        return True, obj.colour if sum(o.shape == obj.shape for o in objs) == 1 else None
    if qtype == "shape":
        obj = objs[objects[0]]
        return True, obj.shape if sum(o.colour == obj.colour for o in objs) == 1 else None
    return False, None
