"""Frames straight from the input file (the cold dense baseline): the canonical stream's frames,
without a transcode."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cope.codec import CanonicalSettings, open_video
from cope.codec.source import SourceFrames
from cope.errors import CopeInputError
from cope.plan import dense_frame_indices
from tests.clips import awkward_clip

SETTINGS = CanonicalSettings(width=64, height=64)


def gray_clip(path, frames: int, fps: int = 25, gop: int = 50):
    """H.264 with B-frames at 25 fps, lossless; frame i is flat grey 16 + i % 200 (its identity)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"qp": "0", "bf": "2", "g": str(gop)})
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(64, 64, "yuv420p")
            frame.planes[0].update(np.full((64, 64), 16 + i % 200, np.uint8).tobytes())
            for plane in frame.planes[1:]:
                plane.update(np.full((32, 32), 128, np.uint8).tobytes())
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def identities(frames) -> list[int]:
    return [int(round(rgb[..., 1].mean())) for _, rgb in frames]


@pytest.mark.parametrize(("frames", "samples"), [(200, 64), (1000, 8)])  # 8 s dense; 40 s, 5 s apart: seeks
def test_the_same_frames_as_the_canonical_stream(tmp_path, cache_dir, frames, samples):
    """25 → 30 fps: the frame on screen at each canonical slot, chosen exactly as FFmpeg's fps filter
    chooses it (B-frames reordered, seeking to keyframes over long gaps)."""
    path = gray_clip(tmp_path / "gray.mp4", frames)
    canonical = open_video(path, SETTINGS, cache_dir=cache_dir)
    with SourceFrames(path, SETTINGS) as source:
        assert source.frames == canonical.info.frames == frames * 30 // 25
        direct = list(source.read(dense_frame_indices(source.frames, samples)))
    reference = list(canonical.dense_frames(samples))
    assert [i for i, _ in direct] == [i for i, _ in reference]
    assert identities(direct) == identities(reference)
    assert all(rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 for _, rgb in direct)


def test_rotation_is_applied_like_the_transcode(tmp_path, cache_dir):
    path = awkward_clip(tmp_path / "rot.mp4", size=(96, 64), rotation=90)
    with SourceFrames(path, SETTINGS) as source:
        (_, rgb), *_ = source.read(dense_frame_indices(source.frames, 4))
    # As the canonical stream shows it (test_cli.test_rotation_metadata_is_applied): left half at the bottom.
    top, bottom = rgb[:32, :, 0].mean(), rgb[32:, :, 0].mean()
    assert rgb.shape == (64, 64, 3) and bottom - top > 100


def test_not_a_video_is_one_line(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(CopeInputError, match="notes.mp4"):
        SourceFrames(bad, SETTINGS)
