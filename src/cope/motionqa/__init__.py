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

Modules, each using only those before it: ``render`` (the scene record, textures, sprites, frames,
the video file), ``spec`` (splits, geometry, plans, question types and their wording, the Question
and Clip records), ``truth`` (answers from trajectories), ``scenes`` (backgrounds, looks, placement,
moves), ``plans`` (a plan per clip and the balanced schedule), ``questions`` (``make_clip``),
``records`` (the records a split's files hold, training conversations, statistics), ``files``
(``generate_split``, ``load_split``), and ``codec_check`` (``motion_vector_agreement``). Free-form
answers are scored by ``cope.eval.scoring``.
"""

from cope.motionqa.codec_check import motion_vector_agreement
from cope.motionqa.files import GENERATOR_VERSION, generate_split, load_split
from cope.motionqa.plans import answer_space, schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.records import (
    STEP_TEMPLATES,
    chat_records,
    clip_records,
    question_stats,
    step_questions,
    vocabulary,
)
from cope.motionqa.render import (
    COLOURS,
    FPS,
    SHAPES,
    Background,
    Scene,
    SceneObject,
    render_frames,
    write_video,
)
from cope.motionqa.spec import (
    COUNTS,
    DIRECTIONS,
    HELD_OUT_PAIRS,
    NEEDS_MOTION,
    OBJECT_ANSWER_TYPES,
    PAN_SPEED,
    PLANS,
    SPLITS,
    TEMPLATES,
    YES_NO,
    Clip,
    Question,
)
from cope.motionqa.truth import answer_for

__all__ = [
    "COLOURS",
    "COUNTS",
    "DIRECTIONS",
    "FPS",
    "GENERATOR_VERSION",
    "HELD_OUT_PAIRS",
    "NEEDS_MOTION",
    "OBJECT_ANSWER_TYPES",
    "PAN_SPEED",
    "PLANS",
    "SHAPES",
    "SPLITS",
    "STEP_TEMPLATES",
    "TEMPLATES",
    "YES_NO",
    "Background",
    "Clip",
    "Question",
    "Scene",
    "SceneObject",
    "answer_for",
    "answer_space",
    "chat_records",
    "clip_records",
    "generate_split",
    "load_split",
    "make_clip",
    "motion_vector_agreement",
    "question_stats",
    "render_frames",
    "schedule",
    "step_questions",
    "vocabulary",
    "write_video",
]
