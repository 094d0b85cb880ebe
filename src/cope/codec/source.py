"""RGB frames straight from the input file, at canonical times and size: no transcode.

The dense baseline reads 64 uniformly spaced RGB frames and nothing else, so for a video it has
not seen before it needs no canonical stream at all: it seeks to each frame in the input's own
stream and decodes it. ``sample_source_frames`` does that, choosing the same frames the canonical
stream would give — the frame on screen at canonical time ``index / fps`` — rotated as the display
matrix says and scaled to the canonical size, as the transcode does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from cope.codec.canonical import CanonicalSettings, check_video_path, open_video_stream
from cope.errors import CopeInputError
from cope.plan import dense_frame_indices

# Seek instead of decoding through when the next wanted frame is this far ahead: decoding a few
# seconds of frames without converting them is cheaper than a seek back to the previous keyframe.
SEEK_AHEAD_S = 2.0


def source_frame_count(path: str | Path, settings: CanonicalSettings) -> int:
    """Frames the canonical stream would have: the container's duration at ``settings.fps``."""
    container, stream = open_video_stream(check_video_path(path))
    try:
        return _canonical_frames(path, container, stream, settings)
    finally:
        container.close()


def sample_source_frames(
    path: str | Path, num_samples: int, settings: CanonicalSettings
) -> Iterator[tuple[int, np.ndarray]]:
    """(canonical index, RGB (H, W, 3) uint8) of the dense plan's ``num_samples`` frames, in order.

    The indices are ``dense_frame_indices`` of the canonical frame count, so the plan built from
    ``source_frame_count`` matches what is yielded.
    """
    container, stream = open_video_stream(check_video_path(path))
    try:
        total = _canonical_frames(path, container, stream, settings)
        for index, frame in _frames_at(container, stream, dense_frame_indices(total, num_samples), settings):
            yield index, _to_canonical_rgb(frame, settings)
    except av.error.FFmpegError as exc:
        raise CopeInputError(f"{path}: cannot decode the video ({exc})") from exc
    finally:
        container.close()


def _canonical_frames(path, container, stream, settings: CanonicalSettings) -> int:
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        raise CopeInputError(
            f"{path}: the container states no duration, so frames cannot be sampled without decoding it"
        )
    return max(1, round(seconds * settings.fps))


def _frames_at(container, stream, indices: list[int], settings: CanonicalSettings):
    """Yield (index, frame): the frame the canonical stream shows at slot ``index``, decoding forward
    and seeking over gaps longer than ``SEEK_AHEAD_S``.

    FFmpeg's ``fps`` filter (the transcode's) rounds each input time to the nearest output slot and
    shows the latest frame rounded to at most the slot: the last frame before (index + ½) / fps.
    """
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    frames = _decoded(container, stream)
    shown = ahead = None  # the last frame not after the target, the first one after it
    for index in indices:
        target = start + (index + 0.5) / settings.fps  # frames strictly before it are candidates
        latest: av.VideoFrame | None = ahead if ahead is not None else shown
        if latest is not None and target - _seconds(latest, stream) > SEEK_AHEAD_S:
            container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
            frames, shown, ahead = _decoded(container, stream), None, None
        while ahead is None or _seconds(ahead, stream) < target:
            if ahead is not None:
                shown = ahead
            ahead = next(frames, None)
            if ahead is None:  # the stream ended: its last frame stays on screen
                break
        frame = shown if shown is not None else ahead
        if frame is None:
            return
        yield index, frame


def _decoded(container, stream):
    return (frame for frame in container.decode(stream) if frame.pts is not None)


def _seconds(frame, stream) -> float:
    return float(frame.pts * stream.time_base)


def _to_canonical_rgb(frame, settings: CanonicalSettings) -> np.ndarray:
    """Rotate by the display matrix (as ``ffmpeg`` does), then scale to the canonical size."""
    turns = {90: -1, 180: 2, 270: 1}.get(round(-(getattr(frame, "rotation", 0) or 0)) % 360, 0)
    width, height = (
        (settings.height, settings.width) if turns in (-1, 1) else (settings.width, settings.height)
    )
    rgb = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
