"""One swscale context per thread gives the pixels FFmpeg's per-call conversion gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from cope.codec.swscale import to_rgb24

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "cope" / "assets" / "sample.mp4"  # H.264, 480×480


def decoded_frames(count: int) -> list[av.VideoFrame]:
    with av.open(str(SAMPLE)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                return frames
    raise AssertionError("the sample is shorter than expected")


def test_to_rgb24_equals_a_fresh_conversion_at_every_size():
    frames = decoded_frames(12)
    for frame in frames:
        own = to_rgb24(frame)
        assert own.shape == (480, 480, 3) and own.dtype == np.uint8
        np.testing.assert_array_equal(own, frame.to_ndarray(format="rgb24"))
        # Sizes alternate, so the cached context must follow them.
        for width, height in ((384, 384), (200, 120), (384, 384)):
            expected = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            np.testing.assert_array_equal(to_rgb24(frame, width, height), expected)


def test_to_rgb24_from_several_threads_at_once():
    frames = decoded_frames(24)
    expected = [frame.reformat(width=384, height=384, format="rgb24").to_ndarray() for frame in frames]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda frame: to_rgb24(frame, 384, 384), frames))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
