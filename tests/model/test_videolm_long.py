"""Long videos: an hour at 1 FPS is tokenized streaming, to exactly the plan's token count, and
the encoder's memory does not grow with the video's length.

An hour at 1 FPS is made cheap to build and decode: the clip is written directly as a canonical
MPEG-4 Part 2 stream (1 fps, GOP 8 = 8 s, no B-frames) with tiny frames, and read with
``no_transcode``. With fusion 1 its plan has the paper's 1-FPS shape (1 I + 7 P per 8-s GOP).
"""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest

from cope.codec.extract import open_video
from cope.model.videolm import tiny_random
from tests.clips import texture

NO_GOP_CAP = 10**6


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # hour-long videos


def write_canonical_clip(path, seconds: int, side: int, gop: int = 8):
    """``seconds`` frames at 1 fps: a texture drifting diagonally, encoded as the canonical stream."""
    tile = texture(2 * side, 2 * side).astype(np.uint8)
    with av.open(str(path), "w") as out:
        options = {"g": str(gop), "bf": "0", "sc_threshold": "1000000000", "qmin": "3", "qmax": "3"}
        stream = out.add_stream("mpeg4", rate=1, options=options)
        stream.width = stream.height = side
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 1)
        for second in range(seconds):
            offset = (2 * second) % side
            crop = np.ascontiguousarray(tile[offset : offset + side, offset : offset + side])
            for packet in stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def model_for(side: int, **chunks):
    # image 16 / patch 8 → 2 × 2 grid → pooled 1 × 1 + 1 newline = 2 positions per RGB frame.
    return tiny_random(
        image_size=16,
        patch_size=8,
        canonical_side=side,
        fusion=1,
        keyframes_per_gop=1,
        max_gops=NO_GOP_CAP,
        **chunks,
    )


def test_one_hour_at_1fps_streams_to_the_plan_token_count(tmp_path, monkeypatch):
    model = model_for(16)
    video = open_video(write_canonical_clip(tmp_path / "hour.mp4", 3600, side=16), no_transcode=True)
    assert (video.info.frames, video.info.gops) == (3600, 450)

    largest = {"I": 0, "P": 0}  # the most frames embedded at once: streaming keeps it to a chunk
    image_tokens, delta_tokens = model.image_tokens, model.delta_tokens

    def counted_image_tokens(frames):
        largest["I"] = max(largest["I"], len(frames))
        return image_tokens(frames)

    def counted_delta_tokens(mv, residual):
        largest["P"] = max(largest["P"], len(mv))
        return delta_tokens(mv, residual)

    monkeypatch.setattr(model, "image_tokens", counted_image_tokens)
    monkeypatch.setattr(model, "delta_tokens", counted_delta_tokens)
    encoded = model.encode_video(video, "cope")

    assert (encoded.plan.rgb_frames, encoded.plan.delta_frames) == (450, 3150)
    assert encoded.visual_tokens == encoded.plan.tokens(model.config.layout) == 450 * 2 + 3150 * 10 == 32_400
    assert largest["I"] <= model.config.vision_batch_size and largest["P"] <= model.config.delta_batch_size


def test_encoder_memory_does_not_grow_with_video_length(tmp_path):
    """tracemalloc peak of encoding a 1-min and a 4-min clip (32 × 32, numpy/Python allocations).

    Holding the primitives would cost 14 KB per P-frame here (mv 32·32·2·4 B + residual 32·32·3·2 B);
    streaming keeps only the plan's per-frame bookkeeping, well under 1 KB per frame. Both clips
    are longer than one chunk (16 P-frames), so both peaks include a full chunk in flight.
    """
    model = model_for(32, vision_batch_size=4, delta_batch_size=16)
    model.encode_video(open_video(write_canonical_clip(tmp_path / "warm.mp4", 16, 32), no_transcode=True))
    peaks = {}
    for seconds in (60, 240):
        video = open_video(write_canonical_clip(tmp_path / f"{seconds}.mp4", seconds, 32), no_transcode=True)
        tracemalloc.start()
        encoded = model.encode_video(video)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert encoded.visual_tokens == encoded.plan.tokens(model.config.layout)
    growth_per_frame = (peaks[240] - peaks[60]) / 180
    print(
        f"tracemalloc peak: 60 s {peaks[60] / 1e6:.2f} MB, 240 s {peaks[240] / 1e6:.2f} MB, {growth_per_frame:.0f} B/frame"
    )
    assert growth_per_frame < 1024
    assert peaks[240] < 1.5 * peaks[60]
