"""Read an MPEG-4 Part 2 stream once, in display order: frame types, motion vectors, YUV planes.

Memory is bounded by what the caller keeps: frames are yielded one at a time. GOPs the caller
does not want are skipped at the packet level (each GOP starts with an I-frame, so the decoder
restarts cleanly at the next wanted one) and cost no decoding. ``gop_frames`` decodes one GOP on
its own, seeking straight to its I-frame: extraction workers each read GOPs that way, in parallel.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np

from cope import signals
from cope.codec.bitstream import VolHeader, VopHeader, parse_vol, parse_vop
from cope.codec.canonical import check_video_path, demux_tolerant, open_video_stream
from cope.codec.primitives import StreamInfo
from cope.codec.residual import MacroblockMotion, macroblock_motion
from cope.codec.swscale import to_rgb24
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
        return to_rgb24(self.frame)


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


def find_vol(container, stream, path: Path) -> VolHeader:
    """The MPEG-4 stream's Video Object Layer header: in the extradata (MP4/MKV) or in-band,
    before the first VOP (AVI, raw m4v)."""
    vol = parse_vol(stream.codec_context.extradata or b"")
    if vol is None:
        for packet in demux_tolerant(container, stream):
            if packet is None:
                break
            vol = parse_vol(bytes(packet))
            if vol is not None or packet.size:
                break
    if vol is None:
        raise CopeInputError(f"{path}: MPEG-4 stream without a Video Object Layer header")
    return vol


class FrameReader(Protocol):
    """What ``CodecVideo`` reads a stream through: ``CanonicalReader``, or ``native.NativeReader``
    for a source read in its own codec. Frames have ``index``, ``pts``, ``gop`` and ``rgb()``."""

    path: Path
    unreadable_packets: int
    decode_errors: int

    def scan(self) -> StreamScan: ...

    def frames(self, gops: Collection[int] | None = None) -> Iterator[Any]: ...

    def gop_frames(self, gop: int) -> Iterator[Any]: ...


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
            self.vol = find_vol(container, stream, self.path)
            self._check_vol(self.vol)
        finally:
            container.close()
        self._scan: StreamScan | None = None
        self._gop_pts: list[int | None] = []  # packet pts of each GOP's I-frame (the scan's): seek targets
        # Damage seen so far: packets without a readable VOP header (the scan's), and decoder
        # errors (FFmpeg conceals most and still outputs the frame) or frames never output.
        self.unreadable_packets = 0
        self.decode_errors = 0
        self._errors_lock = threading.Lock()

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

    def _packets(self, container, stream) -> Iterator[tuple[av.Packet | None, VopHeader | None]]:
        """Every non-empty packet with its VOP header (None: a damaged header, the frame is lost),
        then ``(None, None)`` if the rest of the file cannot be read."""
        for packet in demux_tolerant(container, stream):
            if packet is None:
                yield None, None
                return
            if packet.size:
                yield packet, parse_vop(bytes(packet), self.vol)

    def scan(self) -> StreamScan:
        """Frame types and GOP starts from the VOP headers; no decoding."""
        if self._scan is not None:
            return self._scan
        container, stream = open_video_stream(self.path)
        types: list[str] = []
        sizes: list[int] = []
        gop_pts: list[int | None] = []
        try:
            for packet, header in self._packets(container, stream):
                if packet is None or header is None:
                    self.unreadable_packets += 1
                    continue
                if header.coding_type == "I":
                    gop_pts.append(packet.pts)
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
        self._gop_pts = gop_pts
        self._scan = StreamScan(info=info, frame_types=types, gop_starts=gop_starts, packet_sizes=sizes)
        return self._scan

    def frames(self, gops: Collection[int] | None = None) -> Iterator[DecodedFrame]:
        """Decode frames in display order, with motion vectors; only GOPs in ``gops`` if given."""
        return self._read(gops, first_gop=0)

    def gop_frames(self, gop: int) -> Iterator[DecodedFrame]:
        """Decode GOP ``gop`` alone, seeking to its I-frame (reading from the start where the
        container cannot seek there): the same frames ``frames({gop})`` gives."""
        return self._read({gop}, first_gop=gop)

    def _read(self, gops: Collection[int] | None, first_gop: int) -> Iterator[DecodedFrame]:
        scan = self.scan()
        last_gop = len(scan.gop_starts) - 1 if gops is None else max(gops, default=-1)
        mb_shape = (self.height + 15) // 16, (self.width + 15) // 16
        errors = 0
        logs: list = []
        container, stream = open_decoder(self.path)
        try:
            packets = self._sought_packets(container, stream, first_gop)
            if packets is None:  # the seek missed the I-frame: read from the start instead
                container.close()
                container, stream = open_decoder(self.path)
                packets, first_gop = self._packets(container, stream), 0
            time_base = float(stream.time_base) if stream.time_base is not None else None
            gop, index = first_gop - 1, scan.gop_starts[first_gop]
            with decoder_errors_logged(), av.logging.Capture(local=True) as logs:
                for packet, header in packets:
                    if packet is None or header is None:
                        continue  # the scan counted it already
                    signals.check()
                    gop += header.coding_type == "I"
                    if gop > last_gop:
                        break
                    if gops is None or gop in gops:
                        decoded = self._decode(packet, header, index, gop, mb_shape, time_base)
                        errors += not decoded  # a packet FFmpeg rejects yields no frame
                        yield from decoded
                    index += 1
        finally:
            self._count_decode_errors(errors + sum(1 for level, _, _ in logs if level <= av.logging.ERROR))
            container.close()

    def _sought_packets(self, container, stream, gop: int):
        """The packets from GOP ``gop``'s I-frame on, or None when the seek did not land on it."""
        if gop == 0:
            return self._packets(container, stream)
        target = self._gop_pts[gop]
        if target is None:
            return None
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            return None
        packets = self._packets(container, stream)
        for packet, header in packets:
            if packet is None:
                return None
            if header is None or packet.pts is None or packet.pts < target:
                continue  # a keyframe before the target: the seek landed early
            if packet.pts != target or header.coding_type != "I":
                return None
            return itertools.chain([(packet, header)], packets)
        return None

    def _count_decode_errors(self, count: int) -> None:
        with self._errors_lock:  # workers decode GOPs in parallel threads
            self.decode_errors += count

    def _decode(self, packet, header, index, gop, mb_shape, time_base) -> list[DecodedFrame]:
        """The packet's frame; none for a packet FFmpeg rejects."""
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            decoded = []
        frames = []
        for frame in decoded:
            motion = None
            if header.coding_type == "P":
                motion = macroblock_motion(self._motion_vectors(frame, index), *mb_shape)
            if frame.pts is not None and time_base is not None:
                pts = frame.pts * time_base
            else:
                pts = index / (self.fps or 1.0)
            frames.append(
                DecodedFrame(index, pts, gop, header.coding_type, header.rounding_type, motion, frame)
            )
        return frames

    def _motion_vectors(self, frame: av.VideoFrame, index: int) -> np.ndarray | None:
        side = frame.side_data.get("MOTION_VECTORS")
        if side is None:
            return None  # every macroblock intra-coded
        mvs = side.to_ndarray()
        if len(mvs) and np.any(mvs["motion_scale"] != 2):
            raise CopeInputError(f"{self.path}: frame {index} has non-half-pel motion vectors")
        return mvs


def open_decoder(path: Path):
    """(container, stream) ready to decode with FFmpeg's motion-vector export."""
    container, stream = open_video_stream(path)
    stream.thread_type = "SLICE"  # frame threading made exported MVs nondeterministic (H.264)
    stream.codec_context.options = {"flags2": "+export_mvs"}
    return container, stream


_log_lock = threading.Lock()
_log_users = 0
_log_level_before: int | None = None


@contextlib.contextmanager
def decoder_errors_logged() -> Iterator[None]:
    """FFmpeg's log level at ERROR while any reader decodes, so decoder errors can be counted.

    The level is process-wide and readers run in parallel threads: the first reader in sets it,
    the last one out restores what was there before.
    """
    global _log_users, _log_level_before
    with _log_lock:
        if _log_users == 0:
            _log_level_before = av.logging.get_level()
            av.logging.set_level(av.logging.ERROR)
        _log_users += 1
    try:
        yield
    finally:
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                av.logging.set_level(_log_level_before)
