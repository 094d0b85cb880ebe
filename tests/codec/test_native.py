"""Native mode: the source's own H.264 / MPEG-4 stream, B-frames included, read without a transcode."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from cope.codec import CanonicalSettings, IFrame, PFrame, kernels, open_video
from cope.codec.fusion import BlockMotion
from cope.codec.native import (
    NativeUnsupported,
    NativeVideo,
    block_motion,
    block_motion_reference,
    nearest_references_reference,
    scaled_to_previous_anchor,
)
from cope.plan import FrameKind, PlanEntry, TokenPlan, snap_to_anchors
from tests.clips import awkward_clip, texture, write_translation_clip
from tests.codec.support import MV_DTYPE

NATIVE = CanonicalSettings(width=128, height=128, codec="native")


def interior(a):
    """Skip a 24-pixel border: content entering the frame has no reference to come from."""
    return a[24:-24, 24:-24]


def pframes(video, fusion):
    return [e for e in video.entries(video.plan(fusion=fusion)) if isinstance(e, PFrame)]


@pytest.mark.parametrize("fusion", [6, 12])
@pytest.mark.parametrize(
    ("clip", "dx", "dy"), [("h264_pan_clip", 2.0, 0.0), ("h264_diagonal_clip", -1.5, 0.5)]
)
def test_fused_motion_is_minus_d_times_s(clip, dx, dy, fusion, request):
    """A pan right gives dx = −d·s, a pan left and down dx = +1.5·s, dy = −0.5·s (contract sign),
    through the B-frames: only the I/P anchors are chained."""
    video = open_video(request.getfixturevalue(clip), NATIVE, workers=1)
    assert isinstance(video, NativeVideo) and video.info.frame_types["B"] > 30
    fused = pframes(video, fusion)
    assert [p.index for p in fused] == [
        i for start in (0, 30) for i in range(start + fusion, start + 30, fusion)
    ]
    for p in fused:
        assert p.ref_index == p.index - fusion
        assert p.mv.shape == (128, 128, 2) and p.mv.dtype == np.float32
        assert p.residual.shape == (128, 128, 3) and p.residual.dtype == np.int16
        assert np.median(interior(p.mv)[..., 0]) == -dx * fusion
        assert np.median(interior(p.mv)[..., 1]) == -dy * fusion


def test_fused_residual_is_far_below_the_frame_difference(h264_diagonal_clip):
    video = open_video(h264_diagonal_clip, NATIVE, workers=1)
    entries = list(video.entries(video.plan(fusion=6), with_rgb=True))
    rgb = {e.index: e.rgb for e in entries if isinstance(e, IFrame)} | {
        e.index: e.rgb for e in entries if isinstance(e, PFrame)
    }
    for p in (e for e in entries if isinstance(e, PFrame)):
        difference = np.abs(interior(p.rgb.astype(np.int16) - rgb[p.ref_index])).mean()
        assert np.abs(interior(p.residual)).mean() < 0.3 * difference


def test_output_has_the_canonical_size(h264_pan_clip):
    """Decoded at 128×128, delivered at 64×64: the vectors are in the output's pixels."""
    video = open_video(h264_pan_clip, CanonicalSettings(width=64, height=64, codec="native"), workers=1)
    entries = list(video.entries(video.plan(fusion=6)))
    assert video.source.width == 128 and (video.info.width, video.info.height) == (64, 64)
    assert all(e.rgb.shape == (64, 64, 3) for e in entries if isinstance(e, IFrame))
    for p in (e for e in entries if isinstance(e, PFrame)):
        assert p.mv.shape == (64, 64, 2) and p.residual.shape == (64, 64, 3)
        assert np.median(p.mv[12:-12, 12:-12, 0]) == -2.0 * 6 / 2


def test_keyframes_are_the_source_iframes(h264_pan_clip):
    with av.open(str(h264_pan_clip)) as container:
        kinds = [av.video.frame.PictureType(int(f.pict_type)).name for f in container.decode(video=0)]
    video = open_video(h264_pan_clip, NATIVE, workers=1)
    assert video.scan.frame_types == kinds  # types from the packet headers, before decoding
    assert video.scan.gop_starts == [i for i, kind in enumerate(kinds) if kind == "I"] == [0, 30, 60]
    plan = video.plan(fusion=6)
    assert [e.index for e in plan.entries if e.kind == "I"] == [0, 30, 60]
    assert all(kinds[e.index] in ("I", "P") for e in plan.entries)  # B-frames are never sampled


def test_mpeg4_asp_with_b_frames_and_quarter_pel(clip_dir):
    path = write_translation_clip(
        clip_dir / "asp.mp4", 31, 1.5, -0.5, codec="mpeg4", bf="2", g="30", flags="+qpel", qmin="3", qmax="3"
    )
    video = open_video(path, NATIVE, workers=1)
    assert video.info.codec == "mpeg4" and video.info.frame_types["B"] > 0
    for p in pframes(video, fusion=6):
        assert np.median(interior(p.mv)[..., 0]) == -1.5 * 6
        assert np.median(interior(p.mv)[..., 1]) == 0.5 * 6


@pytest.mark.parametrize(("codec", "suffix"), [("libvpx-vp9", "webm"), ("gif", "gif")])
def test_auto_transcodes_what_native_mode_cannot_read(codec, suffix, clip_dir, cache_dir):
    path = awkward_clip(clip_dir / f"auto.{suffix}", codec=codec)
    video = open_video(path, CanonicalSettings(width=64, height=64, codec="auto"), cache_dir=cache_dir)
    assert video.canonical is not None and video.info.codec == "mpeg4"
    with pytest.raises(NativeUnsupported, match="native mode reads H.264 and MPEG-4 Part 2"):
        open_video(path, CanonicalSettings(width=64, height=64, codec="native"))


def test_auto_reads_h264_natively_and_rotated_video_canonically(h264_pan_clip, clip_dir, cache_dir):
    assert isinstance(open_video(h264_pan_clip, CanonicalSettings(codec="auto")), NativeVideo)
    rotated = awkward_clip(clip_dir / "rotated.mp4", rotation=90)
    with pytest.raises(NativeUnsupported, match="display rotation"):
        open_video(rotated, CanonicalSettings(width=64, height=64, codec="native"))
    video = open_video(rotated, CanonicalSettings(width=64, height=64, codec="auto"), cache_dir=cache_dir)
    assert video.canonical is not None


def test_hevc_exports_no_motion_vectors(clip_dir, cache_dir):
    if "libx265" not in av.codecs_available:
        pytest.skip("no libx265 encoder")
    path = write_translation_clip(
        clip_dir / "pan.hevc.mp4", 13, 2.0, codec="libx265", **{"x265-params": "log-level=none"}
    )
    with pytest.raises(NativeUnsupported, match="HEVC decoder exports no motion vectors"):
        open_video(path, NATIVE)
    video = open_video(path, CanonicalSettings(width=128, height=128, codec="auto"), cache_dir=cache_dir)
    assert video.canonical is not None and video.source.codec == "hevc"


def test_extract_writes_the_canonical_arrays(h264_pan_clip, tmp_path, cope_cli):
    out = tmp_path / "native.npz"
    child = cope_cli(
        "extract",
        h264_pan_clip,
        "--codec",
        "native",
        "--size",
        "128x128",
        "--fusion",
        "6",
        "--out",
        out,
        "--json",
    )
    assert child.returncode == 0, child.stderr
    summary, archive = json.loads(child.stdout), np.load(out)
    assert list(archive["iframe_index"]) == [0, 30, 60]
    assert list(archive["pframe_index"]) == [6, 12, 18, 24, 36, 42, 48, 54]
    assert list(archive["pframe_ref_index"]) == [0, 6, 12, 18, 30, 36, 42, 48]
    assert archive["mv"].shape == (8, 128, 128, 2) and archive["residual"].dtype == np.int16
    assert summary["visual_tokens"] == 3 * 210 + 8 * 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--codec", "native"], "the stream is vp9; native mode reads H.264 and MPEG-4 Part 2"),
        (["--codec", "native", "--no-transcode"], "--no-transcode reads the stream as canonical"),
        (["--workers", "0"], "--workers must be ≥ 1"),
    ],
)
def test_bad_native_options_exit_2_in_one_line(args, message, clip_dir, tmp_path, cope_cli):
    path = awkward_clip(clip_dir / "bad.webm", codec="libvpx-vp9")
    child = cope_cli("extract", path, "--out", tmp_path / "x.npz", *args)
    assert child.returncode == 2
    assert child.stderr.count("\n") == 1 and message in child.stderr, child.stderr


def test_plan_slots_move_to_the_nearest_anchor_of_their_gop():
    anchors = [0, 3, 6, 9, 10, 12, 15, 18]  # I B B P B B P B B P P B P B B | I B B P
    plan = TokenPlan(
        (
            PlanEntry(FrameKind.I, 0, 0),
            PlanEntry(FrameKind.P, 2, 0, ref_index=0),  # → 3, nearer than 0
            PlanEntry(FrameKind.P, 4, 0, ref_index=2),  # → 3 again: dropped
            PlanEntry(FrameKind.I, 8, 0),  # an extra keyframe → 9
            PlanEntry(FrameKind.P, 11, 0, ref_index=8),  # 10 and 12 as near: the earlier
            PlanEntry(FrameKind.P, 14, 0, ref_index=11),  # → 12: 15 starts the next GOP
            PlanEntry(FrameKind.I, 15, 1),
            PlanEntry(FrameKind.P, 17, 1, ref_index=15),  # → 18
        )
    )
    assert snap_to_anchors(plan, anchors, [0, 15]).entries == (
        PlanEntry(FrameKind.I, 0, 0),
        PlanEntry(FrameKind.P, 3, 0, ref_index=0),
        PlanEntry(FrameKind.I, 9, 0),
        PlanEntry(FrameKind.P, 10, 0, ref_index=9),
        PlanEntry(FrameKind.P, 12, 0, ref_index=10),
        PlanEntry(FrameKind.I, 15, 1),
        PlanEntry(FrameKind.P, 18, 1, ref_index=15),
    )


def test_a_vector_into_an_older_frame_is_scaled_to_one_anchor():
    """Frame 9's block points 6 px left into frame 3 (the previous anchor is 6): the content moved
    1 px per frame, so the chained vector is −6 × (9 − 6) / (9 − 3) = −3."""
    picture = texture(64, 96)[..., 1].astype(np.uint8)  # content at frame 3, x offset 16
    at = {
        frame: np.ascontiguousarray(picture[:, 16 - (frame - 3) : 80 - (frame - 3)]) for frame in (3, 5, 6, 9)
    }
    candidates = [(6, at[6]), (5, at[5]), (3, at[3])]
    motion = BlockMotion(np.tile(np.float32([-6.0, 0.0]), (8, 8, 1)), np.zeros((8, 8), bool))
    scaled = scaled_to_previous_anchor(motion, at[9], 9, candidates)
    assert np.median(scaled.vectors[1:-1, 1:-1, 0]) == -3.0 and not scaled.vectors[..., 1].any()
    near = BlockMotion(np.tile(np.float32([-3.0, 0.0]), (8, 8, 1)), np.zeros((8, 8), bool))
    assert np.array_equal(scaled_to_previous_anchor(near, at[9], 9, candidates).vectors, near.vectors)


@pytest.mark.parametrize("seed", range(4))
def test_compiled_native_kernels_equal_their_references(seed):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    count = 300
    mvs = np.zeros(count, MV_DTYPE)
    mvs["w"], mvs["h"] = rng.choice([16, 8], (2, count))  # 16×16, 16×8, 8×16, 8×8
    mvs["dst_x"] = rng.integers(-1, 7, count) * 16 + rng.integers(0, 2, count) * 8 + mvs["w"] // 2
    mvs["dst_y"] = rng.integers(-1, 5, count) * 16 + rng.integers(0, 2, count) * 8 + mvs["h"] // 2
    mvs["source"] = rng.choice([-1, -1, 1], count)
    mvs["motion_x"], mvs["motion_y"] = rng.integers(-64, 65, (2, count))
    mvs["motion_scale"] = rng.choice([2, 4], count)
    compiled, reference = block_motion(mvs, 8, 12), block_motion_reference(mvs, 8, 12)
    assert np.array_equal(compiled.vectors, reference.vectors) and np.array_equal(
        compiled.intra, reference.intra
    )

    current = rng.integers(0, 256, (60, 90), dtype=np.uint8)  # not multiples of 8
    candidates = rng.integers(0, 256, (3, 60, 90), dtype=np.uint8)
    candidates[2] = np.roll(current, 3, axis=1)  # a real match for some blocks
    quarter = rng.integers(-40, 41, (8, 12, 2)).astype(np.int32)
    quarter[rng.random((8, 12)) < 0.3] = [-12, 0]
    intra = rng.random((8, 12)) < 0.1
    expected = nearest_references_reference(current, candidates, quarter, intra)
    assert np.array_equal(kernels.nearest_references(current, candidates, quarter, intra), expected)
    assert (expected == 2).any() and (expected != 2).any()
