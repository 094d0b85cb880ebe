"""MotionQA files: determinism whatever the worker count, the output formats, replacing a split."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from cope.motionqa.files import GENERATOR_VERSION
from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.spec import NEEDS_MOTION, PLANS
from tests.motionqa.support import generated


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files_and_frames(test_split, tmp_path):
    summary = generated(tmp_path, "test", 10, seed=3, workers=2)  # worker count must not matter
    assert summary["clips"] == 10 and summary["workers"] == 2
    for name in ("test.json", "test.jsonl", "test-meta.jsonl"):
        assert (tmp_path / name).read_bytes() == (test_split / name).read_bytes(), name
    for index in (0, 5, 9):
        video = f"videos/test-{index:06d}.mp4"
        a, b = decoded_frames(test_split / video), decoded_frames(tmp_path / video)
        assert a.shape == (240, 128, 128, 3) and np.array_equal(a, b)


def test_different_seeds_and_splits_differ(test_split, tmp_path):
    generated(tmp_path, "test", 2, seed=4)
    assert (tmp_path / "test.jsonl").read_text() != (test_split / "test.jsonl").read_text()
    a = decoded_frames(test_split / "videos/test-000000.mp4")
    b = decoded_frames(tmp_path / "videos/test-000000.mp4")
    assert not np.array_equal(a, b)
    # Same seed, other split: a disjoint stream.
    train = make_clip("train", 0, 3, *schedule("train", 3, 1)[0]).scene.to_dict()
    test = make_clip("test", 0, 3, *schedule("test", 3, 1)[0]).scene.to_dict()
    assert train != test


# ------------------------------------------------------------------ output formats


def test_output_formats(test_split):
    llava = json.loads((test_split / "test.json").read_text())
    local = [json.loads(line) for line in (test_split / "test.jsonl").read_text().splitlines()]
    metas = [json.loads(line) for line in (test_split / "test-meta.jsonl").read_text().splitlines()]
    assert len(llava) == len(local) and len(metas) == 10
    assert {m["plan"] for m in metas} == set(PLANS)
    for record, row in zip(llava, local, strict=True):
        assert set(record) == {"id", "video", "conversations"} and record["id"] == row["id"]
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + row["question"]}
        assert gpt == {"from": "gpt", "value": row["answer"]}
        assert set(row) == {"video", "question", "options", "answer", "type", "needs_motion", "id"}
        assert row["answer"] in row["options"] and (test_split / row["video"]).is_file()
        assert row["needs_motion"] == NEEDS_MOTION[row["type"]]
    manifest = json.loads((test_split / "manifest.json").read_text())
    assert manifest["version"] == GENERATOR_VERSION
    assert manifest["splits"]["test"]["seed"] == 3 and manifest["splits"]["test"]["clips"] == 10
    with av.open(str(test_split / "videos/test-000000.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg4", 128, 128)
        assert stream.frames == 240


# ------------------------------------------------------------------ replacing a split


def test_overwrite_replaces_a_split_and_keeps_the_others(tmp_path):
    generated(tmp_path, "train", 3)
    generated(tmp_path, "val", 1, seconds=9)
    generated(tmp_path, "train", 2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "videos").glob("train-*")) == [
        "train-000000.mp4",
        "train-000001.mp4",
    ]
    assert decoded_frames(tmp_path / "videos/val-000000.mp4").shape[0] == 9 * 30
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["splits"]["train"]["clips"] == 2 and manifest["splits"]["val"]["seconds"] == 9
