"""Generate the bundled sample video ``src/cope/assets/sample.mp4`` and its questions.

A MotionQA scene (``cope.motionqa``) from outside the training data: the "halves" plan on the
test split's held-out backgrounds, seed 2026, where an object moves one way during the first four
seconds and another way during the next three. It is rendered at 480×480 and written as 8 s of
H.264 with B-frames, so the demo shows a real transcode to the canonical MPEG-4 stream.
``src/cope/assets/sample.json`` holds its questions with their ground-truth answers.

Run: ``python scripts/make_sample_video.py`` (deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import av

from cope.motionqa import make_clip, render_frames

SIDE, FPS = 480, 30
SEED, PLAN, ANSWER = 2026, "halves", ("right", "left")  # moves right, then back left
ASSETS = Path(__file__).resolve().parent.parent / "src" / "cope" / "assets"


def main() -> None:
    clip = make_clip("test", 0, SEED, PLAN, ANSWER)
    out = ASSETS / "sample.mp4"
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "20", "bf": "2", "g": "120"})
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for rgb in render_frames(clip.scene, SIDE, SIDE):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    questions = [
        {
            "question": q.question,
            "answer": q.answer,
            "options": q.options,
            "type": q.type,
            "needs_motion": q.needs_motion,
        }
        for q in clip.questions
    ]
    (ASSETS / "sample.json").write_text(
        json.dumps({"video": "sample.mp4", "questions": questions}, indent=1) + "\n"
    )
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {[q['question'] for q in questions]}")


if __name__ == "__main__":
    main()
