"""Stage-1 pre-training: the Δ-encoder plus the "reference" and "warped" heads (paper §3.3, App. B).

Shapes: B frame pairs, T reference/target tokens on a square grid (196 pooled or 729 full for
SigLIP-384/14), d = vision width, c = head width (= the encoder's branch width), K_τ/K_δ queries.

    Δ-tokens (B, K_τ+K_δ, d) = DeltaEncoder(mv, residual)           → motion (B,K_τ,d), residual (B,K_δ,d)
    x        (B, T, c)       = linear(reference tokens) + 2-D sin-cos positions
    enriched (B, T, c)       = reference head([x ; linear(motion tokens)])[:T]        eq. 7 ("warp")
    warped   (B, T, c)       = warped head([enriched ; linear(residual tokens)])[:T]  eq. 8 (+ residual)
    predicted (B, T, d)      = reference tokens + linear(warped)                      eq. 9
    loss                     = mean squared error(predicted, target tokens)           eq. 10

The heads predict the *change* from the reference frame's tokens: with small initial output
weights an untrained model starts at the copy-reference baseline, the thing stage 1 must beat.
After pre-training only the encoder is kept (``DeltaEncoder.from_pretrained`` on this checkpoint).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cope.hub import read_json
from cope.model.delta.configuration_delta import (
    TARGET_GRIDS,
    DeltaEncoderConfig,
    DeltaPretrainerConfig,
)
from cope.model.delta.modeling_delta import (
    CONFIG_NAME,
    DeltaEncoder,
    Transformer,
    build_from_state,
    init_linear_layers,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    sincos_positions,
)
from cope.model.vision import bilinear_pool, frames_to_pixels, vision_features


@dataclass
class DeltaPretrainerOutput:
    predicted: torch.Tensor  # (B, T, d) predicted target-frame tokens
    delta_tokens: torch.Tensor  # (B, K_τ + K_δ, d) the encoder's output
    loss: torch.Tensor | None = None  # scalar MSE against the target tokens, when given


class TokenHead(nn.Module):
    """One pre-training head: [frame tokens (B,T,c) ; Δ-tokens (B,K,c)] → transformer → (B,T,c).

    Architecturally the branch transformer of the encoder; a learned embedding per input kind
    (frame token / Δ-token) tells the two apart. One output per frame-token position.
    """

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        self.kind_embed = nn.Parameter(torch.zeros(2, config.width))  # 0: frame tokens, 1: Δ-tokens
        self.transformer = Transformer(config)

    def forward(self, frame_tokens: torch.Tensor, delta_tokens: torch.Tensor) -> torch.Tensor:
        kinds = self.kind_embed.to(frame_tokens.dtype)
        x = torch.cat([frame_tokens + kinds[0], delta_tokens + kinds[1]], dim=1)
        return self.transformer(x)[:, : frame_tokens.shape[1]]


class DeltaPretrainer(nn.Module):
    """The Δ-encoder with the reference and warped heads; computes the stage-1 loss."""

    def __init__(self, config: DeltaPretrainerConfig):
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = DeltaEncoder(enc)
        self.frame_in = nn.Linear(enc.output_dim, enc.width)  # vision tokens → head width
        self.delta_in = nn.Linear(enc.output_dim, enc.width)  # Δ-tokens → head width
        self.reference_head = TokenHead(enc)
        self.warped_head = TokenHead(enc)
        self.change_out = nn.Linear(enc.width, enc.output_dim)  # head width → change of the tokens
        for module in (self.frame_in, self.delta_in, self.reference_head, self.warped_head, self.change_out):
            init_linear_layers(module)
        nn.init.normal_(self.reference_head.kind_embed, std=0.02)
        nn.init.normal_(self.warped_head.kind_embed, std=0.02)

    def predict(
        self, mv: torch.Tensor, residual: torch.Tensor, reference_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (predicted target tokens (B, T, d), Δ-tokens (B, K_τ + K_δ, d)).

        ``reference_tokens`` (B, T, d): the frozen vision tower's tokens of the reference frame
        (frame t − s) on a square grid; ``mv``/``residual`` as ``DeltaEncoder.forward``.
        """
        enc = self.config.encoder
        delta_tokens = self.encoder(mv, residual)
        if enc.token_grid is None:
            motion_tokens, residual_tokens = delta_tokens.split(
                [enc.motion_queries, enc.residual_queries], dim=1
            )
        else:  # grid tokens carry motion and residual together: both heads read all of them
            motion_tokens = residual_tokens = delta_tokens
        side = _grid_side(reference_tokens.shape[1])
        reference = reference_tokens.to(self.frame_in.weight.dtype)
        x = self.frame_in(reference) + sincos_positions(
            side, side, enc.width, reference.device, reference.dtype
        )
        enriched = self.reference_head(x, self.delta_in(motion_tokens))  # (B, T, c)
        warped = self.warped_head(enriched, self.delta_in(residual_tokens))  # (B, T, c)
        return reference + self.change_out(warped), delta_tokens

    def forward(
        self,
        mv: torch.Tensor,
        residual: torch.Tensor,
        reference_tokens: torch.Tensor,
        target_tokens: torch.Tensor | None = None,
    ) -> DeltaPretrainerOutput:
        predicted, delta_tokens = self.predict(mv, residual, reference_tokens)
        loss = None
        if target_tokens is not None:
            if target_tokens.shape != predicted.shape:
                raise ValueError(
                    f"target tokens {tuple(target_tokens.shape)} do not match the prediction {tuple(predicted.shape)}"
                )
            loss = F.mse_loss(predicted.float(), target_tokens.float())
        return DeltaPretrainerOutput(predicted=predicted, delta_tokens=delta_tokens, loss=loss)

    def save_pretrained(
        self, directory: str | os.PathLike, overwrite: bool = False, state_dict: dict | None = None
    ) -> Path:
        """config.json + model.safetensors (``state_dict``: gathered weights to write instead)."""
        return save_checkpoint(self, self.config.to_dict(), directory, overwrite, state_dict)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> DeltaPretrainer:
        directory = resolve_checkpoint(path_or_id)
        config = DeltaPretrainerConfig.from_dict(
            read_json(directory / CONFIG_NAME), str(directory / CONFIG_NAME)
        )
        return build_from_state(cls, config, load_weights(directory), directory)


def _grid_side(count: int) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"reference tokens must form a square grid, got {count} tokens")
    return side


@torch.no_grad()
def frame_tokens(
    vision_tower: Any,  # a transformers SiglipVisionModel (its ``config`` is invisible to type checkers)
    frames: np.ndarray | torch.Tensor,
    target_grid: str = "pooled",
    feature_layer: int = -2,
) -> torch.Tensor:
    """RGB frames (N, H, W, 3) uint8 → the frozen tower's tokens the heads read and predict.

    (N, G², d) for ``target_grid="full"``; (N, ceil(G/2)², d) bilinear-pooled for "pooled" — the
    grid LLaVA-Video consumes (its projector runs before the pooling; the pre-training targets
    stay in the tower's space, so here the features themselves are pooled).
    """
    if target_grid not in TARGET_GRIDS:
        raise ValueError(f"target_grid must be one of {TARGET_GRIDS}, got {target_grid!r}")
    parameter = next(vision_tower.parameters())
    pixels = frames_to_pixels(frames, vision_tower.config.image_size).to(parameter.device, parameter.dtype)
    tokens = vision_features(vision_tower, pixels, feature_layer)
    return bilinear_pool(tokens) if target_grid == "pooled" else tokens
