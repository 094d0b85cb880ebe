"""From a video file to the codec primitives of a token plan, streamed in temporal order.

    video = open_video("clip.mp4")                      # transcodes (cached) to the canonical stream
    plan = video.plan(fusion=30, keyframes_per_gop=1)   # which frames → image tokens / Δ-tokens
    for entry in video.entries(plan):                   # IFrame(rgb) / PFrame(mv, residual)
        ...

Memory stays bounded by a few frames per worker whatever the video length: frames are decoded one
at a time, P-frames between two sampled frames only update the motion accumulator, unsampled GOPs
are not decoded at all, and each of the ``workers`` GOPs decoded at once holds at most
``parallel.DEPTH`` finished entries. ``open_video(..., settings)`` with ``settings.codec`` "native"
reads an H.264 / MPEG-4 source in its own codec instead (``native.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from cope.codec.canonical import CanonicalSettings, CanonicalVideo, transcode
from cope.codec.fusion import MotionAccumulator, fused_residual
from cope.codec.parallel import available_cores, ordered_outputs
from cope.codec.primitives import Gop, IFrame, PFrame, StreamInfo
from cope.codec.reader import CanonicalReader, DecodedFrame, FrameReader, StreamScan
from cope.codec.residual import dense_motion_field, predict_frame
from cope.codec.swscale import to_rgb24
from cope.plan import MAX_GOPS, PlanEntry, TokenPlan, cope_plan, dense_frame_indices, standard_plans


def yuv_to_rgb(planes: tuple[np.ndarray, np.ndarray, np.ndarray], width: int, height: int) -> np.ndarray:
    """Convert 4:2:0 planes to RGB with the same swscale path as decoded frames."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, planes, strict=True):
        padded = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        padded[: data.shape[0], : data.shape[1]] = data
        plane.update(padded.tobytes())
    return to_rgb24(frame)


def exact_residual(current: DecodedFrame, previous: DecodedFrame) -> tuple[np.ndarray, np.ndarray]:
    """The codec's own motion field and residual of one P-frame (no fusion), RGB.

    The prediction is rebuilt bit-exactly in YUV (``residual.predict_frame``) and converted to RGB
    by the same swscale path as the decoded frame, so prediction + residual == decoded RGB frame.
    Intra macroblocks predict black: their residual is the whole block.
    """
    frame, motion = current.frame, current.motion
    if motion is None:
        raise ValueError(f"frame {current.index} is not a P-frame: it has no motion to rebuild")
    pred_yuv = predict_frame(previous.yuv, motion, current.rounding)
    planes = tuple(np.clip(p, 0, 255).astype(np.uint8) for p in pred_yuv)
    pred_rgb = yuv_to_rgb(planes, frame.width, frame.height).astype(np.int16)
    intra = np.repeat(np.repeat(motion.intra, 16, 0), 16, 1)[: frame.height, : frame.width]
    pred_rgb[intra] = 0
    residual = current.rgb().astype(np.int16) - pred_rgb
    return dense_motion_field(motion, frame.height, frame.width), residual


class CodecVideo:
    """A video ready for extraction: its canonical stream, frame types and GOPs."""

    def __init__(
        self,
        reader: FrameReader,
        source: StreamInfo,
        canonical: CanonicalVideo | None,
        workers: int | None = None,
        adaptive_keyframes: bool = False,
    ):
        self.reader = reader
        self.source = source
        self.canonical = canonical  # None when the input's own stream is used (--no-transcode)
        self.scan: StreamScan = reader.scan()
        self.workers = workers or available_cores()  # GOPs decoded at once by ``entries``
        self.adaptive_keyframes = adaptive_keyframes  # scene cuts start keyframes in the plans

    @property
    def keyframe_cuts(self) -> list[int]:
        """The scene cuts that start a keyframe in this video's plans (adaptive keyframes)."""
        return self.scan.scene_cuts if self.adaptive_keyframes else []

    @property
    def decode_errors(self) -> int:
        """Damage met so far: in the source while transcoding, and in the stream read since."""
        transcoding = self.canonical.decode_errors if self.canonical is not None else 0
        return transcoding + self.reader.decode_errors + self.reader.unreadable_packets

    @property
    def info(self) -> StreamInfo:
        """The canonical stream's summary."""
        return self.scan.info

    @property
    def gop_size(self) -> int:
        """Nominal GOP length: the setting for transcoded videos, the longest GOP otherwise."""
        if self.canonical is not None and self.canonical.settings is not None:
            return self.canonical.settings.gop
        starts = self.scan.gop_starts + [self.scan.num_frames]
        return max(b - a for a, b in zip(starts, starts[1:], strict=False))

    def plan_gop(self, fusion: int) -> int:
        """The GOP the plan rules apply to.

        A transcoded stream has the GOP the user chose, so ``fusion`` must divide it. The input's
        own stream (``--no-transcode``) may have GOPs of any length: its longest GOP is rounded
        up to a multiple of ``fusion``.
        """
        if self.canonical is not None and self.canonical.settings is not None:
            return self.canonical.settings.gop
        if isinstance(fusion, int) and fusion >= 1:
            return math.ceil(self.gop_size / fusion) * fusion
        return self.gop_size  # an invalid fusion: check_plan_options says why

    def plan(self, fusion: int = 30, keyframes_per_gop: int = 1, max_gops: int = MAX_GOPS) -> TokenPlan:
        """The CoPE plan; ``ValueError`` (one line, ``check_plan_options``) for invalid options."""
        return cope_plan(
            self.scan.num_frames,
            self.scan.gop_starts,
            self.plan_gop(fusion),
            fusion,
            keyframes_per_gop,
            max_gops,
            self.keyframe_cuts,
        )

    def standard_plans(self, fusion: int = 30) -> dict[str, TokenPlan]:
        """dense64 and cope_k1/k2/k4; a K that does not divide the GOP's slots is left out."""
        scan = self.scan
        return standard_plans(
            scan.num_frames, scan.gop_starts, self.plan_gop(fusion), fusion, self.keyframe_cuts
        )

    def entries(
        self, plan: TokenPlan, with_rgb: bool = False, progress: bool = False
    ) -> Iterator[IFrame | PFrame]:
        """Yield the plan's I-frames (RGB) and P-frames (MV + residual) in temporal order.

        ``with_rgb`` also attaches each P-frame's decoded RGB frame (stage-1 pre-training targets).
        ``self.workers`` GOPs are decoded at once (``parallel.ordered_outputs``); the entries are
        the same, in the same order, for any number of workers.
        """
        wanted = {e.index: e for e in plan.entries}
        bounds = self.scan.gop_starts + [self.scan.num_frames]
        total = sum(bounds[g + 1] - bounds[g] for g in plan.gops)
        with tqdm(total=total, unit="frame", desc="extract", disable=not progress, leave=False) as bar:
            jobs = [functools.partial(self.gop_entries, gop, wanted, with_rgb, bar) for gop in plan.gops]
            yield from ordered_outputs(jobs, self.workers)

    def gop_entries(
        self, gop: int, wanted: dict[int, PlanEntry], with_rgb: bool = False, bar: tqdm | None = None
    ) -> Iterator[IFrame | PFrame]:
        """The entries of ``wanted`` that fall in GOP ``gop``, decoding that GOP alone."""
        height, width = self.info.height, self.info.width
        accumulator = MotionAccumulator(height, width)
        reference_rgb = previous = reference_index = None
        broken = False  # a frame since the last entry was lost: the motion chain has a hole
        for frame in self.reader.gop_frames(gop):
            if bar is not None:
                bar.update(1)
            if previous is not None and frame.index != previous.index + 1:
                broken = True
            entry = wanted.get(frame.index)
            fused = entry is not None and entry.kind == "P" and entry.ref_index != frame.index - 1
            if frame.motion is not None and (entry is None or fused):  # P-frames carry motion
                accumulator.add(frame.motion.blocks())
            if entry is None:
                previous = frame
                continue
            rgb = frame.rgb()
            if entry.kind == "I":
                yield IFrame(frame.index, frame.pts, frame.gop, rgb)
            elif (
                broken
                or reference_index is None
                or reference_index != entry.ref_index
                or reference_rgb is None
                or previous is None
            ):
                pass  # its reference or a frame in between was lost: no honest Δ exists
            else:
                if fused:
                    mv, intra = accumulator.dense(), None
                    residual = fused_residual(rgb, reference_rgb, mv)
                else:
                    mv, residual = exact_residual(frame, previous)
                    intra = frame.motion.intra.copy() if frame.motion is not None else None
                kept_rgb = rgb if with_rgb else None
                yield PFrame(
                    frame.index, reference_index, frame.pts, frame.gop, mv, residual, kept_rgb, intra
                )
            reference_rgb, reference_index, previous, broken = rgb, frame.index, frame, False
            accumulator.reset()

    def gops(self, plan: TokenPlan, with_rgb: bool = False, progress: bool = False) -> Iterator[Gop]:
        """The plan's entries grouped by GOP (one GOP in memory at a time)."""
        current: Gop | None = None
        for entry in self.entries(plan, with_rgb, progress):
            if current is None or entry.gop != current.index:
                if current is not None:
                    yield current
                current = Gop(entry.gop, self.scan.gop_starts[entry.gop], [])
            current.entries.append(entry)
        if current is not None:
            yield current

    def read_frames(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the RGB frames at the given display indices (the dense baseline's input)."""
        wanted = set(indices)
        starts = np.asarray(self.scan.gop_starts)
        gops = {int(np.searchsorted(starts, i, side="right") - 1) for i in wanted}
        for frame in self.reader.frames(gops):
            if frame.index in wanted:
                yield frame.index, frame.rgb()

    def dense_frames(self, num_samples: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        return self.read_frames(dense_frame_indices(self.scan.num_frames, num_samples))


def open_video(
    path: str | Path,
    settings: CanonicalSettings | None = None,
    no_transcode: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    workers: int | None = None,
    adaptive_keyframes: bool = False,
) -> CodecVideo:
    """Open a video for extraction: the stream ``settings.codec`` picks, transcoded if canonical.

    ``native`` reads the source's own H.264 / MPEG-4 stream (``cope.codec.native``) and raises
    ``NativeUnsupported`` (a ``CopeInputError``) for others; ``auto`` transcodes those instead.
    With ``no_transcode`` the input's own stream is read by the canonical reader; it must be
    MPEG-4 Part 2 with I- and P-frames only and half-pel motion, else ``CopeInputError`` explains
    why. ``workers``: GOPs decoded at once by ``entries`` (default: the available cores).
    ``adaptive_keyframes``: a scene cut inside a GOP (``StreamScan.scene_cuts``) starts a new
    keyframe in the plans, so no Δ-frame spans it.
    """
    settings = settings or CanonicalSettings()
    settings.validate()
    if no_transcode:
        reader = CanonicalReader(path)
        return CodecVideo(reader, reader.scan().info, None, workers, adaptive_keyframes)
    if settings.codec != "canonical":
        from cope.codec.native import NativeReader, NativeUnsupported, NativeVideo

        try:
            return NativeVideo(NativeReader(path, settings), workers, adaptive_keyframes)
        except NativeUnsupported:
            if settings.codec == "native":
                raise
    canonical = transcode(path, settings, cache_dir, progress=progress)
    reader = CanonicalReader(canonical.path)
    return CodecVideo(reader, canonical.source, canonical, workers, adaptive_keyframes)
