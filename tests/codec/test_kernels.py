"""The compiled codec kernels equal their numpy references bit for bit (real clips and random input)."""

from __future__ import annotations

import numpy as np
import pytest

from cope.codec import kernels
from cope.codec.fusion import MotionAccumulator, fused_residual_reference
from cope.codec.residual import MacroblockMotion, macroblock_motion_reference
from tests.codec.support import MV_DTYPE

pytest.importorskip("numba")


def random_vectors(rng, mb_rows: int, mb_cols: int, count: int) -> np.ndarray:
    """Exported-vector records as FFmpeg writes them, plus the awkward cases: 8×8 and 16×16 blocks
    in one macroblock, duplicates, backward vectors, blocks outside the picture, other sizes."""
    mvs = np.zeros(count, MV_DTYPE)
    size = rng.choice([16, 8, 8, 4], count)
    mvs["w"] = mvs["h"] = size
    mvs["dst_x"] = rng.integers(-8, mb_cols * 16 + 8, count) // 4 * 4 + size // 2
    mvs["dst_y"] = rng.integers(-8, mb_rows * 16 + 8, count) // 4 * 4 + size // 2
    mvs["source"] = rng.choice([-1, -1, -1, 1], count)
    mvs["motion_x"], mvs["motion_y"] = rng.integers(-64, 65, (2, count))
    mvs["motion_scale"] = 2
    return mvs


def compiled_motion(mvs, mb_rows, mb_cols) -> MacroblockMotion:
    fields = (mvs[name] for name in ("source", "w", "dst_x", "dst_y", "motion_x", "motion_y"))
    return MacroblockMotion(*kernels.arrange_macroblocks(*fields, mb_rows, mb_cols))


def assert_same_motion(a: MacroblockMotion, b: MacroblockMotion) -> None:
    for name in ("mv8", "intra", "four_mv"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("seed", range(5))
def test_arrange_macroblocks_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    mvs = random_vectors(rng, 6, 9, 200)
    assert_same_motion(compiled_motion(mvs, 6, 9), macroblock_motion_reference(mvs, 6, 9))


def test_kernels_on_a_real_clip_equal_the_reference(halfpel_clip, cache_dir):
    """Every P-frame of a real canonical stream: arrangement and accumulation, compiled and numpy."""
    from cope.codec import CanonicalSettings, open_video

    video = open_video(halfpel_clip, CanonicalSettings(width=128, height=128), cache_dir=cache_dir)
    compiled, reference = MotionAccumulator(128, 128), MotionAccumulator(128, 128)
    frames = 0
    for frame in video.reader.frames(set(range(len(video.scan.gop_starts)))):
        if frame.frame_type != "P":
            continue
        side = frame.frame.side_data.get("MOTION_VECTORS")
        mvs = side.to_ndarray() if side is not None else None
        motion = macroblock_motion_reference(mvs, 8, 8)
        if mvs is not None and len(mvs):
            assert_same_motion(compiled_motion(mvs, 8, 8), motion)
        blocks = motion.blocks()
        compiled.field = kernels.compose_cells(compiled.field, blocks.vectors, blocks.intra, compiled.cell)
        reference.add_reference(blocks)
        assert np.array_equal(compiled.field, reference.field)
        frames += 1
    assert frames >= 50 and np.abs(reference.field).max() > 10  # the test saw real, accumulated motion


@pytest.mark.parametrize("seed", range(3))
def test_compose_cells_equals_the_reference_with_intra_blocks(seed):
    rng = np.random.default_rng(seed)
    compiled, reference = MotionAccumulator(70, 100), MotionAccumulator(70, 100)  # not multiples of 16
    for _ in range(12):
        mv8 = rng.integers(-40, 41, (5, 7, 4, 2)).astype(np.int32)
        intra = rng.random((5, 7)) < 0.1
        mv8[intra] = 0
        motion = MacroblockMotion(mv8, intra, np.zeros((5, 7), bool))
        blocks = motion.blocks()
        compiled.field = kernels.compose_cells(compiled.field, blocks.vectors, blocks.intra, compiled.cell)
        reference.add_reference(blocks)
        assert compiled.field.dtype == np.float32 and np.array_equal(compiled.field, reference.field)


@pytest.mark.parametrize("half_pels", [True, False])
def test_fused_residual_equals_the_reference(half_pels):
    """Half-pel fields (what fusion produces) and arbitrary floats, reaching past the borders."""
    rng = np.random.default_rng(7)
    current, reference = rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    field = rng.uniform(-30, 30, (48, 80, 2)).astype(np.float32)
    if half_pels:
        field = np.round(field * 2) / 2
    compiled = kernels.fused_residual(current, reference, field)
    expected = fused_residual_reference(current, reference, field)
    assert compiled.dtype == np.int16 and np.array_equal(compiled, expected)
