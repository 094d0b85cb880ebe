"""What MotionQA is made of: splits, directions, geometry, plans, question types, their wording,
and the Question and Clip records (the benchmark's design is in the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cope.motionqa.render import Scene

SPLITS = ("train", "val", "test")
SPLIT_KEY = {"train": 0, "val": 1, "test": 2}

DIRECTIONS = ("left", "right", "up", "down")
VECTOR = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
YES_NO = ("yes", "no")
COUNTS = ("0", "1", "2", "3")

# Geometry, in fractions of the frame side (x of the width, y of the height).
BOUNDS = (0.1, 0.9)  # every moving object's centre stays inside this range on both axes
SUBJECT_BOX = (0.45, 0.55)  # start of the subject of direction-type questions: room all round
PLACE_BOX = (0.15, 0.85)  # start of every other object
SUBJECT_REACH = BOUNDS[1] - SUBJECT_BOX[1]  # 0.35: largest excursion a subject may make
MIN_SPEED, MAX_SPEED = 0.08, 0.25  # per second, whenever something moves
# A camera pan's speed per second is drawn from this range, then each second's step jittered by
# ×1.0–1.25 (so 10–22 px/s at 128 px). ``generate_split(pan_speed=...)`` widens it for training
# sets whose pans should cover the speeds of real footage.
PAN_SPEED = (MIN_SPEED, 0.14)
# What ``pan_speed`` may ask for: twice STILL at least, and at most 0.3 (0.375 with the jitter, 48 px/s
# at 128 px). Splits were generated at 0.05–0.28 (CoPE-Tiny v7–v10) and 0.2–0.3 (the tests).
PAN_SPEED_LIMITS = (0.02, 0.3)
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

# Whether a question type needs more than the RGB frame at t = 0 (see the package docstring).
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
