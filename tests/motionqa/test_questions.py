"""MotionQA questions: every paraphrase is used, distinct and documented."""

from __future__ import annotations

import re
from pathlib import Path

from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.spec import NEEDS_MOTION, TEMPLATES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "motionqa.md"


def test_paraphrases_cover_every_type_and_are_documented():
    docs = DOCS.read_text()
    assert set(TEMPLATES) == set(NEEDS_MOTION)
    used: dict[str, set[str]] = {t: set() for t in TEMPLATES}
    for i, (plan, answer) in enumerate(schedule("train", 0, 600)):
        for q in make_clip("train", i, 0, plan, answer).questions:
            used[q.type].add(q.question)
    for qtype, templates in TEMPLATES.items():
        assert len(set(templates)) == len(templates) >= 3, qtype
        for template in templates:
            assert f"`{template}`" in docs, template
            pattern = _template_regex(template)
            assert any(re.match(pattern, q) for q in used[qtype]), f"never used: {template}"


def _template_regex(template: str) -> str:
    """A regex for the questions a template produces: each placeholder matches any text."""
    parts = re.split(r"\{\w+\}", template.replace("{mid}", "4"))
    return "^" + ".+".join(re.escape(p) for p in parts) + "$"
