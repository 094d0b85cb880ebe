"""MotionQA scene building blocks: the held-out colour–shape pairs stay out of train."""

from __future__ import annotations

from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.spec import HELD_OUT_PAIRS


def test_held_out_pairs_only_outside_train():
    def pairs(split):
        out = set()
        for i, (plan, answer) in enumerate(schedule(split, 0, 300)):
            out |= {(o.colour, o.shape) for o in make_clip(split, i, 0, plan, answer).scene.objects}
        return out

    assert not pairs("train") & HELD_OUT_PAIRS
    assert pairs("test") & HELD_OUT_PAIRS
