"""MotionQA records: balanced answers and the needs-motion share, and the training conversations."""

from __future__ import annotations

from collections import Counter

import numpy as np

from cope.motionqa import Background, Scene, SceneObject
from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.records import (
    STEP_TEMPLATES,
    balanced_step,
    chat_records,
    clip_records,
    clip_steps,
    question_stats,
    step_question,
    step_questions,
)
from cope.motionqa.spec import COUNTS, DIRECTIONS


def test_needs_motion_share_and_balance_on_test_split():
    rows = []
    for i, (plan, answer) in enumerate(schedule("test", 0, 400)):
        rows += clip_records(make_clip("test", i, 0, plan, answer))[1]
    stats = question_stats(rows)
    assert stats["needs_motion_fraction"] >= 0.4
    types = stats["types"]
    for qtype in ("direction", "first_half", "second_half", "pan"):
        assert set(types[qtype]["answers"]) == set(DIRECTIONS) and types[qtype]["majority_share"] <= 0.3
    assert types["reverse"]["answers"] == {"yes": 20, "no": 20}
    assert types["direction_changes"]["answers"] == {c: 10 for c in COUNTS}
    for qtype in ("most_moved", "fastest", "order_first", "disappear"):
        # Object answers: the answer's place among the listed objects is balanced too.
        assert max(types[qtype]["answer_positions"].values()) <= 0.55 * types[qtype]["questions"]


def test_chat_records_hold_every_question_of_a_clip_once():
    llava = [
        {
            "id": "train-000001-0",
            "video": "v1.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "left"}],
        },
        {
            "id": "train-000001-1",
            "video": "v1.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ2"}, {"from": "gpt", "value": "red"}],
        },
        {
            "id": "train-000002-0",
            "video": "v2.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ3"}, {"from": "gpt", "value": "yes"}],
        },
    ]
    chats = chat_records(llava)
    assert [c["id"] for c in chats] == ["train-000001", "train-000002"]
    assert [t["value"] for t in chats[0]["conversations"]] == ["<image>\nQ1", "left", "Q2", "red"]
    assert [t["from"] for t in chats[0]["conversations"]] == ["human", "gpt", "human", "gpt"]


def test_clip_steps_label_every_visible_second_and_the_moving_camera():
    look = {"size": 0.2, "rgb": (255, 0, 0), "texture_seed": 0}
    right_then_still = [(0.2, 0.5), (0.3, 0.5), (0.3, 0.5), (0.3, 0.5)]
    down = [(0.5, 0.2), (0.5, 0.3), (0.5, 0.4), (0.5, 0.5)]
    objects = [
        SceneObject("red", "circle", positions=right_then_still, **look),
        SceneObject("blue", "star", positions=down, disappear=2, **look),  # visible for second 0 only
        SceneObject("green", "square", positions=down, appear=1, **look),  # not named: absent at t = 0
    ]
    camera = [(0.0, 0.0), (0.0, 0.0), (-0.1, 0.0), (-0.1, 0.0)]  # pans left in second 1
    scene = Scene(4, Background("gradient", (0, 0, 0), (9, 9, 9), 0.0, 0.2, 0.0, 0), camera, objects)
    assert clip_steps(scene) == [
        ("red circle", 0, "right"),
        ("red circle", 1, "still"),
        ("red circle", 2, "still"),
        ("blue star", 0, "down"),
        ("camera", 0, "still"),
        ("camera", 1, "left"),
        ("camera", 2, "still"),
    ]
    assert (
        step_question("red circle", 0) == "Which way does the red circle move between second 0 and second 1?"
    )
    assert step_question("camera", 1) == "Which way does the camera pan between second 1 and second 2?"


def test_per_second_turns_are_balanced_over_answers():
    steps = [
        ("red circle", 0, "right"),
        ("red circle", 1, "right"),
        ("red circle", 2, "right"),
        ("red circle", 3, "still"),
        ("blue star", 0, "still"),  # never moves: not asked while a subject that moves is
        ("blue star", 1, "still"),
    ]
    rng = np.random.default_rng(0)
    drawn = Counter(balanced_step(steps, rng) for _ in range(4000))
    assert set(drawn) == set(steps[:4])
    # "still" (one second) as often as "right" (three seconds), each "right" second a third of that.
    assert abs(drawn[steps[3]] / 4000 - 0.5) < 0.03
    assert all(abs(drawn[step] / 4000 - 1 / 6) < 0.03 for step in steps[:3])
    assert balanced_step(steps[4:], rng) in steps[4:]  # nothing moves: any subject

    look = {"size": 0.2, "rgb": (255, 0, 0), "texture_seed": 0}
    right_then_still = [(0.2, 0.5), (0.3, 0.5), (0.3, 0.5), (0.3, 0.5)]
    background = Background("gradient", (0, 0, 0), (9, 9, 9), 0.0, 0.2, 0.0, 0)
    scene = Scene(
        4, background, [(0.0, 0.0)] * 4, [SceneObject("red", "circle", positions=right_then_still, **look)]
    )
    asked = {
        step_question("red circle", t, k): label
        for _, t, label in clip_steps(scene)
        for k in range(len(STEP_TEMPLATES))
    }
    for seed in range(5):
        turns = step_questions(scene, np.random.default_rng(seed))
        assert len(turns) == 2 and turns[0][0] != turns[1][0]  # two different seconds
        question, answer = turns[0]
        assert asked[question] == answer
