"""Native mode: read the source's own H.264 or MPEG-4 Part 2 stream, with no transcode.

The canonical path re-encodes every input before reading it; native mode reads the motion the
source's encoder already chose (FFmpeg's ``export_mvs``), which saves the transcode. The rules
(docs/contracts.md and README, "Native mode", say the same):

* **Anchors.** I- and P-frames are the reference chain. Frame types come from the packet headers
  (H.264 ``slice_type``, MPEG-4 VOP type) before anything is decoded. B-frames are never chained,
  sampled or used as keyframes; those no picture refers to are not even decoded (FFmpeg's
  ``skip_frame`` NONREF), reference B-frames (x264's B-pyramid) are, for the decoder's sake.
* **Plan.** The source's I-frames start its GOPs (no fixed GOP); the plan's slots are laid out
  as on the canonical stream (every ``fusion`` frames of the source's own frame rate), then each
  moves to the nearest anchor of its GOP (``plan.snap_to_anchors``).
* **Motion.** Each P-frame's forward vectors (quarter-pel for H.264; 16×16 to 8×8 partitions)
  are composed along the chain of anchors in decode order, as on the canonical stream
  (``fusion.MotionAccumulator``). FFmpeg does not export which reference a vector points into, so
  it is recovered per 8×8 block: among the last ``REFERENCE_CANDIDATES`` reference frames shown
  at or before the previous anchor (that anchor first), the one whose bilinear prediction at the vector best
  matches the block (``kernels.nearest_references``). A vector that reaches further back than the
  previous anchor is **scaled** to one anchor interval by the ratio of display-time distances
  (constant velocity), never dropped. Blocks without a vector (intra) restart the trace.
* **Output size.** Frames are decoded at the source's size and converted to RGB at the canonical
  ``width`` × ``height`` (as ``cope.codec.source`` does for dense sampling); the fused field is
  resampled to that size with its vectors in canonical pixels. So every array has the shapes and
  the sign convention of canonical extraction and the Δ-encoder reads it unchanged.
* **Residual.** Frame t minus its reference sampled bilinearly at ``p + A_t(p)``
  (``fusion.fused_residual``), at every fusion, ``--fusion 1`` included: H.264's own prediction
  (6-tap filters, weighted prediction, deblocking) is not rebuilt.

Streams native mode cannot read (HEVC: FFmpeg exports no vectors for it; VP9, AV1, GIF, images;
rotated, interlaced or high-bit-depth video; streams without timestamps) raise
``NativeUnsupported``, and ``--codec auto`` transcodes them instead.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from cope import signals
from cope.codec import kernels
from cope.codec.bitstream import (
    VOP_START_CODE,
    avcc_length_size,
    find_start_codes,
    h264_frame_type,
    parse_vop,
)
from cope.codec.canonical import CanonicalSettings, check_video_path, demux_tolerant, open_video_stream
from cope.codec.extract import CodecVideo
from cope.codec.fusion import BlockMotion, MotionAccumulator, fused_residual
from cope.codec.primitives import IFrame, PFrame, StreamInfo
from cope.codec.reader import StreamScan, decoder_errors_logged, find_vol, open_decoder
from cope.codec.source import to_canonical_rgb
from cope.errors import CopeInputError
from cope.plan import MAX_GOPS, PlanEntry, TokenPlan, snap_to_anchors

NATIVE_CODECS = {"h264": "H.264", "mpeg4": "MPEG-4 Part 2"}
# Decoders FFmpeg has but whose motion vectors it does not export.
WITHOUT_EXPORT = {"hevc": "FFmpeg's HEVC decoder exports no motion vectors"}
# Frames a P-frame's vectors may point into: x264's default of 3 references (anchors and, with
# B-pyramid, reference B-frames) is covered by the last 4 reference frames before it.
REFERENCE_CANDIDATES = 4
NO_PICTURE = ""  # a packet that holds no picture (an MPEG-4 "not coded" VOP)


class NativeUnsupported(CopeInputError):
    """The stream cannot be read in its own codec; ``--codec auto`` transcodes it instead."""


@dataclass
class NativeFrame:
    """One decoded frame of the source, in display order."""

    index: int  # display-order index in the source stream
    pts: float  # seconds
    gop: int
    frame_type: str  # "I", "P", "B" (or "S": MPEG-4 GMC, chained like a P-frame)
    frame: av.VideoFrame
    settings: CanonicalSettings  # its width × height is the output size

    @property
    def anchor(self) -> bool:
        return self.frame_type != "B"

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 at the canonical size, scaled by FFmpeg's swscale."""
        return to_canonical_rgb(self.frame, self.settings)

    def luma(self) -> np.ndarray:
        """The Y plane at the source's size, (H, W) uint8: a view, valid while this frame lives."""
        plane = self.frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        return rows[:, : plane.width]

    def motion(self) -> BlockMotion:
        """The frame's forward vectors per 8×8 block (``block_motion``)."""
        side = self.frame.side_data.get("MOTION_VECTORS")
        rows8, cols8 = 2 * -(-self.frame.height // 16), 2 * -(-self.frame.width // 16)
        return block_motion(side.to_ndarray() if side is not None else None, rows8, cols8)


def block_motion(mvs: np.ndarray | None, rows8: int, cols8: int) -> BlockMotion:
    """FFmpeg's exported vectors of one frame (``MOTION_VECTORS`` side data) per 8×8 block.

    Runs the compiled ``kernels.arrange_blocks`` where numba is installed, else
    ``block_motion_reference``.
    """
    if kernels.ENABLED and mvs is not None and len(mvs):
        names = ("source", "w", "h", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale")
        return BlockMotion(*kernels.arrange_blocks(*(mvs[name] for name in names), rows8, cols8))
    return block_motion_reference(mvs, rows8, cols8)


def block_motion_reference(mvs: np.ndarray | None, rows8: int, cols8: int) -> BlockMotion:
    """``block_motion`` in numpy: the reference the compiled kernel is tested against.

    Only forward vectors (``source < 0``) count: a P-frame has no others. Each exported block of
    w × h pixels (16×16, 16×8, 8×16 or 8×8; ``dst`` is its centre) fills the 8×8 blocks it covers,
    with ``motion / motion_scale`` pixels (contract sign). Blocks no vector covers are intra.
    """
    vectors = np.zeros((rows8, cols8, 2), dtype=np.float32)
    covered = np.zeros((rows8, cols8), dtype=bool)
    if mvs is not None and len(mvs):
        forward = mvs[mvs["source"] < 0]
        width, height = forward["w"].astype(np.int64), forward["h"].astype(np.int64)
        x0 = forward["dst_x"].astype(np.int64) - width // 2
        y0 = forward["dst_y"].astype(np.int64) - height // 2
        scale = forward["motion_scale"].astype(np.float32)
        motion = np.stack([forward["motion_x"] / scale, forward["motion_y"] / scale], axis=-1)
        for dy, dx in ((0, 0), (0, 8), (8, 0), (8, 8)):  # the (up to) four 8×8 blocks of each block
            by, bx = (y0 + dy) // 8, (x0 + dx) // 8
            inside = (dy < height) & (dx < width) & (by >= 0) & (by < rows8) & (bx >= 0) & (bx < cols8)
            vectors[by[inside], bx[inside]] = motion[inside]
            covered[by[inside], bx[inside]] = True
    return BlockMotion(vectors, ~covered)


def nearest_references(
    current: np.ndarray, candidates: np.ndarray, quarter: np.ndarray, intra: np.ndarray
) -> np.ndarray:
    """Per 8×8 block, the index of the candidate frame its vector points into.

    Runs the compiled ``kernels.nearest_references`` where numba is installed, else
    ``nearest_references_reference``; see there for the arrays.
    """
    if kernels.ENABLED:
        return kernels.nearest_references(current, candidates, quarter, intra)
    return nearest_references_reference(current, candidates, quarter, intra)


def nearest_references_reference(
    current: np.ndarray, candidates: np.ndarray, quarter: np.ndarray, intra: np.ndarray
) -> np.ndarray:
    """``nearest_references`` in numpy: the reference the compiled kernel is tested against.

    ``current`` (H, W) uint8 luma; ``candidates`` (R, H, W) uint8, the preferred one first;
    ``quarter`` (rows8, cols8, 2) int32 vectors in quarter pixels; ``intra`` (rows8, cols8) bool.
    Each candidate is judged by the sum of |16·current − 16·prediction| (bilinear, integer) over
    the 16 odd-offset pixels of the block; the lowest sum wins, the earlier candidate on a tie.
    Intra blocks and zero vectors (scaling cannot change them) get 0.
    """
    count, h, w = candidates.shape
    rows8, cols8 = intra.shape
    best = np.zeros((rows8, cols8), dtype=np.int64)
    if count < 2:
        return best
    offsets = np.arange(1, 8, 2)
    y = (np.arange(rows8)[:, None] * 8 + offsets)[:, None, :, None]  # (rows8, 1, 4, 1)
    x = (np.arange(cols8)[:, None] * 8 + offsets)[None, :, None, :]  # (1, cols8, 1, 4)
    inside = (y < h) & (x < w)
    target = 16 * current[np.minimum(y, h - 1), np.minimum(x, w - 1)].astype(np.int64)
    qx, qy = quarter[..., 0][:, :, None, None], quarter[..., 1][:, :, None, None]
    fx, fy = qx & 3, qy & 3
    y0, y1 = np.clip(y + (qy >> 2), 0, h - 1), np.clip(y + (qy >> 2) + 1, 0, h - 1)
    x0, x1 = np.clip(x + (qx >> 2), 0, w - 1), np.clip(x + (qx >> 2) + 1, 0, w - 1)
    sums = []
    for reference in candidates.astype(np.int64):
        predicted = (
            (4 - fx) * (4 - fy) * reference[y0, x0]
            + fx * (4 - fy) * reference[y0, x1]
            + (4 - fx) * fy * reference[y1, x0]
            + fx * fy * reference[y1, x1]
        )
        sums.append(np.where(inside, np.abs(target - predicted), 0).sum(axis=(2, 3)))
    best = np.argmin(np.stack(sums), axis=0)
    best[intra | (quarter == 0).all(axis=-1)] = 0
    return best


class RecentFrames:
    """A GOP's latest reference frames: what a P-frame's vectors may point into."""

    def __init__(self, size: int = REFERENCE_CANDIDATES):
        self.size = size
        self.frames: list[NativeFrame] = []  # in display order

    def add(self, frame: NativeFrame) -> None:
        self.frames.append(frame)

    def before(self, anchor: int) -> list[NativeFrame]:
        """The last ``size`` frames shown at or before ``anchor``, newest (``anchor``) first.

        Frames shown after the previous anchor are decoded after the current P-frame, so they
        cannot be its references; older ones than these are dropped for good.
        """
        earlier = [f for f in self.frames if f.index <= anchor][-self.size :]
        self.frames = earlier + [f for f in self.frames if f.index > anchor]
        return earlier[::-1]


def chained_motion(frame: NativeFrame, previous_anchor: int, recent: RecentFrames) -> BlockMotion:
    """The P-frame's motion relative to the previous anchor (``scaled_to_previous_anchor``)."""
    motion = frame.motion()
    candidates = recent.before(previous_anchor)
    if len(candidates) < 2 or not motion.vectors[~motion.intra].any():
        return motion  # one candidate, or only zero vectors: nothing to tell apart or to scale
    references = [(candidate.index, candidate.luma()) for candidate in candidates]
    return scaled_to_previous_anchor(motion, frame.luma(), frame.index, references)


def scaled_to_previous_anchor(
    motion: BlockMotion, luma: np.ndarray, index: int, candidates: list[tuple[int, np.ndarray]]
) -> BlockMotion:
    """``motion`` of frame ``index`` (luma (H, W) uint8) with each block's vector scaled by
    (index − previous anchor) / (index − the frame it points into): 1 exactly where it points into
    the previous anchor. ``candidates``: (display index, luma) of the frames it may point into,
    the previous anchor first (``RecentFrames.before``).
    """
    if len(candidates) < 2:
        return motion
    quarter = np.rint(motion.vectors * 4).astype(np.int32)  # exact: vectors are quarter-pels
    stack = np.stack([plane for _, plane in candidates])
    best = nearest_references(luma, stack, quarter, motion.intra)
    distances = np.array([index - candidate for candidate, _ in candidates], dtype=np.float32)
    ratio = distances[0] / distances  # (R,) float32, ratio[0] == 1
    return BlockMotion(motion.vectors * ratio[best][..., None], motion.intra)


class NativeReader:
    """Decodes an H.264 or MPEG-4 Part 2 source in its own codec, one GOP at a time.

    Frame types and display order come from the packets alone (``scan``); ``gop_frames`` seeks to
    a GOP's I-frame and yields its frames in display order with their exported motion.
    """

    def __init__(self, path: str | Path, settings: CanonicalSettings):
        self.path = check_video_path(path)
        self.settings = settings
        container, stream = open_video_stream(self.path)
        try:
            self.codec = stream.codec_context.name
            self._check_codec(stream)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 0.0
            self._frame_type = self._frame_type_reader(container, stream)
        finally:
            container.close()
        self._check_first_frame()
        self._scan: StreamScan | None = None
        self._pts: list[int] = []  # packet pts per display index (the scan's)
        self._index_of_pts: dict[int, int] = {}
        self.unreadable_packets = 0  # packets without a readable picture header (the scan's)
        self.decode_errors = 0
        self._errors_lock = threading.Lock()

    def _unsupported(self, reason: str) -> NativeUnsupported:
        return NativeUnsupported(
            f"{self.path}: cannot be read in its own codec: {reason} (the canonical transcode reads it)"
        )

    def _check_codec(self, stream) -> None:
        if self.codec in WITHOUT_EXPORT:
            raise self._unsupported(WITHOUT_EXPORT[self.codec])
        if self.codec not in NATIVE_CODECS:
            raise self._unsupported(f"the stream is {self.codec}; native mode reads H.264 and MPEG-4 Part 2")
        pix_fmt = stream.codec_context.pix_fmt
        if pix_fmt is None or av.VideoFormat(pix_fmt).components[0].bits != 8:
            raise self._unsupported(f"pixel format {pix_fmt} (native mode reads 8-bit video)")

    def _frame_type_reader(self, container, stream) -> Callable[[bytes], str | None]:
        """A function from a packet's bytes to its picture type: "I", "P", "B" or "S";
        ``NO_PICTURE`` for a packet without one, None for a header that cannot be read."""
        if self.codec == "h264":
            length_size = avcc_length_size(stream.codec_context.extradata)
            return lambda data: h264_frame_type(data, length_size)
        vol = find_vol(container, stream, self.path)
        if vol.interlaced:
            raise self._unsupported("interlaced MPEG-4")

        def vop_type(data: bytes) -> str | None:
            if len(find_start_codes(data, lambda code: code == VOP_START_CODE)) > 1:
                raise self._unsupported("packed B-frames (two pictures in one packet)")
            header = parse_vop(data, vol)
            if header is not None and not header.coded:
                return NO_PICTURE  # a "not coded" VOP: the decoder outputs nothing for it
            return header.coding_type if header is not None else None

        return vop_type

    def _check_first_frame(self) -> None:
        """Rotation and interlace are per frame in FFmpeg: read them off the first one."""
        container, stream = open_video_stream(self.path)
        try:
            frame = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError:
            frame = None  # damage: the scan and the decoding count it
        finally:
            container.close()
        if frame is not None and round(getattr(frame, "rotation", 0) or 0) % 360:
            raise self._unsupported("display rotation")
        if frame is not None and frame.interlaced_frame:
            raise self._unsupported("interlaced video")

    def scan(self) -> StreamScan:
        """Frame types, display order and GOP starts from the packets; no decoding."""
        if self._scan is not None:
            return self._scan
        container, stream = open_video_stream(self.path)
        records: list[tuple[int, str, int]] = []  # (pts, type, bytes) in decode order
        try:
            time_base = stream.time_base
            for packet in demux_tolerant(container, stream):
                if packet is None:
                    self.unreadable_packets += 1
                    break
                if not packet.size:
                    continue
                kind = self._frame_type(bytes(packet))
                if kind is None:
                    self.unreadable_packets += 1
                if kind in (None, NO_PICTURE):
                    continue
                if packet.pts is None:
                    raise self._unsupported("its packets carry no timestamps (a raw elementary stream)")
                records.append((packet.pts, kind, packet.size))
        finally:
            container.close()
        self._scan = self._display_order(records, time_base)
        return self._scan

    def _display_order(self, records: list[tuple[int, str, int]], time_base) -> StreamScan:
        if not records:
            raise CopeInputError(f"{self.path}: no video frames")
        records.sort()
        self._pts = [pts for pts, _, _ in records]
        self._index_of_pts = {pts: index for index, pts in enumerate(self._pts)}
        if len(self._index_of_pts) < len(records):
            raise self._unsupported("two frames share a timestamp")
        types = [kind for _, kind, _ in records]
        if types[0] != "I":
            raise self._unsupported("the first frame shown is not an I-frame")
        gop_starts = [i for i, kind in enumerate(types) if kind == "I"]
        counts = {kind: types.count(kind) for kind in ("I", "P", "B")}
        if "S" in types:  # MPEG-4 GMC sprite frames, counted apart as the canonical source summary does
            counts["S"] = types.count("S")
        fps = self.fps
        duration = float((self._pts[-1] - self._pts[0]) * time_base) + (1 / fps if fps else 0.0)
        info = StreamInfo(
            codec=self.codec,
            width=self.settings.width,  # the size every output array has
            height=self.settings.height,
            fps=fps,
            frames=len(types),
            duration_s=duration,
            gops=len(gop_starts),
            frame_types=counts,
        )
        sizes = [size for _, _, size in records]
        return StreamScan(info=info, frame_types=types, gop_starts=gop_starts, packet_sizes=sizes)

    def source_info(self) -> StreamInfo:
        """The scan's summary at the source's own frame size."""
        info = self.scan().info
        return StreamInfo(
            info.codec,
            self.width,
            self.height,
            info.fps,
            info.frames,
            info.duration_s,
            info.gops,
            info.frame_types,
        )

    def frames(self, gops: Collection[int] | None = None) -> Iterator[NativeFrame]:
        """Decode the frames of ``gops`` (default: all) in display order, GOP after GOP."""
        wanted = range(len(self.scan().gop_starts)) if gops is None else sorted(gops)
        for gop in wanted:
            yield from self.gop_frames(gop)

    def gop_frames(self, gop: int, references_only: bool = False) -> Iterator[NativeFrame]:
        """The frames of GOP ``gop`` in display order, decoding from its I-frame on.

        Decoding goes on past the next I-frame until a frame of the next GOP comes out, so the
        decoder's reordering delay never loses a frame; pictures shown before the GOP's I-frame
        (an open GOP's leading B-frames, which need the previous GOP) are dropped.
        ``references_only``: FFmpeg skips the pictures no other picture refers to (most B-frames)
        without decoding them: all that chaining anchors needs, in about half the time with B-frames.
        """
        scan = self.scan()
        start = scan.gop_starts[gop]
        end = scan.gop_starts[gop + 1] if gop + 1 < len(scan.gop_starts) else scan.num_frames
        errors = 0
        logs: list = []
        container, stream = self._open_decoder(references_only)
        try:
            packets = self._packets_from(container, stream, self._pts[start])
            if packets is None:  # the seek missed the I-frame: read from the start instead
                container.close()
                container, stream = self._open_decoder(references_only)
                packets = self._packets_from(container, stream, self._pts[start], seek=False)
            errors += packets is None  # its I-frame cannot be read again: the GOP is lost
            time_base = float(stream.time_base)
            with decoder_errors_logged(), av.logging.Capture(local=True) as logs:
                for packet in packets or ():
                    signals.check()
                    try:
                        decoded = packet.decode()
                    except av.error.FFmpegError:
                        errors += 1
                        continue
                    for frame in decoded:
                        index = self._index_of_pts.get(frame.pts) if frame.pts is not None else None
                        if index is None or index < start:
                            errors += index is None  # a frame the scan never saw: damage
                            continue
                        if index >= end:
                            return
                        kind = scan.frame_types[index]
                        yield NativeFrame(index, frame.pts * time_base, gop, kind, frame, self.settings)
        finally:
            with self._errors_lock:  # workers decode GOPs in parallel threads
                self.decode_errors += errors + sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
            container.close()

    def _open_decoder(self, references_only: bool):
        container, stream = open_decoder(self.path)
        if references_only:
            stream.codec_context.skip_frame = "NONREF"
        return container, stream

    def _packets_from(self, container, stream, target: int, seek: bool = True) -> Iterator | None:
        """The packets from the one with pts ``target`` (a GOP's I-frame) on, to the end of the file.

        Seeks to the keyframe at or before it first; None if the packet is not found after the seek.
        """
        if seek and target != self._pts[0]:
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                return None
        packets = demux_tolerant(container, stream)
        for packet in packets:
            if packet is None:
                return None
            if packet.pts == target and packet.size:
                return (p for p in itertools.chain([packet], packets) if p is not None)
        return None


class NativeVideo(CodecVideo):
    """A video read in its own codec: the source's GOPs, frame rate and frame types; frames,
    motion and residuals at the canonical size (``info`` gives that size, ``source`` the source's)."""

    reader: NativeReader

    def __init__(self, reader: NativeReader, workers: int | None = None, adaptive_keyframes: bool = False):
        super().__init__(reader, reader.source_info(), None, workers, adaptive_keyframes)
        self.anchors = [i for i, kind in enumerate(self.scan.frame_types) if kind != "B"]

    def plan(self, fusion: int = 30, keyframes_per_gop: int = 1, max_gops: int = MAX_GOPS) -> TokenPlan:
        """The CoPE plan on the source's anchors (``plan.snap_to_anchors``)."""
        return snap_to_anchors(
            super().plan(fusion, keyframes_per_gop, max_gops), self.anchors, self.scan.gop_starts
        )

    def standard_plans(self, fusion: int = 30) -> dict[str, TokenPlan]:
        plans = super().standard_plans(fusion)
        return {
            name: plan if name == "dense64" else snap_to_anchors(plan, self.anchors, self.scan.gop_starts)
            for name, plan in plans.items()
        }

    def gop_entries(
        self, gop: int, wanted: dict[int, PlanEntry], with_rgb: bool = False, bar: tqdm | None = None
    ) -> Iterator[IFrame | PFrame]:
        """The entries of ``wanted`` in GOP ``gop``: anchors chained in decode order, B-frames skipped."""
        accumulator = MotionAccumulator(self.reader.height, self.reader.width)  # source pixels
        recent = RecentFrames()
        reference: tuple[int, np.ndarray] | None = None  # the last entry: (index, RGB)
        previous_anchor: int | None = None
        shown = self.scan.gop_starts[gop]  # the progress bar counts skipped B-frames too
        broken = False  # an anchor since the last entry was lost: the motion chain has a hole
        for frame in self.reader.gop_frames(gop, references_only=True):
            if bar is not None:
                bar.update(frame.index + 1 - shown)
                shown = frame.index + 1
            if frame.anchor:
                expected = self._next_anchor(previous_anchor)
                broken = broken or (previous_anchor is not None and frame.index != expected)
                if frame.frame_type != "I" and previous_anchor is not None:
                    accumulator.add(chained_motion(frame, previous_anchor, recent))
                previous_anchor = frame.index
            recent.add(frame)
            entry = wanted.get(frame.index)
            if entry is None or not frame.anchor:
                continue
            rgb = frame.rgb()
            if entry.kind == "I":
                yield IFrame(frame.index, frame.pts, frame.gop, rgb)
            elif not broken and reference is not None and reference[0] == entry.ref_index:
                mv = accumulator.dense(self.info.height, self.info.width)  # canonical pixels
                residual = fused_residual(rgb, reference[1], mv)
                kept_rgb = rgb if with_rgb else None
                yield PFrame(frame.index, reference[0], frame.pts, frame.gop, mv, residual, kept_rgb)
            reference, broken = (frame.index, rgb), False
            accumulator.reset()

    def _next_anchor(self, anchor: int | None) -> int | None:
        if anchor is None:
            return None
        position = bisect.bisect_right(self.anchors, anchor)
        return self.anchors[position] if position < len(self.anchors) else None
