"""The command line: contract outputs, and one clear line + exit 2 for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from cope.cli import main
from tests.clips import awkward_clip, write_translation_clip


def run(*args, env_cache=None):
    """The real console entry point in a subprocess (exit codes, stdout/stderr separation)."""
    cmd = [sys.executable, "-m", "cope.cli", *map(str, args)]
    env = None
    if env_cache is not None:
        import os

        env = {**os.environ, "COPE_CACHE_DIR": str(env_cache)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cope: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_inspect_json_contract(sample_video, cache_dir):
    result = run("inspect", sample_video, "--json", "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stream_keys = {"codec", "width", "height", "fps", "frames", "duration_s", "gops", "frame_types"}
    assert set(report) == {"source", "canonical", "plans", "scene_cuts"}
    assert set(report["source"]) == stream_keys == set(report["canonical"])
    assert report["source"]["codec"] == "h264" and report["source"]["frame_types"]["B"] > 0
    canonical = report["canonical"]
    assert (canonical["codec"], canonical["width"], canonical["height"], canonical["fps"]) == (
        "mpeg4",
        384,
        384,
        30,
    )
    assert canonical["frames"] == 240 and canonical["gops"] == 1  # the 8-s sample: one GOP
    assert canonical["frame_types"] == {"I": 1, "P": 239, "B": 0}
    assert report["plans"] == {
        "dense64": {"visual_tokens": 13440, "rgb_frames": 64, "delta_frames": 0},
        "cope_k1": {"visual_tokens": 1 * 210 + 7 * 10, "rgb_frames": 1, "delta_frames": 7},
        "cope_k2": {"visual_tokens": 2 * 210 + 6 * 10, "rgb_frames": 2, "delta_frames": 6},
        "cope_k4": {"visual_tokens": 4 * 210 + 4 * 10, "rgb_frames": 4, "delta_frames": 4},
    }


def test_inspect_plot(sample_video, cache_dir, tmp_path):
    out = tmp_path / "view.png"
    assert main(["inspect", str(sample_video), "--plot", str(out), "--cache-dir", str(cache_dir)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("fusion", "k", "n_i", "n_p"), [(30, 1, 1, 2), (30, 2, 1, 2), (10, 1, 1, 6), (1, 1, 1, 60)]
)
def test_extract_npz_contract(integer_clip, cache_dir, tmp_path, fusion, k, n_i, n_p):
    out = tmp_path / "x.npz"
    args = ["extract", integer_clip, "--out", out, "--fusion", fusion, "--keyframes-per-gop", k]
    result = run(*args, "--size", "128x128", "--cache-dir", cache_dir, "--json")
    assert result.returncode == 0, result.stderr
    data = np.load(out)
    assert data["iframes"].shape == (n_i, 128, 128, 3) and data["iframes"].dtype == np.uint8
    assert data["iframe_index"].tolist() == [0]
    assert data["mv"].shape == (n_p, 128, 128, 2) and data["mv"].dtype == np.float32
    assert data["residual"].shape == (n_p, 128, 128, 3) and data["residual"].dtype == np.int16
    assert data["pframe_index"].tolist() == list(range(fusion, 61, fusion))[:n_p]
    assert (data["pframe_index"] - data["pframe_ref_index"]).tolist() == [fusion] * n_p
    assert np.median(data["mv"][:, 24:-24, 24:-24, 0]) == -2.0 * fusion
    assert json.loads(result.stdout)["delta_frames"] == n_p


def test_extract_refuses_to_overwrite(integer_clip, cache_dir, tmp_path):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious")
    result = run("extract", integer_clip, "--out", out, "--size", "128x128", "--cache-dir", cache_dir)
    assert_clean_error(result, "already exists")
    assert out.read_bytes() == b"precious"
    assert (
        main(
            [
                "extract",
                str(integer_clip),
                "--out",
                str(out),
                "--overwrite",
                "--size",
                "128x128",
                "--cache-dir",
                str(cache_dir),
            ]
        )
        == 0
    )
    assert np.load(out)["iframes"].shape[0] == 1


# ---- bad input -------------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp2", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        frame.sample_rate = 44100
        for i in range(5):
            frame.pts = i * 1152
            for packet in stream.encode(frame):
                out.mux(packet)
    return path


@pytest.fixture
def bad_inputs(tmp_path, sample_video):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(sample_video.read_bytes()[:2000])
    return {
        "missing": (tmp_path / "nope.mp4", "no such file"),
        "empty": (empty, "empty file"),
        "directory": (tmp_path, "is a directory"),
        "text": (text, "not a readable video"),
        "audio-only": (_audio_only(tmp_path / "audio.mp2"), "no video stream"),
        "truncated": (truncated, str(truncated)),
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "text", "audio-only", "truncated"])
def test_bad_input_is_one_line_exit_2(kind, bad_inputs, cache_dir):
    path, needle = bad_inputs[kind]
    result = run("inspect", path, "--cache-dir", cache_dir)
    assert_clean_error(result, needle)


def test_bad_options_exit_2(integer_clip, cache_dir, tmp_path):
    assert_clean_error(
        run("inspect", integer_clip, "--size", "100x100", "--cache-dir", cache_dir), "multiple of 16"
    )
    assert_clean_error(
        run(
            "extract",
            integer_clip,
            "--out",
            tmp_path / "a.npz",
            "--keyframes-per-gop",
            "3",
            "--size",
            "128x128",
            "--cache-dir",
            cache_dir,
        ),
        "keyframes per GOP",
    )
    assert run("inspect").returncode == 2


def test_no_transcode_refuses_h264(sample_video, cache_dir, tmp_path):
    result = run("extract", sample_video, "--out", tmp_path / "a.npz", "--no-transcode")
    assert_clean_error(result, "h264", "not MPEG-4 Part 2")
    assert not (tmp_path / "a.npz").exists()


def test_no_transcode_refuses_b_frames(tmp_path):
    path = write_translation_clip(tmp_path / "b.avi", 30, 1.0, codec="mpeg4", bf="2")
    assert_clean_error(run("inspect", path, "--no-transcode"), "B-frames")


def test_huge_resolution_is_refused(monkeypatch, integer_clip, cache_dir, capsys):
    import cope.codec.canonical as canonical

    monkeypatch.setattr(canonical, "MAX_SOURCE_PIXELS", 100 * 100)
    assert main(["inspect", str(integer_clip), "--cache-dir", str(cache_dir / "huge")]) == 2
    assert "exceeds the supported maximum" in capsys.readouterr().err


# ---- awkward but valid input: transcoded ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("odd.mp4", {"size": (101, 75), "pix_fmt": "yuv444p"}),
        ("vfr.mkv", {"vfr": True}),
        ("rotated.mp4", {"rotation": 90}),
        ("hevc.mkv", {"codec": "libx265"}),
        ("vp9.webm", {"codec": "libvpx-vp9"}),
        ("anim.gif", {"codec": "gif", "size": (64, 48)}),
    ],
)
def test_awkward_inputs_are_transcoded(name, kwargs, tmp_path, cache_dir):
    try:
        path = awkward_clip(tmp_path / name, **kwargs)
    except (av.error.FFmpegError, ValueError) as exc:  # an encoder missing from this FFmpeg build
        pytest.skip(f"cannot create {name}: {exc}")
    result = run("inspect", path, "--json", "--size", "64x64", "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    canonical = json.loads(result.stdout)["canonical"]
    assert canonical["codec"] == "mpeg4" and canonical["frame_types"]["B"] == 0
    assert canonical["frames"] >= 30


def test_rotation_metadata_is_applied(tmp_path, cache_dir):
    from cope.codec import CanonicalSettings, open_video

    path = awkward_clip(tmp_path / "rot.mp4", size=(96, 64), rotation=90)
    video = open_video(path, CanonicalSettings(width=64, height=64), cache_dir=cache_dir)
    rgb = next(video.entries(video.plan(fusion=15))).rgb  # the first I-frame
    # Unrotated, the left half is red. A display matrix rotated 90° counter-clockwise is shown by
    # ffmpeg with transpose=cclock: the left half ends up at the bottom.
    left, right = rgb[:, :32, 0].mean(), rgb[:, 32:, 0].mean()
    top, bottom = rgb[:32, :, 0].mean(), rgb[32:, :, 0].mean()
    assert bottom - top > 100 and abs(left - right) < 20


def test_corrupt_middle_decodes_what_it_can(tmp_path, sample_video, cache_dir):
    data = bytearray(sample_video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    result = run("inspect", path, "--json", "--cache-dir", cache_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["canonical"]["frames"] > 200  # of 240
    assert "decode errors" in result.stderr and "frames decoded" in result.stderr
