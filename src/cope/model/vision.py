"""RGB frames → the visual tokens LLaVA-Video feeds its LLM, in its "grid" layout.

LLaVA-Video-7B (its hub checkpoint's preprocessor config): frames resized to 384×384 and
normalised with mean = std = 0.5 → SigLIP with its last layer dropped (hidden state −2): 27×27 =
729 tokens × 1152 → 2-layer GELU projector → **bilinear** 2×2 pooling to ceil(27/2) = 14 per side → one learned newline after
every pooled row: 14 × (14 + 1) = 210 positions per frame. The same functions serve any SigLIP-
architecture tower (the tiny models pool 14 → 7).

Shapes: N frames, G = vision grid side, S = pooled side, d = vision width, D = LLM width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_MEAN = 0.5  # SigLIP normalisation: (x / 255 − 0.5) / 0.5
IMAGE_STD = 0.5


def frames_to_pixels(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB → (N, 3, image_size, image_size) float32, SigLIP-normalised.

    Resizing is bicubic with antialiasing in torch (the SigLIP processor resizes bicubically in
    PIL; the two agree to within rounding of 8-bit intermediate values).
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    x = x.permute(0, 3, 1, 2).float()  # (N, 3, H, W), 0–255
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True)
        x = x.clamp(0, 255)
    return (x / 255.0 - IMAGE_MEAN) / IMAGE_STD


def vision_features(
    vision_tower: torch.nn.Module, pixels: torch.Tensor, feature_layer: int = -2
) -> torch.Tensor:
    """(N, 3, S_img, S_img) → (N, G², d): one hidden state of the SigLIP tower (−2 in LLaVA-Video)."""
    out = vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[feature_layer]


def bilinear_pool(tokens: torch.Tensor) -> torch.Tensor:
    """(N, G², C) → (N, ceil(G/2)², C): LLaVA-Video's 2×2 bilinear pooling of a square token grid."""
    n, count, channels = tokens.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"expected a square token grid, got {count} tokens")
    pooled_side = math.ceil(side / 2)
    grid = tokens.view(n, side, side, channels).permute(0, 3, 1, 2)  # (N, C, G, G)
    grid = F.interpolate(grid, size=(pooled_side, pooled_side), mode="bilinear")
    return grid.permute(0, 2, 3, 1).reshape(n, pooled_side * pooled_side, channels)


def with_row_newlines(tokens: torch.Tensor, rows: int, newline: torch.Tensor) -> torch.Tensor:
    """(N, rows·cols, D) → (N, rows·(cols + 1), D): the learned newline after every row."""
    n, count, dim = tokens.shape
    cols = count // rows
    grid = tokens.view(n, rows, cols, dim)
    newlines = newline.to(tokens.dtype).view(1, 1, 1, dim).expand(n, rows, 1, dim)
    return torch.cat([grid, newlines], dim=2).reshape(n, rows * (cols + 1), dim)
