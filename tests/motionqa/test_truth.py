"""MotionQA ground truth: every answer, recomputed from scratch from the slot positions in the meta
file, matches the written one."""

from __future__ import annotations

import json
import math

import pytest

from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.records import clip_records
from cope.motionqa.spec import NEEDS_MOTION
from tests.motionqa.support import label


def _steps(track):
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(track, track[1:], strict=False)]


def _moving(track):
    return [(dx, dy) for dx, dy in _steps(track) if math.hypot(dx, dy) > 0.02]


def _net_direction(track, a, b):
    dx, dy = track[b][0] - track[a][0], track[b][1] - track[a][1]
    moves = _moving(track[a : b + 1])
    assert moves and all(label(*m) == label(dx, dy) for m in moves), "not a one-way move"
    return label(dx, dy)


def recompute(meta: dict, row: dict, index: int) -> str:
    """The answer to question ``row`` from the clip's meta (slot positions), from scratch."""
    scene = meta["scene"]
    objects = scene["objects"]
    about = meta["questions"][index]["objects"]
    last, mid = scene["seconds"] - 1, scene["seconds"] // 2
    track = objects[about[0]]["positions"] if about else None
    qtype = row["type"]
    if qtype == "direction":
        return _net_direction(track, 0, last)
    if qtype == "first_half":
        return _net_direction(track, 0, mid)
    if qtype == "second_half":
        return _net_direction(track, mid, last)
    if qtype == "pan":
        return _net_direction(scene["camera"], 0, last)
    if qtype == "reverse":
        moves = _moving(track)
        return (
            "yes"
            if any(a[0] * b[0] + a[1] * b[1] < 0 for a, b in zip(moves, moves[1:], strict=False))
            else "no"
        )
    if qtype == "direction_changes":
        labels = [label(*m) for m in _moving(track)]
        return str(sum(a != b for a, b in zip(labels, labels[1:], strict=False)))
    if qtype in ("most_moved", "fastest", "order_first"):
        lengths = [[math.hypot(*s) for s in _steps(objects[i]["positions"])] for i in about]
        if qtype == "order_first":
            key = [-min(s for s, d in enumerate(ls) if d > 0.02) for ls in lengths]
        else:
            key = [sum(ls) if qtype == "most_moved" else max(ls) for ls in lengths]
        ranked = sorted(key, reverse=True)
        assert ranked[0] > ranked[1] and (qtype == "order_first" or ranked[0] >= 2 * ranked[1])
        return objects[about[key.index(ranked[0])]]["name"]
    if qtype in ("appear_colour", "appear_shape"):
        (late,) = [o for o in objects if o["appear"] > 0]
        assert late["appear"] <= last - 2  # visible at three slots or more
        return late["colour"] if qtype == "appear_colour" else late["shape"]
    if qtype == "disappear":
        (gone,) = [o for o in objects if o["disappear"] is not None]
        assert 1 <= gone["disappear"] <= last - 1
        return gone["name"]
    obj = objects[about[0]]
    assert obj["appear"] == 0  # appearance questions: about an object in frame 0
    if qtype == "colour":
        assert [o["shape"] for o in objects].count(obj["shape"]) == 1 and obj["shape"] in row["question"]
        return obj["colour"]
    assert qtype == "shape"
    assert [o["colour"] for o in objects].count(obj["colour"]) == 1 and obj["colour"] in row["question"]
    return obj["shape"]


@pytest.mark.parametrize(("split", "seconds"), [("train", 8), ("test", 8), ("val", 12)])
def test_every_answer_matches_the_trajectories(split, seconds):
    seen = set()
    for i, (plan, answer) in enumerate(schedule(split, 11, 120)):
        clip = make_clip(split, i, 11, plan, answer, seconds)
        _, rows, meta = clip_records(clip)
        meta = json.loads(json.dumps(meta))  # exactly what the meta file holds
        for k, row in enumerate(rows):
            assert recompute(meta, row, k) == row["answer"], (row, meta)
            if row["type"] in ("direction", "first_half", "second_half", "reverse", "direction_changes"):
                assert row["question"].count(meta["scene"]["objects"][-1]["name"]) == 1  # named subject
            seen.add(row["type"])
        for obj in meta["scene"]["objects"]:
            if plan != "pan":  # motion never leaves the frame (pans carry static objects out of view)
                assert all(0.1 - 1e-9 <= c <= 0.9 + 1e-9 for p in obj["positions"] for c in p)
    assert seen == set(NEEDS_MOTION)
