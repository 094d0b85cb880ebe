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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_formats(test_split):
    llava = json.loads((test_split / "test.json").read_text())
    local = read_jsonl(test_split / "test.jsonl")
    metas = read_jsonl(test_split / "test-meta.jsonl")
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


# ------------------------------------------------------------------ pan speed and plan filter


def camera_speeds(metas: list[dict]) -> dict[str, float]:
    """Each pan clip's fastest per-second camera step, in frame sides per second (positions are
    written to 4 decimals, so steps are exact to 1e-3)."""
    return {
        m["video"]: float(np.abs(np.diff(m["scene"]["camera"], axis=0)).sum(axis=1).max())
        for m in metas
        if m["plan"] == "pan"
    }


def test_pan_speed_changes_only_pan_clips_and_plans_keeps_them_as_in_the_full_split(tmp_path):
    default, faster, pans = tmp_path / "default", tmp_path / "faster", tmp_path / "pans"
    generated(default, "train", 30, seed=2)
    generated(faster, "train", 30, seed=2, pan_speed=(0.2, 0.3))
    summary = generated(pans, "train", 30, seed=2, pan_speed=(0.2, 0.3), plans=("pan",))
    base, fast, only = (read_jsonl(d / "train-meta.jsonl") for d in (default, faster, pans))
    assert all(0.08 - 1e-3 <= v <= 0.14 * 1.25 + 1e-3 for v in camera_speeds(base).values())
    assert camera_speeds(fast) and all(
        0.2 - 1e-3 <= v <= 0.3 * 1.25 + 1e-3 for v in camera_speeds(fast).values()
    )
    # Every other clip is the default split's, byte for byte.
    assert [m for m in base if m["plan"] != "pan"] == [m for m in fast if m["plan"] != "pan"]
    # The filtered split holds exactly the faster split's pan clips: same names, scenes, records.
    assert only == [m for m in fast if m["plan"] == "pan"] and summary["clips"] == len(only) == 3
    assert sorted(p.name for p in (pans / "videos").iterdir()) == [Path(m["video"]).name for m in only]
    chat = {r["id"]: r for r in json.loads((faster / "train-chat.json").read_text())}
    assert json.loads((pans / "train-chat.json").read_text()) == [chat[m["id"]] for m in only]
    entry = json.loads((pans / "manifest.json").read_text())["splits"]["train"]
    assert entry["pan_speed"] == [0.2, 0.3] and entry["plans"] == ["pan"] and entry["schedule_clips"] == 30
    assert "pan_speed" not in json.loads((default / "manifest.json").read_text())["splits"]["train"]


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
