"""MotionQA: determinism, answers recomputed from the trajectories, frame 0 carrying no motion
answer, motion vectors that follow the trajectories, paraphrases, scoring, the command line."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from cope.cli import main
from cope.codec import CanonicalSettings, PFrame, open_video
from cope.data import motionqa as mq
from cope.data.motionqa_render import Scene, object_mask, render_frames, write_video

DOCS = Path(__file__).resolve().parents[2] / "docs" / "motionqa.md"


def generated(out: Path, split: str = "test", clips: int = 10, **kwargs) -> dict:
    return mq.generate_split(out, split, clips, **kwargs)


def decoded_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    """Ten test clips: one per plan (the plan bag), rendered and encoded."""
    out = tmp_path_factory.mktemp("motionqa")
    generated(out, "test", 10, seed=3)
    return out


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
    train = mq.make_clip("train", 0, 3, *mq.schedule("train", 3, 1)[0]).scene.to_dict()
    test = mq.make_clip("test", 0, 3, *mq.schedule("test", 3, 1)[0]).scene.to_dict()
    assert train != test


def test_schedule_is_prefix_stable_and_balanced():
    long = mq.schedule("train", 0, 200)
    assert mq.schedule("train", 0, 37) == long[:37]
    plans = [p for p, _ in long]
    assert {plans.count(p) for p in mq.PLANS} == {20}  # 20 full bags of the 10 plans


# ------------------------------------------------------------------ output formats


def test_output_formats(test_split):
    llava = json.loads((test_split / "test.json").read_text())
    local = [json.loads(line) for line in (test_split / "test.jsonl").read_text().splitlines()]
    metas = [json.loads(line) for line in (test_split / "test-meta.jsonl").read_text().splitlines()]
    assert len(llava) == len(local) and len(metas) == 10
    assert {m["plan"] for m in metas} == set(mq.PLANS)
    for record, row in zip(llava, local, strict=True):
        assert set(record) == {"id", "video", "conversations"} and record["id"] == row["id"]
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + row["question"]}
        assert gpt == {"from": "gpt", "value": row["answer"]}
        assert set(row) == {"video", "question", "options", "answer", "type", "needs_motion", "id"}
        assert row["answer"] in row["options"] and (test_split / row["video"]).is_file()
        assert row["needs_motion"] == mq.NEEDS_MOTION[row["type"]]
    manifest = json.loads((test_split / "manifest.json").read_text())
    assert manifest["version"] == mq.GENERATOR_VERSION
    assert manifest["splits"]["test"]["seed"] == 3 and manifest["splits"]["test"]["clips"] == 10
    with av.open(str(test_split / "videos/test-000000.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg4", 128, 128)
        assert stream.frames == 240


# ------------------------------------------------------------------ answers from trajectories


def _steps(track):
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(track, track[1:], strict=False)]


def _label(dx, dy):
    """Direction of an axis-aligned displacement (y down), written independently of the generator."""
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _moving(track):
    return [(dx, dy) for dx, dy in _steps(track) if math.hypot(dx, dy) > 0.02]


def _net_direction(track, a, b):
    dx, dy = track[b][0] - track[a][0], track[b][1] - track[a][1]
    moves = _moving(track[a : b + 1])
    assert moves and all(_label(*m) == _label(dx, dy) for m in moves), "not a one-way move"
    return _label(dx, dy)


def recompute(meta: dict, row: dict, index: int) -> str:
    """The answer to question ``row`` from the clip's meta (slot positions), from scratch."""
    scene = meta["scene"]
    objects = scene["objects"]
    about = meta["questions"][index]["objects"]
    last, mid = scene["seconds"] - 1, scene["seconds"] // 2
    track = objects[about[0]]["positions"] if about else None
    qtype = row["type"]
    if qtype == "direction":
        return _net_direction(track, 0, last)
    if qtype == "first_half":
        return _net_direction(track, 0, mid)
    if qtype == "second_half":
        return _net_direction(track, mid, last)
    if qtype == "pan":
        return _net_direction(scene["camera"], 0, last)
    if qtype == "reverse":
        moves = _moving(track)
        return (
            "yes"
            if any(a[0] * b[0] + a[1] * b[1] < 0 for a, b in zip(moves, moves[1:], strict=False))
            else "no"
        )
    if qtype == "direction_changes":
        labels = [_label(*m) for m in _moving(track)]
        return str(sum(a != b for a, b in zip(labels, labels[1:], strict=False)))
    if qtype in ("most_moved", "fastest", "order_first"):
        lengths = [[math.hypot(*s) for s in _steps(objects[i]["positions"])] for i in about]
        if qtype == "order_first":
            key = [-min(s for s, d in enumerate(ls) if d > 0.02) for ls in lengths]
        else:
            key = [sum(ls) if qtype == "most_moved" else max(ls) for ls in lengths]
        ranked = sorted(key, reverse=True)
        assert ranked[0] > ranked[1] and (qtype == "order_first" or ranked[0] >= 2 * ranked[1])
        return objects[about[key.index(ranked[0])]]["name"]
    if qtype in ("appear_colour", "appear_shape"):
        (late,) = [o for o in objects if o["appear"] > 0]
        assert late["appear"] <= last - 2  # visible at three slots or more
        return late["colour"] if qtype == "appear_colour" else late["shape"]
    if qtype == "disappear":
        (gone,) = [o for o in objects if o["disappear"] is not None]
        assert 1 <= gone["disappear"] <= last - 1
        return gone["name"]
    obj = objects[about[0]]
    assert obj["appear"] == 0  # appearance questions: about an object in frame 0
    if qtype == "colour":
        assert [o["shape"] for o in objects].count(obj["shape"]) == 1 and obj["shape"] in row["question"]
        return obj["colour"]
    assert qtype == "shape"
    assert [o["colour"] for o in objects].count(obj["colour"]) == 1 and obj["colour"] in row["question"]
    return obj["shape"]


@pytest.mark.parametrize(("split", "seconds"), [("train", 8), ("test", 8), ("val", 12)])
def test_every_answer_matches_the_trajectories(split, seconds):
    seen = set()
    for i, (plan, answer) in enumerate(mq.schedule(split, 11, 120)):
        clip = mq.make_clip(split, i, 11, plan, answer, seconds)
        _, rows, meta = mq.clip_records(clip)
        meta = json.loads(json.dumps(meta))  # exactly what the meta file holds
        for k, row in enumerate(rows):
            assert recompute(meta, row, k) == row["answer"], (row, meta)
            if row["type"] in ("direction", "first_half", "second_half", "reverse", "direction_changes"):
                assert row["question"].count(meta["scene"]["objects"][-1]["name"]) == 1  # named subject
            seen.add(row["type"])
        for obj in meta["scene"]["objects"]:
            if plan != "pan":  # motion never leaves the frame (pans carry static objects out of view)
                assert all(0.1 - 1e-9 <= c <= 0.9 + 1e-9 for p in obj["positions"] for c in p)
    assert seen == set(mq.NEEDS_MOTION)


def test_held_out_pairs_only_outside_train():
    def pairs(split):
        out = set()
        for i, (plan, answer) in enumerate(mq.schedule(split, 0, 300)):
            out |= {(o.colour, o.shape) for o in mq.make_clip(split, i, 0, plan, answer).scene.objects}
        return out

    assert not pairs("train") & mq.HELD_OUT_PAIRS
    assert pairs("test") & mq.HELD_OUT_PAIRS


# ------------------------------------------------------------------ frame 0 carries no motion answer


@pytest.mark.parametrize("plan", mq.PLANS)
def test_frame0_and_wording_do_not_depend_on_the_answer(plan):
    """By construction: every planned answer gives the same frame 0, question text and options."""
    for index in (0, 1):
        views = set()
        frames = []
        for answer in mq.answer_space(plan, "test"):
            clip = mq.make_clip("test", index, 5, plan, answer)
            motion_qs = [(q.question, tuple(q.options)) for q in clip.questions if q.needs_motion]
            visible = [(o.name, o.size, o.rgb, o.positions[0]) for o in clip.scene.objects if o.visible_at(0)]
            views.add((clip.scene.background, tuple(visible), tuple(motion_qs)))
            if len(frames) < 2:
                frames.append(next(render_frames(clip.scene, 64, 64)))
        assert len(views) == 1, plan
        assert np.array_equal(frames[0], frames[1])


def test_needs_motion_share_and_balance_on_test_split():
    rows = []
    for i, (plan, answer) in enumerate(mq.schedule("test", 0, 400)):
        rows += mq.clip_records(mq.make_clip("test", i, 0, plan, answer))[1]
    stats = mq.question_stats(rows)
    assert stats["needs_motion_fraction"] >= 0.4
    types = stats["types"]
    for qtype in ("direction", "first_half", "second_half", "pan"):
        assert set(types[qtype]["answers"]) == set(mq.DIRECTIONS) and types[qtype]["majority_share"] <= 0.3
    assert types["reverse"]["answers"] == {"yes": 20, "no": 20}
    assert types["direction_changes"]["answers"] == {c: 10 for c in mq.COUNTS}
    for qtype in ("most_moved", "fastest", "order_first", "disappear"):
        # Object answers: the answer's place among the listed objects is balanced too.
        assert max(types[qtype]["answer_positions"].values()) <= 0.55 * types[qtype]["questions"]


# ------------------------------------------------------------------ codec: motion vectors


def _content_direction(mv: np.ndarray, mask: np.ndarray) -> str:
    dx, dy = -np.median(mv[mask], axis=0)  # contract sign: content moving right → dx < 0
    return _label(dx, dy)


@pytest.mark.parametrize("direction", mq.DIRECTIONS)
def test_motion_vectors_point_where_the_subject_moves(direction, tmp_path):
    clip = mq.make_clip("test", 2, 1, "direction", direction)
    path = tmp_path / "clip.mp4"
    write_video(render_frames(clip.scene, 128, 128), path, 128, 128, 240, 3)
    video = open_video(path, CanonicalSettings(width=128, height=128), cache_dir=tmp_path / "cache")
    subject = len(clip.scene.objects) - 1
    track = clip.scene.objects[subject].positions
    checked = 0
    for entry in video.entries(video.plan(fusion=30, keyframes_per_gop=1)):
        if isinstance(entry, PFrame):
            slot = entry.index // 30
            dx, dy = np.subtract(track[slot], track[slot - 1])
            if math.hypot(dx, dy) > 0.05:
                mask = object_mask(clip.scene, subject, slot, 128, 128)
                assert _content_direction(entry.mv, mask) == direction
                checked += 1
    assert checked >= 1


def test_camera_pan_moves_the_content_the_other_way(tmp_path):
    clip = mq.make_clip("test", 0, 1, "pan", "left")
    path = tmp_path / "pan.mp4"
    write_video(render_frames(clip.scene, 128, 128), path, 128, 128, 240, 3)
    video = open_video(path, CanonicalSettings(width=128, height=128), cache_dir=tmp_path / "cache")
    cam = clip.scene.camera
    checked = 0
    for entry in video.entries(video.plan(fusion=30, keyframes_per_gop=1)):
        if isinstance(entry, PFrame) and cam[entry.index // 30][0] < cam[entry.index // 30 - 1][0] - 0.05:
            background = np.ones((128, 128), dtype=bool)
            for i in range(len(clip.scene.objects)):
                background &= ~object_mask(clip.scene, i, entry.index // 30, 128, 128)
            assert _content_direction(entry.mv, background) == "right"  # camera left → content right
            checked += 1
    assert checked >= 3


def test_verify_reports_agreement(test_split, tmp_path, capsys):
    code = main(
        ["motionqa", "verify", str(test_split), "--split", "test", "--cache-dir", str(tmp_path), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["clips"] == 10
    assert report["object_moves"] > 0 and report["object_agreement"] >= 0.9
    assert report["pan_moves"] > 0 and report["pan_agreement"] == 1.0


# ------------------------------------------------------------------ rendering


def test_rendering_is_resolution_independent():
    clip = mq.make_clip("test", 7, 2, *mq.schedule("test", 2, 8)[7])
    small = next(render_frames(clip.scene, 128, 128)).astype(np.float32)
    large = next(render_frames(clip.scene, 256, 256)).astype(np.float32)
    halved = large.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - small).mean() < 6  # same picture; only edge anti-aliasing differs
    wide = next(render_frames(clip.scene, 320, 180))
    assert wide.shape == (180, 320, 3)


def test_scene_round_trips_through_json():
    clip = mq.make_clip("val", 3, 0, "appear", ("red", "star"))
    again = Scene.from_dict(json.loads(json.dumps(clip.scene.to_dict())))
    assert again == clip.scene


# ------------------------------------------------------------------ paraphrases and scoring


def test_paraphrases_cover_every_type_and_are_documented():
    docs = DOCS.read_text()
    assert set(mq.TEMPLATES) == set(mq.NEEDS_MOTION)
    used: dict[str, set[str]] = {t: set() for t in mq.TEMPLATES}
    for i, (plan, answer) in enumerate(mq.schedule("train", 0, 600)):
        for q in mq.make_clip("train", i, 0, plan, answer).questions:
            used[q.type].add(q.question)
    for qtype, templates in mq.TEMPLATES.items():
        assert len(set(templates)) == len(templates) >= 3, qtype
        for template in templates:
            assert f"`{template}`" in docs, template
            pattern = _template_regex(template)
            assert any(re.match(pattern, q) for q in used[qtype]), f"never used: {template}"


def _template_regex(template: str) -> str:
    """A regex for the questions a template produces: each placeholder matches any text."""
    parts = re.split(r"\{\w+\}", template.replace("{mid}", "4"))
    return "^" + ".+".join(re.escape(p) for p in parts) + "$"


@pytest.mark.parametrize(
    ("prediction", "options", "expected"),
    [
        ("left", mq.DIRECTIONS, "left"),
        ("The camera pans Left.", mq.DIRECTIONS, "left"),
        ("B", mq.DIRECTIONS, "right"),
        ("(c)", mq.DIRECTIONS, "up"),
        ("D. down", mq.DIRECTIONS, "down"),
        ("left, then right", mq.DIRECTIONS, None),
        ("No, it does not.", mq.YES_NO, "no"),
        ("twice", mq.COUNTS, "2"),
        ("It changes direction three times", mq.COUNTS, "3"),
        ("the red one", ["red circle", "blue square"], "red circle"),
        ("The blue square.", ["red circle", "blue square", "blue star"], "blue square"),
        ("blue", ["red circle", "blue square", "blue star"], None),
        ("Magenta", list(mq.COLOURS), "purple"),
        ("a triangle", list(mq.SHAPES), "triangle"),
    ],
)
def test_match_option(prediction, options, expected):
    assert mq.match_option(prediction, list(options)) == expected
    if expected is not None:
        assert mq.score_prediction(prediction, expected, list(options))


def test_multiple_choice_prompt_letters_score_back():
    prompt = mq.multiple_choice_prompt("Which way does the red circle move?", list(mq.DIRECTIONS))
    assert prompt.splitlines()[1:5] == ["A. left", "B. right", "C. up", "D. down"]
    assert mq.score_prediction("C", "up", list(mq.DIRECTIONS))


# ------------------------------------------------------------------ command line


def test_cli_generate_json_and_stats(tmp_path, capsys):
    assert (
        main(["motionqa", "generate", "--out", str(tmp_path), "--split", "val", "--clips", "3", "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 3 and summary["split"] == "val" and summary["size"] == [128, 128]
    assert main(["motionqa", "stats", str(tmp_path), "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["questions"] == summary["questions"]


@pytest.mark.parametrize(
    "args",
    [
        ["--clips", "0"],
        ["--clips", "2", "--size", "100x"],
        ["--clips", "2", "--size", "63x64"],
        ["--clips", "2", "--seconds", "5"],
        ["--clips", "2", "--workers", "0"],
        ["--clips", "2", "--seed", "-1"],
    ],
)
def test_cli_bad_arguments_exit_2(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        code = main(["motionqa", "generate", "--out", str(tmp_path / "out"), "--split", "test", *args])
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "out" / "test.json").exists()


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


def test_cli_refuses_to_overwrite_and_names_the_file(test_split):
    before = (test_split / "test.json").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "cope.cli", "motionqa", "generate", "--out", str(test_split)]
        + ["--split", "test", "--clips", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"cope: error: {test_split / 'test.json'}: already exists " + (
        "(pass --overwrite to replace the test split)"
    )
    assert (test_split / "test.json").read_bytes() == before
    bad_split = subprocess.run(
        [sys.executable, "-m", "cope.cli", "motionqa", "stats", str(test_split), "--split", "dev"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_split.returncode == 2 and len(bad_split.stderr.strip().splitlines()) == 1


def test_chat_records_hold_every_question_of_a_clip_once():
    from cope.data.motionqa import chat_records

    llava = [
        {
            "id": "train-000001-0",
            "video": "v1.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "left"}],
        },
        {
            "id": "train-000001-1",
            "video": "v1.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ2"}, {"from": "gpt", "value": "red"}],
        },
        {
            "id": "train-000002-0",
            "video": "v2.mp4",
            "conversations": [{"from": "human", "value": "<image>\nQ3"}, {"from": "gpt", "value": "yes"}],
        },
    ]
    chats = chat_records(llava)
    assert [c["id"] for c in chats] == ["train-000001", "train-000002"]
    assert [t["value"] for t in chats[0]["conversations"]] == ["<image>\nQ1", "left", "Q2", "red"]
    assert [t["from"] for t in chats[0]["conversations"]] == ["human", "gpt", "human", "gpt"]
