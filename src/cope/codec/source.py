"""RGB frames straight from the input file, at canonical times and size: no transcode.

The dense baseline reads 64 uniformly spaced RGB frames and nothing else, so for a video it has
not seen before it needs no canonical stream at all: it seeks to each frame in the input's own
stream and decodes it. ``SourceFrames`` does that, choosing the same frames the canonical stream
would give — the frame on screen at canonical time ``index / fps`` — rotated as the display
matrix says and scaled to the canonical size, as the transcode does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from cope.codec.canonical import CanonicalSettings, check_video_path, header_duration_s, open_video_stream
from cope.codec.swscale import to_rgb24
from cope.errors import CopeInputError

# Seek instead of decoding through when the next wanted frame is this far ahead: decoding a few
# seconds of frames without converting them is cheaper than a seek back to the previous keyframe.
SEEK_AHEAD_S = 2.0


class SourceFrames:
    """An input file open for sampling at canonical times, without a transcode (a context manager).

    ``frames`` is the frame count the canonical stream would have (the container's duration at
    ``settings.fps``); ``read(indices)`` yields the frames at those canonical indices.
    """

    def __init__(self, path: str | Path, settings: CanonicalSettings):
        self.path, self.settings = Path(path), settings
        self.container, self.stream = open_video_stream(check_video_path(path))
        try:
            self.frames = _canonical_frames(self.path, self.container, self.stream, settings)
        except BaseException:
            self.container.close()
            raise

    def __enter__(self) -> SourceFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def read(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(canonical index, RGB (H, W, 3) uint8) for ``indices`` in increasing order."""
        try:
            for index, frame in _frames_at(self.container, self.stream, indices, self.settings):
                yield index, to_canonical_rgb(frame, self.settings)
        except av.error.FFmpegError as exc:
            raise CopeInputError(f"{self.path}: cannot decode the video ({exc})") from exc


def _canonical_frames(path, container, stream, settings: CanonicalSettings) -> int:
    seconds = header_duration_s(container, stream)
    if seconds is None:
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


def to_canonical_rgb(frame, settings: CanonicalSettings) -> np.ndarray:
    """Rotate by the display matrix (as ``ffmpeg`` does), then scale to the canonical size."""
    turns = {90: -1, 180: 2, 270: 1}.get(round(-(getattr(frame, "rotation", 0) or 0)) % 360, 0)
    width, height = (
        (settings.height, settings.width) if turns in (-1, 1) else (settings.width, settings.height)
    )
    rgb = to_rgb24(frame, width, height)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
