"""Frames to RGB through FFmpeg's swscale, with one scaling context per thread.

``VideoFrame.to_ndarray(format="rgb24")`` and ``VideoFrame.reformat`` build a new swscale context
on every call; at 384×384 building it costs ~7 ms, about 20× the conversion itself, and extraction
converts every keyframe and every fused slot. A ``VideoReformatter`` keeps its context while the
sizes and formats stay the same. Contexts are not thread-safe, so each thread (extraction
workers decode GOPs in threads) has its own. The pixels are the same as ``to_ndarray``'s: the
same swscale call with the same defaults.
"""

from __future__ import annotations

import threading

import av
import numpy as np
from av.video.reformatter import VideoReformatter

_local = threading.local()


def to_rgb24(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(height, width, 3) uint8 RGB of ``frame``, scaled when a size is given (default: its own)."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()
