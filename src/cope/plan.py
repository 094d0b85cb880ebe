"""Sampling plans and token accounting: which frames become image tokens, which become Δ-tokens.

Pure functions of the stream's frame count and GOP starts; no decoding, no torch.

Paper accounting (§3.2, App. C; ``shared/reference/paper-facts.md``):
* an RGB frame (I-frame or extra keyframe) costs 196 pooled tokens + 14 row newlines = 210;
* a fused P-frame costs 8 Δ-tokens + 2 row newlines = 10;
* the LLaVA-Video baseline samples 64 frames uniformly: 64 × 210 = 13,440 tokens.

A GOP of G frames with fusion s has G/s sampling slots at offsets 0, s, 2s, …; with K keyframes
per GOP every (G/s)/K-th slot is an RGB keyframe (slot 0 is the I-frame) and every other slot is
a P-frame fused over the s frames since the previous slot. At most 64 GOPs are used; longer videos
take 64 GOPs uniformly spread over the video, all their slots included. With adaptive keyframes a
scene cut inside a GOP starts a keyframe and the slots start again from it (``cope_plan``'s
``cuts``); in native mode every slot moves onto an I- or P-frame (``snap_to_anchors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


@dataclass(frozen=True)
class TokenLayout:
    """How many LLM positions one RGB frame and one P-frame take ("grid" layout, one newline per row).

    The paper's layout (``PAPER_LAYOUT``): an RGB frame is a 14×14 pooled grid + 14 newlines = 210,
    a P-frame is 2 rows of 4 Δ-tokens (4 motion, 4 residual) + 2 newlines = 10. Small models may
    pool to a smaller grid; their config carries their own layout.
    """

    image_side: int = 14  # pooled grid side: ceil(vision grid / 2), 27 → 14 for SigLIP-384/14
    delta_rows: int = 2
    delta_cols: int = 4

    @property
    def iframe_tokens(self) -> int:
        return self.image_side * (self.image_side + 1)

    @property
    def pframe_tokens(self) -> int:
        return self.delta_rows * (self.delta_cols + 1)

    @property
    def delta_tokens(self) -> int:
        """Δ-tokens the encoder emits per P-frame (without newlines)."""
        return self.delta_rows * self.delta_cols


PAPER_LAYOUT = TokenLayout()
IFRAME_TOKENS = PAPER_LAYOUT.iframe_tokens  # 196 pooled SigLIP tokens + 14 row newlines = 210
PFRAME_TOKENS = PAPER_LAYOUT.pframe_tokens  # 8 Δ-tokens as 2 rows of 4 + 2 row newlines = 10
DENSE_FRAMES = 64  # LLaVA-Video-7B's frame count
MAX_GOPS = 64  # paper: 1 FPS up to 64 GOPs (512 s), uniform GOP sampling beyond
DEFAULT_FUSION = 30  # paper: s = 30 frames → 1 effective FPS at 30 FPS


class Mode(StrEnum):
    """How a VideoLM reads a video (each value is also the CLI's and the API's spelling)."""

    COPE = "cope"  # K keyframes per GOP as image tokens + fused P-frames as Δ-tokens
    IFRAMES_ONLY = "iframes-only"  # the same keyframes, no Δ-tokens (paper H.4)
    DENSE = "dense"  # uniformly sampled RGB frames only (LLaVA-Video's baseline)
    DELTA_ZERO = "delta-zero"  # cope's layout with every Δ-token zeroed (paper H.3)


MODES = tuple(mode.value for mode in Mode)


class FrameKind(StrEnum):
    """What a sampled frame becomes: image tokens ("I") or Δ-tokens ("P")."""

    I = "I"  # noqa: E741 - the codec's own name for the frame type
    P = "P"


@dataclass(frozen=True)
class PlanEntry:
    """One sampled frame. ``kind`` "I" → image tokens; "P" → Δ-tokens against ``ref_index``."""

    kind: FrameKind
    index: int
    gop: int
    ref_index: int | None = None


@dataclass(frozen=True)
class TokenPlan:
    """An ordered list of sampled frames and what they cost in visual tokens."""

    entries: tuple[PlanEntry, ...]

    @property
    def rgb_frames(self) -> int:
        return sum(e.kind == "I" for e in self.entries)

    @property
    def delta_frames(self) -> int:
        return sum(e.kind == "P" for e in self.entries)

    @property
    def visual_tokens(self) -> int:
        """Visual tokens under the paper's layout (210 per RGB frame, 10 per P-frame)."""
        return self.tokens(PAPER_LAYOUT)

    def tokens(self, layout: TokenLayout) -> int:
        """Visual tokens under a model's own layout."""
        return self.rgb_frames * layout.iframe_tokens + self.delta_frames * layout.pframe_tokens

    @property
    def gops(self) -> list[int]:
        return sorted({e.gop for e in self.entries})

    def keyframes_only(self) -> TokenPlan:
        """The same plan without its P entries (the ``iframes-only`` mode)."""
        return TokenPlan(tuple(e for e in self.entries if e.kind == "I"))

    def to_dict(self) -> dict:
        """The ``PLAN`` object of ``cope inspect --json``."""
        return {
            "visual_tokens": self.visual_tokens,
            "rgb_frames": self.rgb_frames,
            "delta_frames": self.delta_frames,
        }


def gop_bounds(num_frames: int, gop_starts: list[int]) -> list[tuple[int, int]]:
    """[start, end) display indices of every GOP, from the I-frame positions."""
    if num_frames <= 0 or not gop_starts or gop_starts[0] != 0:
        raise ValueError("a stream must have frames and start with an I-frame")
    ends = list(gop_starts[1:]) + [num_frames]
    return list(zip(gop_starts, ends, strict=True))


def regular_gop_starts(num_frames: int, gop_size: int) -> list[int]:
    """I-frame positions of the canonical stream: exactly every ``gop_size`` frames."""
    return list(range(0, num_frames, gop_size))


def select_gops(num_gops: int, max_gops: int = MAX_GOPS) -> list[int]:
    """All GOPs, or ``max_gops`` of them spread uniformly (first and last included)."""
    if num_gops <= max_gops:
        return list(range(num_gops))
    return sorted({int(i) for i in np.linspace(0, num_gops - 1, max_gops).round()})


def check_plan_options(gop_size: int, fusion: int, keyframes_per_gop: int) -> None:
    """The rules every plan option obeys, wherever it comes from (CLI, server, config).

    Raises ``ValueError`` with a one-line message that names no command-line flag: the CLI turns
    it into exit 2, the server into a 400. ``bool`` is refused too (``True`` is an ``int``).
    """
    for name, value in (("fusion", fusion), ("keyframes per GOP", keyframes_per_gop), ("GOP size", gop_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if fusion > gop_size:
        raise ValueError(f"fusion {fusion} is longer than the GOP of {gop_size} frames")
    if gop_size % fusion:
        raise ValueError(f"fusion {fusion} must divide the GOP size {gop_size}")
    slots = gop_size // fusion
    if slots % keyframes_per_gop:
        raise ValueError(
            f"keyframes per GOP must divide the {slots} slots of a GOP "
            f"(GOP {gop_size} / fusion {fusion}), got {keyframes_per_gop}"
        )


def delta_frames_per_gop(gop_size: int, fusion: int, keyframes_per_gop: int) -> int:
    """Δ-frames a full GOP contributes; 0 means the plan is keyframes only (worth a warning)."""
    check_plan_options(gop_size, fusion, keyframes_per_gop)
    return gop_size // fusion - keyframes_per_gop


def keyframe_spacing(gop_size: int, fusion: int, keyframes_per_gop: int) -> int:
    """Slots between two keyframes; K must divide the number of slots G/s of a full GOP."""
    check_plan_options(gop_size, fusion, keyframes_per_gop)
    return gop_size // fusion // keyframes_per_gop


def cope_plan(
    num_frames: int,
    gop_starts: list[int],
    gop_size: int,
    fusion: int = DEFAULT_FUSION,
    keyframes_per_gop: int = 1,
    max_gops: int = MAX_GOPS,
    cuts: Sequence[int] = (),
) -> TokenPlan:
    """Keyframes + fused P-frames per GOP, over at most ``max_gops`` GOPs.

    ``gop_size`` is the nominal GOP length (240 for the canonical stream); a shorter GOP (the last
    one of a video) keeps the slots that fit in it. ``cuts`` (adaptive keyframes): frames where a
    scene cut falls inside a GOP. Each starts a new keyframe, the GOP's slots start again from it,
    and no P entry reaches back across it; each cut costs one more RGB frame.
    """
    spacing = keyframe_spacing(gop_size, fusion, keyframes_per_gop)
    if max_gops < 1:
        raise ValueError(f"max GOPs must be ≥ 1, got {max_gops}")
    bounds = gop_bounds(num_frames, gop_starts)
    entries: list[PlanEntry] = []
    for gop in select_gops(len(bounds), max_gops):
        start, end = bounds[gop]
        inside = sorted(c for c in set(cuts) if start < c < end)
        for first, last in zip([start, *inside], [*inside, end], strict=True):  # shots of the GOP
            for slot, index in enumerate(range(first, last, fusion)):
                if slot % spacing == 0:
                    entries.append(PlanEntry(FrameKind.I, index, gop))
                else:
                    entries.append(PlanEntry(FrameKind.P, index, gop, ref_index=index - fusion))
    return TokenPlan(tuple(entries))


def snap_to_anchors(plan: TokenPlan, anchors: list[int], gop_starts: list[int]) -> TokenPlan:
    """The plan on a stream whose B-frames are not chained (native mode, ``cope.codec.native``).

    Every entry moves to the nearest anchor (I- or P-frame; ``anchors`` in increasing order) of its
    GOP (the earlier one of two as near), each P entry is relative to the entry before it in its
    GOP, and an entry that lands on the same anchor as the one before it is dropped (a fusion
    shorter than the anchor spacing). Every GOP starts with an I-frame, an anchor, so an entry
    always has one at or before it; the next GOP's I-frame (``gop_starts``) is never taken.
    """
    positions = np.asarray(anchors)
    starts = np.asarray(gop_starts)
    entries: list[PlanEntry] = []
    for entry in plan.entries:
        at = int(np.searchsorted(positions, entry.index, side="right"))
        index = int(positions[at - 1])  # the last anchor at or before the entry
        after = np.searchsorted(starts, entry.index, side="right")
        next_gop = int(starts[after]) if after < len(starts) else None
        if at < len(positions) and positions[at] != next_gop:
            later = int(positions[at])
            index = later if later - entry.index < entry.index - index else index
        previous = entries[-1] if entries and entries[-1].gop == entry.gop else None
        if previous is not None and previous.index == index:
            continue
        if entry.kind == FrameKind.I or previous is None:
            entries.append(PlanEntry(FrameKind.I, index, entry.gop))
        else:
            entries.append(PlanEntry(FrameKind.P, index, entry.gop, ref_index=previous.index))
    return TokenPlan(tuple(entries))


def dense_frame_indices(num_frames: int, num_samples: int = DENSE_FRAMES) -> list[int]:
    """LLaVA-Video's uniform sampling: ``np.linspace(0, N−1, n, dtype=int)``; all frames if N ≤ n."""
    if num_frames <= num_samples:
        return list(range(num_frames))
    return [int(i) for i in np.linspace(0, num_frames - 1, num_samples, dtype=int)]


def dense_plan(
    num_frames: int, num_samples: int = DENSE_FRAMES, gop_starts: list[int] | None = None
) -> TokenPlan:
    """The dense-RGB baseline: ``num_samples`` uniformly sampled frames, all as image tokens."""
    starts = np.asarray(gop_starts if gop_starts else [0])
    entries = tuple(
        PlanEntry(FrameKind.I, i, int(np.searchsorted(starts, i, side="right") - 1))
        for i in dense_frame_indices(num_frames, num_samples)
    )
    return TokenPlan(entries)


def standard_plans(
    num_frames: int,
    gop_starts: list[int],
    gop_size: int,
    fusion: int = DEFAULT_FUSION,
    cuts: Sequence[int] = (),
) -> dict:
    """The plans ``cope inspect`` reports: dense64 and CoPE at 1, 2 and 4 keyframes per GOP
    (the Ks that divide a GOP's slots), with keyframes at ``cuts`` (``cope_plan``)."""
    check_plan_options(gop_size, fusion, 1)
    plans = {"dense64": dense_plan(num_frames, DENSE_FRAMES, gop_starts)}
    for k in (1, 2, 4):
        if (gop_size // fusion) % k == 0:  # e.g. fusion 80: 3 slots per GOP, no K = 2 or 4 plan
            plans[f"cope_k{k}"] = cope_plan(num_frames, gop_starts, gop_size, fusion, k, cuts=cuts)
    return plans
