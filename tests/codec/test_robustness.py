"""Awkward and broken inputs: never a crash, never a silent wrong answer (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.clips import texture

# (muxer, file suffix, encoder): every container PyAV writes that users send us.
MUXERS = (
    ("mp4", "mp4", "libx264"),
    ("mov", "mov", "mpeg4"),
    ("matroska", "mkv", "libx264"),
    ("mpegts", "ts", "libx264"),
    ("avi", "avi", "mpeg4"),
    ("h264", "h264", "libx264"),
    ("hevc", "hevc", "libx265"),
    ("webm", "webm", "libvpx"),
)

# Runs in a child process, so a segfault inside FFmpeg is a failed test, not a dead pytest. It
# opens every file the way ``cope inspect``/``extract`` do (transcode, scan, decode the plan), the
# way ``--no-transcode`` does and in native mode (two workers), and prints one JSON line per file.
FUZZ_HARNESS = r"""
import json, sys
from dataclasses import replace
from cope.codec import CanonicalSettings, open_video
from cope.codec.reader import CanonicalReader
from cope.errors import CopeInputError

settings = CanonicalSettings(width=32, height=32, gop=8)
cache = sys.argv[1]
for path in sys.argv[2:]:
    print(json.dumps({"start": path}), flush=True)
    outcome = {}
    for how in ("transcode", "no-transcode", "native"):
        try:
            if how == "transcode":
                video = open_video(path, settings, cache_dir=cache)
            elif how == "native":
                video = open_video(path, replace(settings, codec="native"), workers=2)
            else:
                video = open_video(path, no_transcode=True)
            for _ in video.entries(video.plan(fusion=2)):
                pass
            outcome[how] = "ok"
        except CopeInputError as exc:
            outcome[how] = "input-error" if "\n" not in str(exc) else f"multi-line: {exc!r}"
        except Exception as exc:
            outcome[how] = f"internal: {type(exc).__name__}: {exc}"
    print(json.dumps({"done": path, **outcome}), flush=True)
"""


def tiny_clip(path: Path, muxer: str, codec: str, frames: int = 6, side: int = 64) -> Path:
    tex = texture(side, side + 2 * frames).astype(np.uint8)
    with av.open(str(path), "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=30)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.ascontiguousarray(tex[:, 2 * i : 2 * i + side])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def fuzz_corpus(directory: Path) -> list[Path]:
    """Each tiny container intact, a one-frame version, cut at 3 points, and with 1–29 bits flipped
    (6 times)."""
    rng = np.random.default_rng(14)
    files = []
    for muxer, suffix, codec in MUXERS:
        clip = tiny_clip(directory / f"clip.{suffix}", muxer, codec)
        one = tiny_clip(directory / f"one.{suffix}", muxer, codec, frames=1)
        data = clip.read_bytes()
        files += [clip, one]
        for fraction in (0.1, 0.5, 0.9):
            cut = directory / f"cut{int(fraction * 100)}.{suffix}"
            cut.write_bytes(data[: max(1, int(len(data) * fraction))])
            files.append(cut)
        for trial in range(6):
            flipped = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 30))):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            damaged = directory / f"flip{trial}.{suffix}"
            damaged.write_bytes(bytes(flipped))
            files.append(damaged)
    return files


@pytest.mark.slow
def test_fuzzed_containers_never_crash_the_process(tmp_path):
    files = fuzz_corpus(tmp_path)
    start = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", FUZZ_HARNESS, str(tmp_path / "cache"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in child.stdout.splitlines()]
    started = [line["start"] for line in lines if "start" in line]
    assert child.returncode == 0, (
        f"the harness died with {child.returncode} on {started[-1] if started else '?'}: {child.stderr[-2000:]}"
    )
    results = [line for line in lines if "done" in line]
    assert len(results) == len(files)
    bad = [r for r in results if any(v not in ("ok", "input-error") for k, v in r.items() if k != "done")]
    assert not bad, bad
    # The intact clips all transcode; only damage may turn into an input error.
    intact = {r["done"]: r["transcode"] for r in results if Path(r["done"]).stem in ("clip", "one")}
    assert set(intact.values()) == {"ok"}, intact
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_one_frame_mpegts_summary_is_read_before_the_container_closes(tmp_path, cache_dir):
    """Before: SIGSEGV (exit 139) reading ``stream.average_rate`` of a closed container."""
    path = tiny_clip(tmp_path / "one.ts", "mpegts", "libx264", frames=1)
    child = subprocess.run(
        [sys.executable, "-m", "cope.cli", "inspect", str(path), "--json", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["source"]["frames"] == 1 and report["source"]["width"] == 64


def test_raw_h264_without_timestamps_is_read_at_its_nominal_rate(tmp_path, cache_dir, cope_cli):
    """Before: FileNotFoundError on the ``.partial`` stream (the fps filter dropped every frame)."""
    path = tiny_clip(tmp_path / "raw.h264", "h264", "libx264", frames=12)
    child = cope_cli("inspect", path, "--json", "--size", "64x64", "--cache-dir", cache_dir)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["source"]["frames"] == 12 and report["source"]["fps"] == 30.0
    assert report["canonical"]["frames"] == 12


def test_mp4_without_moov_says_it_looks_unfinished(tmp_path, cache_dir, cope_cli):
    """Before: ``not a readable video (Invalid data found when processing input)``."""
    path = tiny_clip(tmp_path / "full.mp4", "mp4", "libx264", frames=12)
    data = path.read_bytes()
    cut = tmp_path / "unfinished.mp4"
    cut.write_bytes(data[: data.index(b"moov") - 4])  # a recording stopped before its index
    child = cope_cli("inspect", cut, "--cache-dir", cache_dir)
    assert child.returncode == 2
    assert "looks truncated or unfinished" in child.stderr and "'moov'" in child.stderr
    assert child.stderr.count("\n") == 1


def damaged_mpeg4(tmp_path) -> Path:
    """An MPEG-4 Part 2 AVI (I/P, half-pel) whose 4th frame has its macroblock data overwritten
    (chunk header and VOP header kept, so the frame is still counted and planned)."""
    path = tiny_clip(tmp_path / "m4.avi", "avi", "mpeg4", frames=30)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    position, size = packets[3]
    data[position + 10 : position + size - 2] = b"\xff" * (size - 12)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    return damaged


def test_no_transcode_summary_counts_what_was_written_and_warns(tmp_path, cope_cli):
    """Before: ``--no-transcode`` decoded a damaged stream without a word of warning, and the
    summary was the plan's, not the archive's."""
    damaged, out = damaged_mpeg4(tmp_path), tmp_path / "x.npz"
    child = cope_cli("extract", damaged, "--no-transcode", "--out", out, "--fusion", "5", "--json")
    assert child.returncode == 0, child.stderr
    summary, archive = json.loads(child.stdout), np.load(out)
    assert summary["rgb_frames"] == len(archive["iframes"]) and summary["delta_frames"] == len(archive["mv"])
    assert summary["visual_tokens"] == 210 * len(archive["iframes"]) + 10 * len(archive["mv"])
    assert "decode errors" in child.stderr


def test_lost_frames_leave_no_dishonest_delta(tmp_path):
    """A frame that never decodes breaks the motion chain: the Δ across it is dropped, not faked."""
    from cope.codec import open_video

    video = open_video(damaged_mpeg4(tmp_path), no_transcode=True)
    plan = video.plan(fusion=5)
    frames = video.reader.gop_frames
    lost = 7  # inside the window of the P entry at 10 (reference 5)

    def losing_one(gop):
        return (f for f in frames(gop) if f.index != lost)

    video.reader.gop_frames = losing_one
    entries = list(video.entries(plan))
    written = {e.index for e in entries}
    spanning = {e.index for e in plan.entries if e.kind == "P" and e.ref_index < lost <= e.index}
    assert spanning and not spanning & written
    assert len(entries) == len(plan.entries) - len(spanning)


def test_sprite_frames_are_their_own_type():
    """Before: MPEG-4 ASP S-VOPs (GMC) were counted as P-frames."""
    from cope.codec.canonical import _SourceCounter

    with av.open(str(Path(__file__).parents[2] / "src/cope/assets/sample.mp4")) as container:
        counter = _SourceCounter(container.streams.video[0], Path("sample.mp4"))
    for kind in ("I", "P", "S", "S", "B"):
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame.pict_type = av.video.frame.PictureType[kind]
        counter.add(frame)
    assert counter.types == {"I": 1, "P": 1, "B": 1, "S": 2}
    assert counter.info().frame_types == {"I": 1, "P": 1, "B": 1, "S": 2}


def cut_clip(path: Path, cut_at: int, frames: int = 90, side: int = 64) -> Path:
    """A panning texture with a hard cut to another texture at frame ``cut_at``."""
    first, second = (texture(side, side + 2 * frames, seed=s).astype(np.uint8) for s in (1, 2))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"crf": "18"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.ascontiguousarray((first if i < cut_at else second)[:, 2 * i : 2 * i + side])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_scene_cuts_are_listed_and_fused_windows_across_them_warned(tmp_path, cache_dir, cope_cli):
    """Before: a cut inside a fused window became one silent Δ-frame (no motion, huge residual)."""
    clip = cut_clip(tmp_path / "cut.mp4", cut_at=45)
    common = ["--size", "64x64", "--cache-dir", cache_dir]
    child = cope_cli("inspect", clip, "--json", *common)
    assert child.returncode == 0 and json.loads(child.stdout)["scene_cuts"] == [45]
    child = cope_cli("extract", clip, "--out", tmp_path / "x.npz", *common)
    assert child.returncode == 0
    assert "1 Δ-frame(s) span a scene cut" in child.stderr and "60 (cut at 45)" in child.stderr
    smooth = cut_clip(tmp_path / "smooth.mp4", cut_at=1000)
    assert json.loads(cope_cli("inspect", smooth, "--json", *common).stdout)["scene_cuts"] == []


def test_a_timestamp_spike_does_not_become_hours_of_video(tmp_path, cache_dir):
    """Before: one frame stamped 3.3 hours ahead made the fps filter fill the gap with copies."""
    from cope.codec import CanonicalSettings, open_video

    path = tmp_path / "spike.ts"
    tex = texture(64, 64 + 20).astype(np.uint8)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        packets = []
        for i in range(10):
            image = np.ascontiguousarray(tex[:, 2 * i : 2 * i + 64])
            packets += stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
        packets += stream.encode(None)
        for i, packet in enumerate(packets):
            if i == 4:  # its presentation time claims 3.3 hours; the decode order stays intact
                packet.pts += int(3.3 * 3600 / packet.time_base)
            out.mux(packet)
    video = open_video(path, CanonicalSettings(width=32, height=32, gop=8), cache_dir=cache_dir)
    assert video.info.frames <= 12 and video.source.frames == 10
    assert video.decode_errors >= 1
