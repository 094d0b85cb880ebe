"""A video → its visual token embeddings (T, D) in temporal order, streamed with bounded memory.

Frames are decoded one at a time by the codec engine; at most ``vision_batch_size`` RGB frames and
``delta_batch_size`` P-frames wait in memory before they are embedded, and each embedded chunk is
written into a preallocated (T, D) tensor (T is known from the plan). So memory grows with the
number of visual tokens only, not with the video's length in frames.

Modes:
* ``dense``        — ``dense_frames`` uniformly sampled RGB frames (the LLaVA-Video baseline);
* ``cope``         — K keyframes per GOP as image tokens + fused P-frames as Δ-tokens;
* ``iframes-only`` — the same keyframes, no P entries (LLaVA-Video at matched keyframes);
* ``delta-zero``   — the cope sequence with every P-frame's projected Δ-tokens set to zero
  (row newlines kept; the P-frames are not decoded and the Δ-encoder does not run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cope.codec.extract import CodecVideo, open_video
from cope.codec.primitives import IFrame, PFrame, StreamInfo
from cope.errors import CopeInputError
from cope.model.inputs import interleave
from cope.model.videolm.configuration_cope import MODES
from cope.plan import PlanEntry, TokenPlan, dense_plan


@dataclass
class EncodedVideo:
    """A video as the LLM reads it, plus what it cost to get there."""

    embeds: torch.Tensor  # (T, D) visual positions in temporal order, LLM dtype, model device
    plan: TokenPlan  # the entries embedded, in order (iframes-only: the cope plan minus P entries)
    mode: str
    stream: StreamInfo  # the canonical stream
    extract_s: float = 0.0  # codec: decoding, motion export, fusion, residuals
    transcode_s: float = 0.0  # codec: opening the video (transcode or cache lookup, header scan)
    vision_s: float = 0.0  # vision tower + projector + pooling, all RGB frames
    delta_s: float = 0.0  # Δ-encoder + projector, all P-frames

    @property
    def visual_tokens(self) -> int:
        return self.embeds.shape[0]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall clocks measure it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def mode_plan(
    video: CodecVideo, mode: str, fusion: int, keyframes_per_gop: int, max_gops: int, dense_frames: int
):
    """(plan embedded, plan decoded) for a mode. delta-zero decodes only the keyframes."""
    if mode not in MODES:
        raise CopeInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "dense":
        plan = dense_plan(video.info.frames, dense_frames, video.scan.gop_starts)
        return plan, plan
    try:
        plan = video.plan(fusion=fusion, keyframes_per_gop=keyframes_per_gop, max_gops=max_gops)
    except ValueError as exc:
        raise CopeInputError(str(exc)) from exc
    keyframes = plan.keyframes_only()
    if mode == "cope":
        return plan, plan
    if mode == "iframes-only":
        return keyframes, keyframes
    return plan, keyframes  # delta-zero


def encode_video(
    model,
    video: str | Path | CodecVideo,
    mode: str | None = None,
    *,
    keyframes_per_gop: int | None = None,
    fusion: int | None = None,
    max_gops: int | None = None,
    dense_frames: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> EncodedVideo:
    """Decode, sample and embed a video under ``mode`` (default: the model's)."""
    config = model.config
    mode = mode or config.mode
    opened = time.perf_counter()
    if not isinstance(video, CodecVideo):
        video = open_video(video, config.canonical, cache_dir=cache_dir, progress=progress)
    transcode_s = time.perf_counter() - opened
    plan, decoded_plan = mode_plan(
        video,
        mode,
        fusion or config.fusion,
        keyframes_per_gop or config.keyframes_per_gop,
        max_gops or config.max_gops,
        dense_frames or config.dense_frames,
    )
    if mode == "cope" and plan.delta_frames and model.delta_encoder is None:
        raise CopeInputError(
            f"{model.name}: this model has no Δ-encoder; read the video in mode dense, iframes-only or delta-zero"
        )
    encoder = _StreamingEncoder(model, plan, video.info.fps, zero_deltas=mode == "delta-zero")
    start = time.perf_counter()
    with torch.inference_mode():
        entries: Iterator[IFrame | PFrame | PlanEntry]
        if mode == "dense":
            entries = (
                IFrame(index, index / video.info.fps, 0, rgb)
                for index, rgb in video.dense_frames(dense_frames or config.dense_frames)
            )
        else:
            entries = video.entries(decoded_plan)
        with tqdm(
            total=len(plan.entries), unit="frame", desc="encode", disable=not progress, leave=False
        ) as bar:
            for entry in _with_zeroed_deltas(plan, entries) if mode == "delta-zero" else entries:
                encoder.add(entry)
                bar.update(1)
        embeds = encoder.finish()
    synchronize(model.device)
    total = time.perf_counter() - start
    return EncodedVideo(
        embeds=embeds,
        plan=plan,
        mode=mode,
        stream=video.info,
        extract_s=max(total - encoder.vision_s - encoder.delta_s, 0.0),
        transcode_s=transcode_s,
        vision_s=encoder.vision_s,
        delta_s=encoder.delta_s,
    )


def _with_zeroed_deltas(plan: TokenPlan, keyframes):
    """The plan's entries in order: decoded keyframes, and the P entries themselves (to be zeroed)."""
    decoded = iter(keyframes)
    for entry in plan.entries:
        yield next(decoded) if entry.kind == "I" else entry


class _StreamingEncoder:
    """Collects entries, embeds them in chunks, writes the blocks into one preallocated tensor."""

    def __init__(self, model, plan: TokenPlan, fps: float, zero_deltas: bool):
        self.model = model
        self.fps = fps  # display index / fps = an entry's time (CopeConfig.time_words)
        self.last_time: float | None = None  # the time of the last entry stamped (time_words)
        self.zero_deltas = zero_deltas
        self.layout = model.config.layout
        total = plan.tokens(self.layout)
        self.embeds = torch.empty(total, model.hidden_size, device=model.device, dtype=model.dtype)
        self.filled = 0
        self.pending: list[IFrame | PFrame | PlanEntry] = []
        self.pending_rgb = self.pending_delta = 0
        self.vision_s = self.delta_s = 0.0

    def add(self, entry: IFrame | PFrame | PlanEntry) -> None:
        self.pending.append(entry)
        if isinstance(entry, IFrame):
            self.pending_rgb += 1
        else:
            self.pending_delta += 1
        config = self.model.config
        if self.pending_rgb >= config.vision_batch_size or self.pending_delta >= config.delta_batch_size:
            self._flush()

    def finish(self) -> torch.Tensor:
        self._flush()
        if self.filled != self.embeds.shape[0]:
            raise RuntimeError(
                f"embedded {self.filled} visual positions, the plan has {self.embeds.shape[0]}"
            )
        return self.embeds

    def _flush(self) -> None:
        if not self.pending:
            return
        model = self.model
        kinds = ["I" if isinstance(e, IFrame) else "P" for e in self.pending]
        rgb = [e.rgb for e in self.pending if isinstance(e, IFrame)]
        deltas = [e for e in self.pending if isinstance(e, PFrame)]  # PlanEntry: a P to zero
        image_blocks = self._timed("vision_s", model.image_tokens, _stack(rgb, np.uint8))
        delta_blocks = None
        if self.zero_deltas:
            delta_blocks = model.zero_delta_tokens(kinds.count("P"))
        elif deltas:
            mv = _stack([e.mv for e in deltas], np.float32)
            residual = _stack([e.residual for e in deltas], np.float32)
            delta_blocks = self._timed("delta_s", model.delta_tokens, mv, residual)
        block = interleave(kinds, image_blocks, delta_blocks)  # (n, D)
        if model.config.time_words:
            times = [e.index / self.fps for e in self.pending]
            block = block + model.time_stamps(kinds, times, before=self.last_time)
            self.last_time = times[-1]
        self.embeds[self.filled : self.filled + block.shape[0]] = block
        self.filled += block.shape[0]
        self.pending, self.pending_rgb, self.pending_delta = [], 0, 0

    def _timed(self, field: str, fn, *args):
        if not args[0].shape[0]:
            return fn(*args)
        synchronize(self.model.device)
        start = time.perf_counter()
        out = fn(*args)
        synchronize(self.model.device)
        setattr(self, field, getattr(self, field) + time.perf_counter() - start)
        return out


def _stack(arrays: list[np.ndarray], dtype) -> torch.Tensor:
    if not arrays:
        return torch.zeros(0, 1, 1, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays).astype(dtype, copy=False))


def encode_source_frames(model, path: str | Path, num_samples: int | None = None) -> EncodedVideo:
    """Dense mode read straight from the input file: no canonical stream, no transcode.

    ``num_samples`` uniformly spaced frames (default: the model's ``dense_frames``) are sought and
    decoded from the input's own stream at the canonical times and size
    (``cope.codec.source``), the way a dense baseline that has never seen the video gets its
    frames. ``extract_s`` is that decoding; ``stream`` describes the canonical sampling grid (its
    GOPs and frame types are not scanned: 0).
    """
    from cope.codec.source import SourceFrames

    config = model.config
    start = time.perf_counter()
    with SourceFrames(path, config.canonical) as source:
        total = source.frames
        plan = dense_plan(total, num_samples or config.dense_frames)
        encoder = _StreamingEncoder(model, plan, config.canonical.fps, zero_deltas=False)
        with torch.inference_mode():
            for index, rgb in source.read([entry.index for entry in plan.entries]):
                encoder.add(IFrame(index, index / config.canonical.fps, 0, rgb))
            embeds = encoder.finish()
    synchronize(model.device)
    elapsed = time.perf_counter() - start
    canonical = config.canonical
    grid = StreamInfo(
        "source", canonical.width, canonical.height, canonical.fps, total, total / canonical.fps, 0
    )
    return EncodedVideo(
        embeds=embeds,
        plan=plan,
        mode="dense",
        stream=grid,
        extract_s=max(elapsed - encoder.vision_s, 0.0),
        vision_s=encoder.vision_s,
    )
