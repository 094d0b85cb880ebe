"""`cope preprocess`: the slot cache, its exactness against the raw-video path, failures, resume, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cope.cli import main
from cope.codec import CanonicalSettings, open_video
from cope.data.cache import SlotCache, half_pel, visual_input_from_cache
from cope.data.instruct import Sampling
from cope.data.preprocess import VideoResult, run_local
from cope.model.inputs import VisualInput
from tests.clips import write_translation_clip

# Small and fast, but with the structure that matters: GOP 20 with fusion 5 is 4 slots per GOP,
# and 50 frames make 3 GOPs, the last one short (2 slots).
SIDE, FRAMES, GOP, FUSION = 64, 50, 20, 5
CANONICAL = CanonicalSettings(width=SIDE, height=SIDE, gop=GOP)
OPTIONS = ["--size", f"{SIDE}x{SIDE}", "--gop", str(GOP), "--fusion", str(FUSION)]
GOOD = 6


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """Six good clips (different motion), one corrupt (truncated), one missing, and the list."""
    folder = tmp_path_factory.mktemp("preprocess-clips")
    good = [
        write_translation_clip(
            folder / f"clip{i}.mp4", frames=FRAMES, dx=0.5 * (i + 1), dy=0.5 * (i % 2), side=SIDE
        )
        for i in range(GOOD)
    ]
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(good[0].read_bytes()[:300])  # a cut-off download: header only, no frame
    missing = folder / "missing.mp4"
    listing = folder / "videos.txt"
    # Relative paths are relative to the list's folder; comments and blank lines are skipped.
    lines = [
        "# training videos",
        *(p.name for p in good[:3]),
        "",
        corrupt.name,
        *map(str, good[3:]),
        str(missing),
    ]
    listing.write_text("\n".join(lines) + "\n")
    return {"good": good, "corrupt": corrupt, "missing": missing, "list": listing, "folder": folder}


def run(args: list[str], capsys) -> tuple[int, dict | None]:
    code = main(["preprocess", *args, "--json", *OPTIONS])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def assert_same_visual(a: VisualInput, b: VisualInput) -> None:
    assert a.kinds == b.kinds and a.indices == b.indices and a.times == b.times
    for name in ("frames", "mv", "residual"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


def check_run(videos, out: Path, summary: dict) -> None:
    assert summary["done"] == GOOD and summary["skipped"] == 0 and summary["listed"] == GOOD + 2
    reasons = {f["video"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {str(videos["corrupt"]), str(videos["missing"])}
    assert reasons[str(videos["missing"])] == "no such file"
    assert reasons[str(videos["corrupt"])].startswith("not a readable video")
    cache = SlotCache(out)
    assert len(cache) == GOOD
    assert cache.settings.canonical == CANONICAL and cache.settings.fusion == FUSION
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted(r["source"] for r in ok) == sorted(str(p) for p in videos["good"])
    for r in ok:  # the manifest fields the cache promises
        assert r["frames"] == FRAMES and r["slots"] == 10 and r["gops"] == 3 and len(r["sha256"]) == 64
        assert r["settings"]["fusion"] == FUSION and (out / r["shard"]).is_file() and r["length"] > 0
    assert summary["bytes_per_video_minute"] == round(summary["entry_bytes"] / (GOOD * FRAMES / 30 / 60))
    assert not (out / ".work").exists() and not list(out.glob(".shard-*"))


def test_local_pool_caches_good_videos_reports_failures_and_resumes(videos, tmp_path, capsys):
    out = tmp_path / "cache"
    code, summary = run([str(videos["list"]), "--out", str(out), "--workers", "2"], capsys)
    assert code == 0
    check_run(videos, out, summary)

    # A rerun does no work for finished videos; the failed ones are tried (and fail) again.
    code, again = run([str(videos["list"]), "--out", str(out), "--workers", "2"], capsys)
    assert code == 0
    assert (again["done"], again["skipped"], again["failed"], again["shards_written"]) == (0, GOOD, 2, 0)

    # A run killed while appending the manifest leaves a torn last line: that video is redone.
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    k = max(i for i, line in enumerate(lines) if json.loads(line)["status"] == "ok")
    last_ok = json.loads(lines[k])
    manifest.write_bytes(b"".join(lines[:k]) + lines[k][:25])
    code, resumed = run([str(videos["list"]), "--out", str(out)], capsys)
    assert code == 0 and resumed["done"] == 1 and resumed["skipped"] == GOOD - 1
    assert SlotCache(out).record(last_ok["source"])["shard"] != last_ok["shard"]
    assert manifest.read_bytes().endswith(b"\n")


def test_cache_serves_every_plan_exactly_like_the_raw_video(videos, tmp_path, capsys):
    """From one entry: K = 1, 2, 4, dense-at-1-FPS, iframes-only and a jittered plan, equal to decoding."""
    out = tmp_path / "cache"
    listing = tmp_path / "two.txt"
    listing.write_text(f"{videos['good'][1]}\n{videos['good'][4]}\n")
    code, summary = run([str(listing), "--out", str(out), "--shard-mb", "0.000001"], capsys)
    assert code == 0 and summary["done"] == 2 and summary["shards_written"] == 2  # one entry per shard
    cache = SlotCache(out)
    for path in (videos["good"][1], videos["good"][4]):
        entry = cache.entry(path)
        assert entry.slot_index.tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
        video = open_video(path, CANONICAL, cache_dir=tmp_path / "transcodes")
        for k in (1, 2, 4, "dense"):
            raw = VisualInput.from_entries(
                video.entries(video.plan(FUSION, 4 if k == "dense" else k)), SIDE, SIDE, CANONICAL.fps
            )
            cached = visual_input_from_cache(entry, k)
            assert_same_visual(cached, raw)
            assert_same_visual(cached.without_deltas(), raw.without_deltas())
        assert visual_input_from_cache(entry, 2).kinds == ("I", "P", "I", "P") * 2 + ("I", "P")
        jittered = Sampling(keyframes_per_gop=2, fusion=FUSION, keyframe_jitter=True).plan(
            FRAMES, [0, 20, 40], GOP, rng=np.random.default_rng(3)
        )
        raw = VisualInput.from_entries(video.entries(jittered), SIDE, SIDE, CANONICAL.fps)
        assert_same_visual(entry.visual_input(jittered), raw)
    # Lookup by id works as well as by path; a video never preprocessed is named.
    record = cache.record(videos["good"][1])
    assert cache.entry(record["id"]).source == str(videos["good"][1])
    with pytest.raises(Exception, match="not in the cache"):
        cache.entry(videos["good"][0])


def test_gop_cap_is_recorded_and_applied(videos, tmp_path, capsys):
    out = tmp_path / "cache"
    listing = tmp_path / "one.txt"
    listing.write_text(f"{videos['good'][2]}\n")
    code, _ = run([str(listing), "--out", str(out), "--max-gops", "2"], capsys)
    assert code == 0
    entry = SlotCache(out).entry(videos["good"][2])
    assert entry.cached_gops == [0, 2]  # 3 GOPs, cap 2: first and last (uniform)
    video = open_video(videos["good"][2], CANONICAL, cache_dir=tmp_path / "transcodes")
    raw = VisualInput.from_entries(
        video.entries(video.plan(FUSION, 2, max_gops=2)), SIDE, SIDE, CANONICAL.fps
    )
    assert_same_visual(entry.visual_input(entry.plan(2, max_gops=2)), raw)


def test_cache_finds_a_video_read_through_a_linked_folder(videos, tmp_path, capsys):
    """A folder preprocessed under one name and read through a symlink, or the other way round,
    still hits its entries: the lookup falls back to resolved paths instead of decoding again."""
    out, link = tmp_path / "cache", tmp_path / "linked-clips"
    link.symlink_to(videos["folder"], target_is_directory=True)
    real, linked = videos["good"][1], link / videos["good"][2].name  # listed by these paths
    listing = tmp_path / "two.txt"
    listing.write_text(f"{real}\n{linked}\n")
    assert run([str(listing), "--out", str(out)], capsys)[0] == 0
    cache = SlotCache(out)
    assert cache.record(link / real.name)["source"] == str(real)
    assert cache.record(videos["good"][2])["source"] == str(linked)
    assert cache.entry(link / real.name).num_frames == FRAMES
    assert cache.record(link / videos["good"][0].name) is None  # never preprocessed: still a miss


def test_bad_list_and_bad_directory_exit_2(videos, tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "c")]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["preprocess", str(empty), "--out", str(tmp_path / "c")]) == 2
    assert "lists no videos" in capsys.readouterr().err
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text(f"{videos['corrupt']}\n")
    code, summary = run([str(only_bad), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and summary["failed"] == 1  # every video failed: the summary, then exit 2
    # The same directory with other settings is refused instead of mixing two caches.
    assert main(["preprocess", str(only_bad), "--out", str(tmp_path / "c"), "--size", "32x32"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_half_pel_storage_is_exact_or_refused():
    mv = np.array([[[1.5, -2.0], [0.0, 31.5]]], dtype=np.float32)
    assert half_pel(mv, "t").tolist() == [[[3, -4], [0, 63]]]
    with pytest.raises(ValueError, match="half-pel"):
        half_pel(mv + 0.25, "t")


def test_a_dying_worker_fails_only_its_videos_and_a_fresh_pool_goes_on():
    """A worker killed mid-task (here: it exits) breaks the pool; the run reports and continues."""
    sources = [str(i) for i in range(30)]
    sources[2] = "__import__('os')._exit(3)"
    results = list(run_local(eval, sources, (), workers=2))  # eval: a task children need not import
    failed = {r.source: r.reason for r in results if isinstance(r, VideoResult)}
    values = [r for r in results if not isinstance(r, VideoResult)]
    assert len(results) == len(sources) and len(failed) + len(values) == len(sources)
    assert failed[sources[2]].startswith("RuntimeError: worker process died")
    assert 29 in values  # submitted after the crash: done by the fresh pool


@pytest.mark.slow
def test_ray_backend_same_job(videos, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one local instance for both runs
    try:
        out = tmp_path / "cache"
        args = [str(videos["list"]), "--out", str(out), "--backend", "ray", "--workers", "2"]
        code, summary = run(args, capsys)
        assert code == 0 and summary["backend"] == "ray"
        check_run(videos, out, summary)
        code, again = run(args, capsys)
        assert code == 0 and (again["done"], again["skipped"], again["failed"]) == (0, GOOD, 2)
    finally:
        ray.shutdown()
    entry = SlotCache(out).entry(videos["good"][0])
    video = open_video(videos["good"][0], CANONICAL, cache_dir=tmp_path / "transcodes")
    raw = VisualInput.from_entries(video.entries(video.plan(FUSION, 4)), SIDE, SIDE, CANONICAL.fps)
    assert_same_visual(visual_input_from_cache(entry, 4), raw)
