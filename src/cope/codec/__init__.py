"""Codec primitives: canonical transcoding, exact residuals, P-frame fusion, extraction."""

from cope.codec.canonical import CanonicalSettings, transcode
from cope.codec.extract import CodecVideo, open_video
from cope.codec.primitives import Gop, IFrame, PFrame, StreamInfo

__all__ = [
    "CanonicalSettings",
    "CodecVideo",
    "Gop",
    "IFrame",
    "PFrame",
    "StreamInfo",
    "open_video",
    "transcode",
]
