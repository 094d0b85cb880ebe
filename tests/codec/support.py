"""Helpers shared by the codec tests."""

from __future__ import annotations

import numpy as np

# The record FFmpeg exports per motion vector (``MOTION_VECTORS`` side data, ``AVMotionVector``).
MV_DTYPE = np.dtype(
    [
        ("source", "<i4"),
        ("w", "u1"),
        ("h", "u1"),
        ("src_x", "<i2"),
        ("src_y", "<i2"),
        ("dst_x", "<i2"),
        ("dst_y", "<i2"),
        ("flags", "<u8"),
        ("motion_x", "<i4"),
        ("motion_y", "<i4"),
        ("motion_scale", "<u2"),
    ]
)
