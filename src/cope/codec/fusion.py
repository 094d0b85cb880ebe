"""P-frame fusion: motion and residual of frame t against frame t−s (paper §3.2, "P-frame fusion").

Every pixel of frame t is traced back through the s per-frame warps to the place in frame t−s it
came from (CoViAR's accumulation). With A the accumulated field and m the frame's own field, in
the contract's sign (pixel p comes from p + m(p) of the previous frame):

    A_t(p) = m_t(p) + A_{t−1}(p + m_t(p))

Vectors are added exactly (half-pel values are exact in float32), so there is no integer drift;
only the *lookup* of A_{t−1} is quantised, to a grid of ``cell``×``cell`` pixels. Codec vectors are
constant over 8×8 or 16×16 blocks, so this only moves motion boundaries by at most cell/2 pixels,
while making a frame's update ~16× cheaper than per pixel (it runs on every decoded P-frame).
The accumulated residual is then frame t minus frame t−s sampled (bilinearly) at p + A_t(p).

Intra-coded blocks have no vector: they restart the trace (A = 0, "same place as before").

Fusion reads motion per 8×8 luma block (``BlockMotion``), the finest grid FFmpeg exports for any
codec: MPEG-4 (``MacroblockMotion.blocks``) and H.264's 16×16 … 8×8 partitions (``native.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cope.codec import kernels

MOTION_CELL = 4  # pixels; divides 8, so a cell never straddles two codec blocks


@dataclass
class BlockMotion:
    """One frame's motion per 8×8 luma block, relative to the previous frame of the chain."""

    vectors: np.ndarray  # (rows8, cols8, 2) float32 pixels (dx, dy), contract sign
    intra: np.ndarray  # (rows8, cols8) bool: no vector, the trace restarts here


class MotionAccumulator:
    """Composes per-frame block motion into motion relative to the last reset frame."""

    def __init__(self, height: int, width: int, cell: int = MOTION_CELL):
        if 8 % cell:
            raise ValueError(f"cell {cell} must divide 8")
        self.height, self.width, self.cell = height, width, cell
        self.rows, self.cols = -(-height // cell), -(-width // cell)
        # Cell centres in pixels, (rows, cols).
        centre = (cell - 1) / 2.0
        self.centre_y = (np.arange(self.rows, dtype=np.float32) * cell + centre)[:, None]
        self.centre_x = (np.arange(self.cols, dtype=np.float32) * cell + centre)[None, :]
        self.field = np.zeros((self.rows, self.cols, 2), dtype=np.float32)
        self.steps = 0

    def reset(self) -> None:
        """Start accumulating against the current frame (it becomes the reference)."""
        self.field[:] = 0.0
        self.steps = 0

    def add(self, motion: BlockMotion) -> None:
        """Compose one more frame (its motion is relative to the previous frame of the chain).

        Runs the compiled ``kernels.compose_cells`` where numba is installed, else ``add_reference``.
        """
        if kernels.ENABLED:
            self.field = kernels.compose_cells(self.field, motion.vectors, motion.intra, self.cell)
            self.steps += 1
        else:
            self.add_reference(motion)

    def add_reference(self, motion: BlockMotion) -> None:
        """``add`` in numpy: the reference the compiled kernel is tested against."""
        per_block = 8 // self.cell
        m = np.repeat(np.repeat(motion.vectors, per_block, 0), per_block, 1)[: self.rows, : self.cols]
        # Where each cell centre came from in the previous frame, as the nearest cell index.
        src_y = np.rint((self.centre_y + m[..., 1] - (self.cell - 1) / 2.0) / self.cell).astype(np.int64)
        src_x = np.rint((self.centre_x + m[..., 0] - (self.cell - 1) / 2.0) / self.cell).astype(np.int64)
        np.clip(src_y, 0, self.rows - 1, out=src_y)
        np.clip(src_x, 0, self.cols - 1, out=src_x)
        field = m + self.field[src_y, src_x]
        if motion.intra.any():
            intra = np.repeat(np.repeat(motion.intra, per_block, 0), per_block, 1)
            field[intra[: self.rows, : self.cols]] = 0.0
        self.field = field
        self.steps += 1

    def dense(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The accumulated field per pixel, (H, W, 2) float32, contract sign.

        By default at the frame's own size. ``height`` × ``width`` resamples it for an output frame
        of that size (native mode: the source's frame scaled to the canonical size): each output
        pixel takes the cell under its centre, and the vectors are scaled to output pixels.
        """
        if height is None or width is None or (height, width) == (self.height, self.width):
            field = np.repeat(np.repeat(self.field, self.cell, axis=0), self.cell, axis=1)
            return np.ascontiguousarray(field[: self.height, : self.width])
        rows = ((np.arange(height) + 0.5) * (self.height / height)).astype(np.int64) // self.cell
        cols = ((np.arange(width) + 0.5) * (self.width / width)).astype(np.int64) // self.cell
        field = self.field[np.minimum(rows, self.rows - 1)[:, None], np.minimum(cols, self.cols - 1)[None, :]]
        scale = np.array([width / self.width, height / self.height], dtype=np.float32)
        return np.ascontiguousarray(field * scale)


def warp_bilinear(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W, C) at p + field(p) with bilinear weights and edge replication.

    Returns float32 (H, W, C). Half-pel positions average two or four pixels.
    """
    h, w, channels = image.shape
    y = np.arange(h, dtype=np.float32)[:, None] + field[..., 1]
    x = np.arange(w, dtype=np.float32)[None, :] + field[..., 0]
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(np.int32), x0.astype(np.int32)
    # Clamp both taps separately: outside the picture every tap reads the border pixel.
    # Rows are pre-multiplied by the width so each tap is one flat gather of C-channel pixels.
    row0, row1 = np.clip(y0, 0, h - 1) * w, np.clip(y0 + 1, 0, h - 1) * w
    col0, col1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    pixels = image.reshape(h * w, channels)

    def tap(rows, cols):
        return pixels.take(rows + cols, axis=0).astype(np.float32)

    top = tap(row0, col0) * (1 - wx) + tap(row0, col1) * wx
    bottom = tap(row1, col0) * (1 - wx) + tap(row1, col1) * wx
    return top * (1 - wy) + bottom * wy


def fused_residual(current_rgb: np.ndarray, reference_rgb: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Frame t minus frame t−s warped by the accumulated field: (H, W, 3) int16 in −255…255.

    Runs the compiled ``kernels.fused_residual`` where numba is installed, else the reference.
    """
    if kernels.ENABLED:
        return kernels.fused_residual(
            current_rgb, reference_rgb, np.ascontiguousarray(field, dtype=np.float32)
        )
    return fused_residual_reference(current_rgb, reference_rgb, field)


def fused_residual_reference(
    current_rgb: np.ndarray, reference_rgb: np.ndarray, field: np.ndarray
) -> np.ndarray:
    """``fused_residual`` in numpy (``warp_bilinear``): the reference of the compiled kernel."""
    predicted = np.rint(warp_bilinear(reference_rgb, field)).astype(np.int16)
    return current_rgb.astype(np.int16) - predicted
