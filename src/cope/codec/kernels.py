"""Compiled versions of the codec's per-frame hot loops (numba).

Extraction runs three small array jobs on every decoded P-frame: arranging FFmpeg's exported
vectors per macroblock, composing them into the accumulated motion field, and — once per fused
Δ-frame — warping the reference frame for the fused residual. In numpy each is a dozen calls on
small arrays, and the call overhead, not the arithmetic, sets the pace (about 0.5 ms per frame,
against 0.1 ms for decoding it). Here each is one compiled loop. Native mode (``native.py``)
adds a fourth on each of the source's P-frames: finding which earlier frame each block's vector
points into.

The numpy functions they replace stay in ``residual.py``, ``fusion.py`` and ``native.py`` as the
reference: the
tests check that both give the same result, bit for bit (the arithmetic is the same float32
operations in the same order, without fused multiply-adds). ``ENABLED`` is False without numba
or with ``COPE_NUMPY_CODEC=1`` in the environment, and the callers then use the reference.
Compiled code is cached on disk (``cache=True``): the first extraction of a fresh install
compiles for about a second, later processes load it.
"""

from __future__ import annotations

import os

import numpy as np

try:
    import numba
except ImportError:  # the numpy reference path serves
    numba = None  # type: ignore[assignment]

ENABLED = numba is not None and os.environ.get("COPE_NUMPY_CODEC", "") != "1"


def _jit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_jit
def arrange_macroblocks(source, size, dst_x, dst_y, motion_x, motion_y, mb_rows, mb_cols):
    """``residual.macroblock_motion`` on the exported fields: (mv8, intra, four_mv).

    16×16 blocks are written first, then 8×8 ones, each in export order (a later vector for the
    same slot wins), exactly as the reference's two fancy assignments do.
    """
    mv8 = np.zeros((mb_rows, mb_cols, 4, 2), dtype=np.int32)
    covered = np.zeros((mb_rows, mb_cols, 4), dtype=np.bool_)
    four_mv = np.zeros((mb_rows, mb_cols), dtype=np.bool_)
    for block in (16, 8):
        for k in range(source.shape[0]):
            if source[k] >= 0 or size[k] != block:
                continue
            x0 = np.int32(dst_x[k]) - block // 2
            y0 = np.int32(dst_y[k]) - block // 2
            if x0 < 0 or y0 < 0 or x0 >= mb_cols * 16 or y0 >= mb_rows * 16:
                continue
            mb_y, mb_x = y0 // 16, x0 // 16
            first, last = 0, 4  # a 16×16 block fills all four 8×8 slots
            if block == 8:
                first = ((y0 % 16) // 8) * 2 + (x0 % 16) // 8
                last = first + 1
                four_mv[mb_y, mb_x] = True
            for quadrant in range(first, last):
                mv8[mb_y, mb_x, quadrant, 0] = motion_x[k]
                mv8[mb_y, mb_x, quadrant, 1] = motion_y[k]
                covered[mb_y, mb_x, quadrant] = True
    intra = np.zeros((mb_rows, mb_cols), dtype=np.bool_)
    for y in range(mb_rows):
        for x in range(mb_cols):
            if not (covered[y, x, 0] and covered[y, x, 1] and covered[y, x, 2] and covered[y, x, 3]):
                intra[y, x] = True
                four_mv[y, x] = False
                mv8[y, x, :, :] = 0
    return mv8, intra, four_mv


@_jit
def _round_half_even(value):
    """``np.rint`` of one float, inline (the libm call dominated the loop)."""
    low = np.floor(value)
    rest = value - low
    if rest > 0.5 or (rest == 0.5 and low % 2 == 1):
        low += 1
    return int(low)


@_jit
def compose_cells(field, vectors, intra, cell):
    """``MotionAccumulator.add``: A_t(p) = m_t(p) + A_{t−1}(p + m_t(p)) on the cell grid.

    ``field`` (rows, cols, 2) float32 accumulated motion; ``vectors`` (rows8, cols8, 2) float32
    pixels and ``intra`` (rows8, cols8) bool the frame's motion per 8×8 block (``BlockMotion``).
    Returns the new field; intra blocks restart at 0.
    """
    rows, cols = field.shape[0], field.shape[1]
    out = np.empty_like(field)
    per8 = 8 // cell
    centre = np.float32((cell - 1) / 2.0)
    inverse = np.float32(1.0 / cell)  # cell divides 8: a power of two, so this is exact division
    for r in range(rows):
        for c in range(cols):
            block_y, block_x = r // per8, c // per8
            if intra[block_y, block_x]:
                out[r, c, 0] = 0.0
                out[r, c, 1] = 0.0
                continue
            mx = vectors[block_y, block_x, 0]
            my = vectors[block_y, block_x, 1]
            # Where the cell centre came from, as the nearest cell (round half to even, as np.rint).
            src_y = _round_half_even((np.float32(r * cell) + centre + my - centre) * inverse)
            src_x = _round_half_even((np.float32(c * cell) + centre + mx - centre) * inverse)
            src_y = min(max(src_y, 0), rows - 1)
            src_x = min(max(src_x, 0), cols - 1)
            out[r, c, 0] = mx + field[src_y, src_x, 0]
            out[r, c, 1] = my + field[src_y, src_x, 1]
    return out


@_jit
def fused_residual(current, reference, field):
    """``fusion.fused_residual``: current − round(bilinear warp of reference at p + field(p)).

    ``current`` / ``reference`` (H, W, C) uint8, ``field`` (H, W, 2) float32 → (H, W, C) int16.
    """
    h, w, channels = reference.shape
    out = np.empty((h, w, channels), dtype=np.int16)
    one = np.float32(1.0)
    for i in range(h):
        for j in range(w):
            y = np.float32(i) + field[i, j, 1]
            x = np.float32(j) + field[i, j, 0]
            y0, x0 = np.floor(y), np.floor(x)
            wy, wx = y - y0, x - x0
            top_row = min(max(int(y0), 0), h - 1)
            bottom_row = min(max(int(y0) + 1, 0), h - 1)
            left = min(max(int(x0), 0), w - 1)
            right = min(max(int(x0) + 1, 0), w - 1)
            for k in range(channels):
                top = (
                    np.float32(reference[top_row, left, k]) * (one - wx)
                    + np.float32(reference[top_row, right, k]) * wx
                )
                bottom = (
                    np.float32(reference[bottom_row, left, k]) * (one - wx)
                    + np.float32(reference[bottom_row, right, k]) * wx
                )
                predicted = np.int16(np.rint(top * (one - wy) + bottom * wy))
                out[i, j, k] = np.int16(current[i, j, k]) - predicted
    return out


@_jit
def nearest_references(current, candidates, quarter, intra):
    """``native.nearest_references_reference``: per 8×8 block, the candidate frame its vector
    points into, judged by how well the bilinear prediction there matches the block.

    ``current`` (H, W) uint8 luma; ``candidates`` (R, H, W) uint8 luma, the preferred one first;
    ``quarter`` (rows8, cols8, 2) int32 vectors in quarter pixels; ``intra`` (rows8, cols8) bool.
    Returns (rows8, cols8) int64 candidate indices. The sums are integers (16 × pixel values) over
    the 16 odd-offset pixels of a block, so both versions agree exactly; ties keep the earlier.
    """
    count, h, w = candidates.shape
    rows8, cols8 = quarter.shape[0], quarter.shape[1]
    best = np.zeros((rows8, cols8), dtype=np.int64)
    if count < 2:
        return best
    for by in range(rows8):
        for bx in range(cols8):
            qx, qy = quarter[by, bx, 0], quarter[by, bx, 1]
            if intra[by, bx] or (qx == 0 and qy == 0):
                continue
            ix, iy, fx, fy = qx >> 2, qy >> 2, qx & 3, qy & 3
            best_sad = np.int64(-1)
            for r in range(count):
                sad = np.int64(0)
                for sy in range(1, 8, 2):
                    y = by * 8 + sy
                    if y >= h:
                        break
                    y0 = min(max(y + iy, 0), h - 1)
                    y1 = min(max(y + iy + 1, 0), h - 1)
                    for sx in range(1, 8, 2):
                        x = bx * 8 + sx
                        if x >= w:
                            break
                        x0 = min(max(x + ix, 0), w - 1)
                        x1 = min(max(x + ix + 1, 0), w - 1)
                        predicted = (
                            (4 - fx) * (4 - fy) * np.int64(candidates[r, y0, x0])
                            + fx * (4 - fy) * np.int64(candidates[r, y0, x1])
                            + (4 - fx) * fy * np.int64(candidates[r, y1, x0])
                            + fx * fy * np.int64(candidates[r, y1, x1])
                        )
                        sad += abs(16 * np.int64(current[y, x]) - predicted)
                if best_sad < 0 or sad < best_sad:
                    best_sad = sad
                    best[by, bx] = r
    return best


@_jit
def arrange_blocks(source, width, height, dst_x, dst_y, motion_x, motion_y, motion_scale, rows8, cols8):
    """``native.block_motion_reference`` on the exported fields: (vectors, intra) per 8×8 block.

    The four 8×8 quarters are written one after the other (top-left, top-right, bottom-left,
    bottom-right), each over the vectors in export order, as the reference's assignments are.
    """
    vectors = np.zeros((rows8, cols8, 2), dtype=np.float32)
    covered = np.zeros((rows8, cols8), dtype=np.bool_)
    for quarter in range(4):
        dy, dx = (quarter // 2) * 8, (quarter % 2) * 8
        for k in range(source.shape[0]):
            if source[k] >= 0 or dy >= height[k] or dx >= width[k]:
                continue
            by = (np.int64(dst_y[k]) - np.int64(height[k]) // 2 + dy) // 8
            bx = (np.int64(dst_x[k]) - np.int64(width[k]) // 2 + dx) // 8
            if by < 0 or by >= rows8 or bx < 0 or bx >= cols8:
                continue
            scale = np.float32(motion_scale[k])
            vectors[by, bx, 0] = np.float32(motion_x[k] / scale)
            vectors[by, bx, 1] = np.float32(motion_y[k] / scale)
            covered[by, bx] = True
    return vectors, ~covered
