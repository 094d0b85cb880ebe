"""Records: what a split's files hold per clip (LLaVA conversations, local evaluation rows,
ground-truth meta), the multi-turn training conversations with their per-second motion turns,
and the statistics of a split's questions."""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np

from cope.motionqa.render import COLOURS, FPS, SHAPES, Scene
from cope.motionqa.spec import DIRECTIONS, NEEDS_MOTION, OBJECT_ANSWER_TYPES, TEMPLATES, YES_NO, Clip
from cope.motionqa.truth import step_direction


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


STEP_TEMPLATES = (
    "Which way does the {subject} move between second {t} and second {u}?",
    "From second {t} to second {u}, where does the {subject} go?",
    "Between seconds {t} and {u}, which direction is the {subject} moving?",
)
# Per-second motion turns added to each training conversation. Two keep the clip's own questions
# (2.2 per clip on average) at about half of the supervised answers: with six they were ~3/4 and
# crowded out the questions the model is asked at test time (docs/tiny-model.md).
STEPS_PER_CLIP = 2


def step_questions(
    scene: Scene, rng: np.random.Generator, limit: int = STEPS_PER_CLIP
) -> list[tuple[str, str]]:
    """Per-second motion questions about one clip: (question, answer) pairs, training only.

    One question asks which way one object (visible at t = 0, so named by colour and shape) or the
    camera moves between two consecutive slots; the answer is left / right / up / down, or still.
    Every Δ-frame of the K = 1 plan spans exactly one such second, so these turns supervise the
    reading of single Δ-frames, which the clip-level questions only do in aggregate. Each turn is
    drawn on its own (``balanced_step``), so neither its place in the conversation nor the other
    turn's answer tells its answer. The test split never asks them.
    """
    steps = clip_steps(scene)
    chosen: list[tuple[str, int, str]] = []
    while len(chosen) < limit and (left := [step for step in steps if step not in chosen]):
        chosen.append(balanced_step(left, rng))
    return [
        (step_question(name, t, int(rng.integers(len(STEP_TEMPLATES)))), label) for name, t, label in chosen
    ]


def balanced_step(steps: list[tuple[str, int, str]], rng: np.random.Generator) -> tuple[str, int, str]:
    """One (subject, second, label) of ``steps``, balanced over answers: a subject that moves at
    some second at random (any subject if none does), one of the labels it has at random, then one
    of its seconds with that label. A subject that moves right for 3 seconds and stands still for 4
    is asked "right" and "still" equally often, so an answer read off the whole clip is right on
    about half of such turns; only reading *when* answers all of them."""
    moving = [name for name, _, label in steps if label != "still"]
    subjects = list(dict.fromkeys(moving or [name for name, _, _ in steps]))
    subject = subjects[int(rng.integers(len(subjects)))]
    labels = list(dict.fromkeys(label for name, _, label in steps if name == subject))
    label = labels[int(rng.integers(len(labels)))]
    matching = [step for step in steps if step[0] == subject and step[2] == label]
    return matching[int(rng.integers(len(matching)))]


def clip_steps(scene: Scene) -> list[tuple[str, int, str]]:
    """Every (subject, second t, label) a per-second question could ask about: each object
    visible at t = 0 while it stays visible from t to t + 1, and the camera if it ever moves;
    label = left / right / up / down / still."""
    subjects = [(o.name, o.positions, o) for o in scene.objects if o.appear == 0]
    if any(a != b for a, b in zip(scene.camera, scene.camera[1:], strict=False)):
        subjects.append(("camera", scene.camera, None))
    steps = []
    for name, track, obj in subjects:
        for t in range(scene.seconds - 1):
            if obj is not None and not (obj.visible_at(t) and obj.visible_at(t + 1)):
                continue
            label = step_direction(track[t + 1][0] - track[t][0], track[t + 1][1] - track[t][1])
            steps.append((name, t, label or "still"))
    return steps


def step_question(subject: str, t: int, template: int = 0) -> str:
    """The per-second question about ``subject`` between second t and t + 1 (``STEP_TEMPLATES``)."""
    question = STEP_TEMPLATES[template].format(subject=subject, t=t, u=t + 1)
    return (
        question.replace("does the camera move", "does the camera pan") if subject == "camera" else question
    )


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


def vocabulary() -> list[str]:
    """Every word MotionQA can ask or answer, in a fixed order: its templates (clip and per-second
    questions), colours, shapes, options, "camera", "pan", "still" and the digits (seconds, counts).

    CoPE-Tiny's closed word-level vocabulary (``cope_tiny_init``): ~140 words instead of a 49k-token
    subword vocabulary, whose embedding was 72% of the model and most of a training step.
    """
    templates = [t for ts in TEMPLATES.values() for t in ts] + list(STEP_TEMPLATES)
    text = re.sub(r"\{\w+\}", " ", " ".join(templates))
    words = [
        *re.findall(r"\w+|[^\w\s]", text),
        *COLOURS,
        *SHAPES,
        *DIRECTIONS,
        *YES_NO,
        "camera",
        "pan",
        "still",
    ]
    words += [str(d) for d in range(10)]
    return list(dict.fromkeys(w.lower() for w in words))


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
