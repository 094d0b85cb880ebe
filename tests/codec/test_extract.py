"""Motion vectors, exact residuals and fusion on clips whose motion is known."""

from __future__ import annotations

import numpy as np
import pytest

from cope.codec import CanonicalSettings, IFrame, PFrame, open_video
from cope.codec.extract import exact_residual
from cope.codec.reader import CanonicalReader
from cope.codec.residual import macroblock_motion, predict_frame

SETTINGS = CanonicalSettings(width=128, height=128)


def pframes(video, fusion):
    return [e for e in video.entries(video.plan(fusion=fusion)) if isinstance(e, PFrame)]


def interior(a):
    """Skip a 24-pixel border: content entering the frame has no reference to come from."""
    return a[24:-24, 24:-24]


@pytest.mark.parametrize(("clip", "dx", "dy"), [("integer_clip", 2.0, 0.0), ("halfpel_clip", 1.5, -0.5)])
def test_motion_vectors_match_known_displacement(clip, dx, dy, cache_dir, request):
    video = open_video(request.getfixturevalue(clip), SETTINGS, cache_dir=cache_dir)
    for p in pframes(video, fusion=1)[1:]:
        # Content moving right by d is predicted from the left: mv = −d (contract sign).
        assert np.median(interior(p.mv)[..., 0]) == -dx
        assert np.median(interior(p.mv)[..., 1]) == -dy
        assert p.ref_index == p.index - 1


@pytest.mark.parametrize("fusion", [10, 30])
@pytest.mark.parametrize(("clip", "dx", "dy"), [("integer_clip", 2.0, 0.0), ("halfpel_clip", 1.5, -0.5)])
def test_fused_motion_is_s_times_per_frame(clip, dx, dy, fusion, cache_dir, request):
    video = open_video(request.getfixturevalue(clip), SETTINGS, cache_dir=cache_dir)
    fused = pframes(video, fusion)
    assert [p.index for p in fused] == list(range(fusion, 61, fusion))
    for p in fused:
        assert p.ref_index == p.index - fusion
        assert np.median(interior(p.mv)[..., 0]) == -dx * fusion
        assert np.median(interior(p.mv)[..., 1]) == -dy * fusion


@pytest.mark.parametrize("fusion", [1, 10])
@pytest.mark.parametrize(("clip", "max_ratio"), [("integer_clip", 0.1), ("halfpel_clip", 0.6)])
def test_residual_far_below_frame_difference(clip, max_ratio, fusion, cache_dir, request):
    """Integer motion is predicted almost perfectly. Half-pel motion leaves a real residual: the
    codec interpolates bilinearly and rounds chroma vectors to half-pel (H.263), so RGB keeps some."""
    video = open_video(request.getfixturevalue(clip), SETTINGS, cache_dir=cache_dir)
    entries = list(video.entries(video.plan(fusion=fusion), with_rgb=True))
    rgb = {e.index: e.rgb for e in entries}
    for e in entries:
        if isinstance(e, PFrame):
            no_compensation = np.abs(interior(e.rgb.astype(np.int16) - rgb[e.ref_index])).mean()
            assert np.abs(interior(e.residual)).mean() < max_ratio * no_compensation


def test_static_scene_has_zero_motion_and_residual(static_clip, cache_dir):
    video = open_video(static_clip, SETTINGS, cache_dir=cache_dir)
    for p in pframes(video, fusion=1):
        assert np.all(p.mv == 0)
        assert (p.residual == 0).mean() > 0.99


def _dct_matrix(n=8):
    k = np.arange(n)
    d = np.sqrt(2 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2)
    return d


def _lattice_miss_rate(reader, rounding_flip: int, quantizer: int) -> float:
    """Share of 8×8 DCT coefficients of the rebuilt YUV residual off the H.263 dequantisation
    lattice {0, ±(q(2L+1) − [q even])}: the decoder's residual sits on it (up to IDCT rounding)."""
    d = _dct_matrix()
    levels = quantizer * (2 * np.arange(1, 300) + 1) - (1 - quantizer % 2)
    lattice = np.concatenate([-levels[::-1], [0], levels])
    misses = total = 0
    previous = None
    for frame in reader.frames():
        if frame.frame_type == "P":
            pred = predict_frame(previous.yuv, frame.motion, frame.rounding ^ rounding_flip)
            for plane, p in zip(frame.yuv, pred, strict=True):
                r = plane.astype(np.float64) - p
                blocks = r.reshape(r.shape[0] // 8, 8, r.shape[1] // 8, 8).transpose(0, 2, 1, 3)
                coeffs = (d @ blocks @ d.T).ravel()
                distance = np.abs(coeffs[:, None] - lattice[None, :]).min(axis=1)
                misses += int((distance > 1.5).sum())
                total += coeffs.size
        previous = frame
    return misses / total


def _zero_block_share(reader, rounding_flip: int) -> float:
    """Share of 8×8 blocks whose rebuilt residual is exactly zero (blocks the encoder left uncoded)."""
    zero = []
    previous = None
    for frame in reader.frames():
        if frame.frame_type == "P":
            pred = predict_frame(previous.yuv, frame.motion, frame.rounding ^ rounding_flip)
            for plane, p in zip(frame.yuv, pred, strict=True):
                r = plane.astype(np.int16) - p
                blocks = np.abs(r.reshape(r.shape[0] // 8, 8, r.shape[1] // 8, 8)).max(axis=(1, 3))
                zero.append((blocks == 0).ravel())
        previous = frame
    return float(np.concatenate(zero).mean())


@pytest.mark.slow
def test_rebuilt_residual_is_the_decoders(halfpel_clip, cache_dir):
    """Exactness: with the VOP rounding bit read from the bitstream, the rebuilt residual is a
    dequantised DCT signal and uncoded blocks come out exactly zero; with the bit flipped (a
    plausible bug: half-pel positions off by one grey level) neither holds."""
    fine = CanonicalSettings(width=128, height=128, quantizer=2)
    video = open_video(halfpel_clip, fine, cache_dir=cache_dir)
    exact = _lattice_miss_rate(video.reader, 0, fine.quantizer)
    flipped = _lattice_miss_rate(video.reader, 1, fine.quantizer)
    assert exact < 5e-4
    assert flipped > 20 * max(exact, 1e-5)
    coarse = CanonicalSettings(width=128, height=128, quantizer=5)  # many blocks left uncoded
    video = open_video(halfpel_clip, coarse, cache_dir=cache_dir)
    zero_exact, zero_flipped = _zero_block_share(video.reader, 0), _zero_block_share(video.reader, 1)
    assert zero_exact > 0.08
    assert zero_flipped < zero_exact / 5


def test_prediction_plus_residual_is_the_decoded_frame(halfpel_clip, cache_dir):
    video = open_video(halfpel_clip, SETTINGS, cache_dir=cache_dir)
    frames = list(video.reader.frames())
    for previous, current in zip(frames[:6], frames[1:7], strict=True):
        pred = predict_frame(previous.yuv, current.motion, current.rounding)
        _, residual_rgb = exact_residual(current, previous)
        # In YUV the residual is exactly current − prediction, inside the 9-bit range.
        for plane, p in zip(current.yuv, pred, strict=True):
            r = plane.astype(np.int16) - p
            assert np.array_equal(p + r, plane)
            assert np.abs(r).max() <= 255
        assert residual_rgb.dtype == np.int16 and np.abs(residual_rgb).max() <= 255


def test_intra_macroblocks_predict_nothing():
    motion = macroblock_motion(None, 2, 3)  # no exported vectors: every macroblock is intra
    assert motion.intra.all()
    planes = (np.full((32, 48), 7, np.uint8), np.full((16, 24), 9, np.uint8), np.full((16, 24), 9, np.uint8))
    assert all(np.all(p == 0) for p in predict_frame(planes, motion, 0))


def test_iframes_land_every_gop(integer_clip, cache_dir):
    settings = CanonicalSettings(width=128, height=128, gop=20)
    video = open_video(integer_clip, settings, cache_dir=cache_dir)
    assert video.scan.gop_starts == [0, 20, 40, 60]
    assert video.info.frame_types == {"I": 4, "P": 57, "B": 0}
    entries = list(video.entries(video.plan(fusion=10, keyframes_per_gop=1)))
    assert [(type(e).__name__, e.index) for e in entries[:4]] == [
        ("IFrame", 0),
        ("PFrame", 10),
        ("IFrame", 20),
        ("PFrame", 30),
    ]


def test_extra_keyframes_are_decoded_rgb_frames(integer_clip, cache_dir):
    video = open_video(integer_clip, SETTINGS, cache_dir=cache_dir)
    entries = list(video.entries(video.plan(fusion=10, keyframes_per_gop=2), with_rgb=True))
    kinds = [(type(e).__name__, e.index) for e in entries]
    # A 240-frame GOP has 24 slots of 10; K = 2 puts a keyframe every 12 slots: frames 0 and 120.
    assert kinds[0] == ("IFrame", 0) and all(k == "PFrame" for k, _ in kinds[1:])
    assert isinstance(entries[0], IFrame) and entries[0].rgb.shape == (128, 128, 3)


def test_no_transcode_reads_a_canonical_stream_identically(halfpel_clip, cache_dir):
    transcoded = open_video(halfpel_clip, SETTINGS, cache_dir=cache_dir)
    direct = open_video(transcoded.canonical.path, no_transcode=True)
    a = pframes(transcoded, fusion=10)
    b = pframes(direct, fusion=10)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.mv, y.mv) and np.array_equal(x.residual, y.residual)


def test_skipped_gops_are_not_decoded(integer_clip, cache_dir):
    settings = CanonicalSettings(width=128, height=128, gop=10)
    video = open_video(integer_clip, settings, cache_dir=cache_dir)
    plan = video.plan(fusion=5, keyframes_per_gop=1, max_gops=3)
    assert plan.gops == [0, 3, 6]
    decoded = [f.index for f in CanonicalReader(video.reader.path).frames({3})]
    assert decoded == list(range(30, 40))
    entries = list(video.entries(plan))
    assert [e.index for e in entries] == [0, 5, 30, 35, 60]


def test_damaged_cache_sidecar_is_rebuilt(integer_clip, tmp_path):
    from cope.codec import transcode

    first = transcode(integer_clip, SETTINGS, tmp_path)
    first.path.with_suffix(".json").write_text("{not json")
    again = transcode(integer_clip, SETTINGS, tmp_path)
    assert again.path == first.path and again.source.frames == 61
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".mp4"]  # no leftovers
