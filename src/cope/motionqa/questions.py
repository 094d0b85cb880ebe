"""Questions: a clip built from its plan and planned answer, with its questions worded,
their options listed, and every answer recomputed from the trajectories and checked."""

from __future__ import annotations

import numpy as np

from cope.motionqa.plans import PLAN_FUNCTIONS, Builder
from cope.motionqa.render import COLOURS, SHAPES, Scene
from cope.motionqa.spec import (
    COUNTS,
    DIRECTIONS,
    OBJECT_ANSWER_TYPES,
    PAN_SPEED,
    SPLIT_KEY,
    TEMPLATES,
    YES_NO,
    Clip,
    Question,
)
from cope.motionqa.truth import answer_for


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


def make_clip(
    split: str,
    index: int,
    seed: int,
    plan: str,
    answer,
    seconds: int = 8,
    pan_speed: tuple[float, float] = PAN_SPEED,
) -> Clip:
    """Build clip ``index`` of ``split`` with the given plan and planned answer (see ``schedule``).

    The clip's own random streams (seed, split, index) draw everything the planned answer does
    not decide: one for what frame 0 shows, one for the motion, one for the wording. Every written
    answer is recomputed from the trajectories and checked against the plan, so a plan bug cannot
    produce a wrong label.
    """
    layout, motion, text = (
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_KEY[split], 1, index, k)))
        for k in range(3)
    )
    builder = Builder(layout, motion, split, seconds, pan_speed)
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
