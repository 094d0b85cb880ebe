"""Read an MPEG-4 Part 2 stream once, in display order: frame types, motion vectors, YUV planes.

Memory is bounded by what the caller keeps: frames are yielded one at a time. GOPs the caller
does not want are skipped at the packet level (each GOP starts with an I-frame, so the decoder
restarts cleanly at the next wanted one) and cost no decoding.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from cope import signals
from cope.codec.bitstream import VolHeader, VopHeader, parse_vol, parse_vop
from cope.codec.canonical import check_video_path, demux_tolerant, open_video_stream
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
        y, u, v = (
            np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width]
            for p in self.frame.planes
        )
        return y, u, v

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8, converted by FFmpeg's swscale like every frame a VideoLM sees."""
        return self.frame.to_ndarray(format="rgb24")


@dataclass
class StreamScan:
    """What the packet headers tell without decoding (tens of thousands of frames per second)."""

    info: StreamInfo
    frame_types: list[str]  # per display index
    gop_starts: list[int]  # display index of every I-frame
    packet_sizes: list[int] = field(default_factory=list)  # bytes, per display index

    @property
    def num_frames(self) -> int:
        return len(self.frame_types)

    @property
    def scene_cuts(self) -> list[int]:
        """P-frames coded almost from scratch: hard cuts inside a GOP (no I-frame marks them).

        The canonical stream has no scene-cut I-frames and a pinned quantiser, so a P-frame whose
        size is that of an I-frame (≥ 60 % of the median I-frame, ≥ 4× the median P-frame) has
        mostly intra macroblocks: nothing in the previous frame predicts it.
        """
        sizes = np.asarray(self.packet_sizes)
        kinds = np.asarray(self.frame_types)
        if len(sizes) != len(kinds) or not (kinds == "P").any():
            return []
        i_size = np.median(sizes[kinds == "I"])
        p_size = np.median(sizes[kinds == "P"])
        cut = (kinds == "P") & (sizes >= 0.6 * i_size) & (sizes >= 4 * p_size)
        return [int(i) for i in np.flatnonzero(cut)]


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
        # Damage seen so far: packets without a readable VOP header (the scan's), and decoder
        # errors (FFmpeg conceals most and still outputs the frame) or frames never output.
        self.unreadable_packets = 0
        self.decode_errors = 0

    def _find_vol(self, container, stream) -> VolHeader:
        extradata = stream.codec_context.extradata or b""
        vol = parse_vol(extradata)
        if vol is None:  # AVI / raw m4v: the VOL header travels in-band, before the first VOP
            for packet in demux_tolerant(container, stream):
                if packet is None:
                    break
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
        for packet in demux_tolerant(container, stream):
            if packet is None:  # the rest of the file cannot be read
                self.unreadable_packets += 1
                return
            if not packet.size:
                continue
            header = parse_vop(bytes(packet), self.vol)
            if header is not None:
                yield packet, header
            else:  # a damaged VOP header: the frame is lost
                self.unreadable_packets += 1

    def scan(self) -> StreamScan:
        """Frame types and GOP starts from the VOP headers; no decoding."""
        if self._scan is not None:
            return self._scan
        container, stream = open_video_stream(self.path)
        types: list[str] = []
        sizes: list[int] = []
        try:
            for packet, header in self._packets(container, stream):
                types.append(header.coding_type)
                sizes.append(packet.size)
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
        self._scan = StreamScan(info=info, frame_types=types, gop_starts=gop_starts, packet_sizes=sizes)
        return self._scan

    def frames(self, gops: Container[int] | None = None) -> Iterator[DecodedFrame]:
        """Decode frames in display order, with motion vectors; only GOPs in ``gops`` if given."""
        container, stream = open_video_stream(self.path)
        stream.thread_type = "SLICE"  # frame threading made exported MVs nondeterministic (H.264)
        stream.codec_context.options = {"flags2": "+export_mvs"}
        mb_rows, mb_cols = (self.height + 15) // 16, (self.width + 15) // 16
        time_base = float(stream.time_base) if stream.time_base is not None else None
        gop = -1
        unreadable = self.unreadable_packets  # the scan counted these already
        logs: list = []
        log_level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # count decoder errors instead of printing them
        try:
            with av.logging.Capture(local=True) as logs:
                for index, (packet, header) in enumerate(self._packets(container, stream)):
                    signals.check()
                    gop += header.coding_type == "I"
                    if gops is None or gop in gops:
                        yield from self._decode(packet, header, index, gop, (mb_rows, mb_cols), time_base)
        finally:
            self.unreadable_packets = unreadable
            self.decode_errors += sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
            av.logging.set_level(log_level)
            container.close()

    def _decode(self, packet, header, index, gop, mb_shape, time_base) -> Iterator[DecodedFrame]:
        """The packet's frame; a packet FFmpeg rejects is counted and yields nothing."""
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            decoded = []
        if not decoded:
            self.decode_errors += 1
        for frame in decoded:
            motion = None
            if header.coding_type == "P":
                motion = macroblock_motion(self._motion_vectors(frame, index), *mb_shape)
            if frame.pts is not None and time_base is not None:
                pts = frame.pts * time_base
            else:
                pts = index / (self.fps or 1.0)
            yield DecodedFrame(index, pts, gop, header.coding_type, header.rounding_type, motion, frame)

    def _motion_vectors(self, frame: av.VideoFrame, index: int) -> np.ndarray | None:
        side = frame.side_data.get("MOTION_VECTORS")
        if side is None:
            return None  # every macroblock intra-coded
        mvs = side.to_ndarray()
        if len(mvs) and np.any(mvs["motion_scale"] != 2):
            raise CopeInputError(f"{self.path}: frame {index} has non-half-pel motion vectors")
        return mvs
