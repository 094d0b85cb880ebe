"""Read an MPEG-4 Part 2 stream once, in display order: frame types, motion vectors, YUV planes.

Memory is bounded by what the caller keeps: frames are yielded one at a time. GOPs the caller
does not want are skipped at the packet level (each GOP starts with an I-frame, so the decoder
restarts cleanly at the next wanted one) and cost no decoding.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from cope.codec.bitstream import VolHeader, VopHeader, parse_vol, parse_vop
from cope.codec.canonical import check_video_path, open_video_stream
from cope.codec.primitives import StreamInfo
from cope.codec.residual import MacroblockMotion, macroblock_motion
from cope.errors import CopeInputError


@dataclass
class DecodedFrame:
    """One decoded frame of the canonical stream."""

    index: int  # display-order index (= decode order: there are no B-frames)
    pts: float  # seconds
    gop: int
    frame_type: str  # "I" or "P"
    rounding: int  # VOP rounding_type (P-frames)
    motion: MacroblockMotion | None  # P-frames: per-macroblock vectors from FFmpeg's export
    frame: av.VideoFrame

    @property
    def yuv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Y, U, V planes as uint8 views, (H, W), (H/2, W/2), (H/2, W/2)."""
        return tuple(
            np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in self.frame.planes
        )

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8, converted by FFmpeg's swscale like every frame a VideoLM sees."""
        return self.frame.to_ndarray(format="rgb24")


@dataclass
class StreamScan:
    """What the packet headers tell without decoding (tens of thousands of frames per second)."""

    info: StreamInfo
    frame_types: list[str]  # per display index
    gop_starts: list[int]  # display index of every I-frame

    @property
    def num_frames(self) -> int:
        return len(self.frame_types)


class CanonicalReader:
    """Decodes an MPEG-4 Part 2 stream with I- and P-frames only and half-pel motion.

    Streams this module cannot rebuild exactly (quarter-pel, GMC sprites, interlace, B-frames,
    other codecs) are refused with a ``CopeInputError`` that says why: transcode them first.
    """

    def __init__(self, path: str | Path):
        self.path = check_video_path(path)
        container, stream = open_video_stream(self.path)
        try:
            self.codec = stream.codec_context.name
            if self.codec != "mpeg4":
                raise CopeInputError(
                    f"{self.path}: the video stream is {self.codec}, not MPEG-4 Part 2 "
                    "(omit --no-transcode to transcode it)"
                )
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 0.0
            self.vol = self._find_vol(container, stream)
            self._check_vol(self.vol)
        finally:
            container.close()
        self._scan: StreamScan | None = None

    def _find_vol(self, container, stream) -> VolHeader:
        extradata = stream.codec_context.extradata or b""
        vol = parse_vol(extradata)
        if vol is None:  # AVI / raw m4v: the VOL header travels in-band, before the first VOP
            for packet in container.demux(stream):
                vol = parse_vol(bytes(packet))
                if vol is not None or packet.size:
                    break
        if vol is None:
            raise CopeInputError(f"{self.path}: MPEG-4 stream without a Video Object Layer header")
        return vol

    def _check_vol(self, vol: VolHeader) -> None:
        problems = []
        if vol.quarter_sample:
            problems.append("quarter-pel motion")
        if vol.sprite_enable:
            problems.append("GMC/sprite coding")
        if vol.interlaced:
            problems.append("interlaced coding")
        if problems:
            raise CopeInputError(
                f"{self.path}: MPEG-4 stream uses {' and '.join(problems)}, whose residual cannot be "
                "rebuilt exactly (omit --no-transcode to transcode it)"
            )

    def _packets(self, container, stream) -> Iterator[tuple[av.Packet, VopHeader]]:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            header = parse_vop(bytes(packet), self.vol)
            if header is not None:
                yield packet, header

    def scan(self) -> StreamScan:
        """Frame types and GOP starts from the VOP headers; no decoding."""
        if self._scan is not None:
            return self._scan
        container, stream = open_video_stream(self.path)
        types: list[str] = []
        try:
            for _, header in self._packets(container, stream):
                types.append(header.coding_type)
        finally:
            container.close()
        if not types:
            raise CopeInputError(f"{self.path}: no video frames")
        if types[0] != "I":
            raise CopeInputError(f"{self.path}: the stream does not start with an I-frame")
        bad = {t for t in types if t not in ("I", "P")}
        if bad:
            kinds = " and ".join(f"{t}-frames" for t in sorted(bad))
            raise CopeInputError(
                f"{self.path}: MPEG-4 stream has {kinds}; only I- and P-frames are supported "
                "(omit --no-transcode to transcode it)"
            )
        gop_starts = [i for i, t in enumerate(types) if t == "I"]
        counts = {"I": types.count("I"), "P": types.count("P"), "B": 0}
        info = StreamInfo(
            codec="mpeg4",
            width=self.width,
            height=self.height,
            fps=self.fps,
            frames=len(types),
            duration_s=len(types) / self.fps if self.fps else 0.0,
            gops=len(gop_starts),
            frame_types=counts,
        )
        self._scan = StreamScan(info=info, frame_types=types, gop_starts=gop_starts)
        return self._scan

    def frames(self, gops: Container[int] | None = None) -> Iterator[DecodedFrame]:
        """Decode frames in display order, with motion vectors; only GOPs in ``gops`` if given."""
        container, stream = open_video_stream(self.path)
        stream.thread_type = "SLICE"  # frame threading made exported MVs nondeterministic (H.264)
        stream.codec_context.options = {"flags2": "+export_mvs"}
        mb_rows, mb_cols = (self.height + 15) // 16, (self.width + 15) // 16
        time_base = float(stream.time_base)
        gop = -1
        try:
            for index, (packet, header) in enumerate(self._packets(container, stream)):
                gop += header.coding_type == "I"
                if gops is not None and gop not in gops:
                    continue
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    raise CopeInputError(f"{self.path}: frame {index} cannot be decoded ({exc})") from None
                for frame in decoded:
                    motion = None
                    if header.coding_type == "P":
                        motion = macroblock_motion(self._motion_vectors(frame, index), mb_rows, mb_cols)
                    pts = frame.pts * time_base if frame.pts is not None else index / (self.fps or 1.0)
                    yield DecodedFrame(
                        index, pts, gop, header.coding_type, header.rounding_type, motion, frame
                    )
        finally:
            container.close()

    def _motion_vectors(self, frame: av.VideoFrame, index: int) -> np.ndarray | None:
        side = frame.side_data.get("MOTION_VECTORS")
        if side is None:
            return None  # every macroblock intra-coded
        mvs = side.to_ndarray()
        if len(mvs) and np.any(mvs["motion_scale"] != 2):
            raise CopeInputError(f"{self.path}: frame {index} has non-half-pel motion vectors")
        return mvs
