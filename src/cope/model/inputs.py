"""One video's sampled frames as tensors: the hand-off from data (codec, cache) to the VideoLM.

A ``VisualInput`` holds the entries of a token plan in temporal order: RGB frames for the "I"
entries (I-frames, extra keyframes, or every frame of the dense baseline) and motion vectors +
residuals for the "P" entries. The VideoLM turns each "I" into an image-token block and each "P"
into a Δ-token block and interleaves them in ``kinds`` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cope.codec.primitives import IFrame, PFrame


@dataclass
class VisualInput:
    kinds: tuple[str, ...]  # "I" or "P" per entry, temporal order
    indices: tuple[int, ...]  # display index of each entry in the canonical stream
    frames: torch.Tensor  # (nI, H, W, 3) uint8, the "I" entries in order
    mv: torch.Tensor  # (nP, H, W, 2) float32, pixels, codec sign convention
    residual: torch.Tensor  # (nP, H, W, 3) int16, −255…255
    # The video the entries come from when they are read from a slot cache: with ``indices`` it
    # names each RGB frame, so training can reuse a frozen tower's features (``TowerFeatureMemo``).
    source: str | None = None
    # The stream's frame rate, which gives each entry's time (``times``); None = not known. Models
    # with ``CopeConfig.time_words`` need it.
    fps: float | None = None

    @property
    def times(self) -> tuple[float, ...]:
        """Each entry's time in seconds, display index / fps; () when the frame rate is not known."""
        return () if self.fps is None else tuple(index / self.fps for index in self.indices)

    @property
    def num_rgb(self) -> int:
        return self.kinds.count("I")

    @property
    def num_delta(self) -> int:
        return self.kinds.count("P")

    @classmethod
    def from_entries(
        cls, entries: Iterable[IFrame | PFrame], height: int, width: int, fps: float
    ) -> VisualInput:
        """Stack codec entries (``CodecVideo.entries(plan)``) of a ``fps`` stream into tensors."""
        kinds, indices, frames, mvs, residuals = [], [], [], [], []
        for entry in entries:
            indices.append(entry.index)
            if isinstance(entry, IFrame):
                kinds.append("I")
                frames.append(entry.rgb)
            else:
                kinds.append("P")
                mvs.append(entry.mv)
                residuals.append(entry.residual)
        return cls(
            kinds=tuple(kinds),
            indices=tuple(indices),
            frames=_stack(frames, (height, width, 3), np.uint8),
            mv=_stack(mvs, (height, width, 2), np.float32),
            residual=_stack(residuals, (height, width, 3), np.int16),
            fps=fps,
        )

    def without_deltas(self) -> VisualInput:
        """The same keyframes with the P entries dropped (the ``iframes-only`` mode)."""
        keep = [i for i, kind in enumerate(self.kinds) if kind == "I"]
        return VisualInput(
            kinds=("I",) * len(keep),
            indices=tuple(self.indices[i] for i in keep),
            frames=self.frames,
            mv=self.mv[:0],
            residual=self.residual[:0],
            source=self.source,
            fps=self.fps,
        )


def _stack(arrays: list[np.ndarray], shape: tuple[int, ...], dtype) -> torch.Tensor:
    if not arrays:
        return torch.from_numpy(np.zeros((0, *shape), dtype=dtype))
    return torch.from_numpy(np.stack(arrays).astype(dtype, copy=False))


def interleave(
    kinds: Sequence[str], image_blocks: torch.Tensor, delta_blocks: torch.Tensor | None
) -> torch.Tensor:
    """Blocks (nI, Ti, D) and (nP, Tp, D) → (nI·Ti + nP·Tp, D) in ``kinds`` order ("I"/"P")."""
    counts = {"I": 0, "P": 0}
    pieces = []
    for kind in kinds:
        blocks = image_blocks if kind == "I" else delta_blocks
        if blocks is None:
            raise ValueError("kinds name P-frames but no Δ blocks were given")
        pieces.append(blocks[counts[kind]])
        counts[kind] += 1
    if counts["I"] != image_blocks.shape[0] or counts["P"] != (
        0 if delta_blocks is None else delta_blocks.shape[0]
    ):
        raise ValueError("kinds do not match the number of image and Δ blocks")
    if not pieces:
        return image_blocks.reshape(0, image_blocks.shape[-1])
    return torch.cat(pieces)
