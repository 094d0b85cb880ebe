"""MotionQA plans: a balanced, prefix-stable schedule, and frame 0 carrying no motion answer."""

from __future__ import annotations

import numpy as np
import pytest

from cope.motionqa.plans import answer_space, schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.render import render_frames
from cope.motionqa.spec import PLANS


def test_schedule_is_prefix_stable_and_balanced():
    long = schedule("train", 0, 200)
    assert schedule("train", 0, 37) == long[:37]
    plans = [p for p, _ in long]
    assert {plans.count(p) for p in PLANS} == {20}  # 20 full bags of the 10 plans


# ------------------------------------------------------------------ frame 0 carries no motion answer


@pytest.mark.parametrize("plan", PLANS)
def test_frame0_and_wording_do_not_depend_on_the_answer(plan):
    """By construction: every planned answer gives the same frame 0, question text and options."""
    for index in (0, 1):
        views = set()
        frames = []
        for answer in answer_space(plan, "test"):
            clip = make_clip("test", index, 5, plan, answer)
            motion_qs = [(q.question, tuple(q.options)) for q in clip.questions if q.needs_motion]
            visible = [(o.name, o.size, o.rgb, o.positions[0]) for o in clip.scene.objects if o.visible_at(0)]
            views.add((clip.scene.background, tuple(visible), tuple(motion_qs)))
            if len(frames) < 2:
                frames.append(next(render_frames(clip.scene, 64, 64)))
        assert len(views) == 1, plan
        assert np.array_equal(frames[0], frames[1])
