"""The Δ-encoder: one (fused) P-frame's motion vectors + residual → K_τ + K_δ Δ-tokens.

Paper §3.2 and App. B. Shapes: B P-frames of H × W pixels (multiples of 16), a grid of
h × w = H/16 × W/16 cells (G = h·w), branch width c, output width d, K_τ / K_δ queries.

    mv (B,H,W,2) px ── normalise ── 16×16 patches (B,G,512) ── 2-layer MLP ──── (B,G,c) ─┐
                                                                                       + 2-D sin-cos
    residual (B,H,W,3) ── /255 ── ResNet to stride 16 (B,C,h,w) ── linear ───── (B,G,c) ─┘  positions
    each branch: [features ; K learnable queries] → PreNorm transformer → K query outputs → linear
    output: [motion tokens (B,K_τ,d) ; residual tokens (B,K_δ,d)] → (B, K_τ + K_δ, d)

The queries see where things happen through the positions added to the grid features; without
them a transformer reading a set of patches could not tell motion at the top from motion at the
bottom. With ``token_grid`` (rows, cols) there are no queries: each branch's transformer outputs
are averaged per cell of a fixed rows × cols grid, and token (i, j) = motion cell + residual cell,
(B, rows·cols, d) — each Δ-token then stands for one region of the frame (``GridCompressor``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cope.errors import CopeInputError
from cope.hub import atomic_write_text, load_safetensors, read_json, resolve_directory, save_safetensors
from cope.model.delta.configuration_delta import (
    PRETRAINER_MODEL_TYPE,
    DeltaEncoderConfig,
    DeltaPretrainerConfig,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ── building blocks shared with the pre-training heads ───────────────────────────────────────────


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence (B, L, c)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, c/heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, length, width))


class Block(nn.Module):
    """PreNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of PreNorm blocks and the final LayerNorm: (B, L, c) → (B, L, c)."""

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(config.width, config.num_heads, config.ffn_dim) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def sincos_positions(rows: int, cols: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sin-cos position codes of a rows × cols grid, row-major: (rows·cols, dim).

    Half the channels encode the row, half the column, so any grid size (any H, W) works
    without learned, size-bound parameters.
    """
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(rows, device=device, dtype=torch.float32),
        torch.arange(cols, device=device, dtype=torch.float32),
        indexing="ij",
    )
    angles_y = ys.reshape(-1, 1) * freqs  # (G, dim/4)
    angles_x = xs.reshape(-1, 1) * freqs
    codes = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return codes.to(dtype)


def init_linear_layers(module: nn.Module) -> None:
    """ViT-style init for our own linear layers: N(0, 0.02) weights, zero biases.

    Small outputs at the start matter for the pre-training heads: their prediction is the
    reference frame's tokens plus a learned change, so training starts near the copy baseline.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


# ── the two branches ─────────────────────────────────────────────────────────────────────────────


def normalize_motion(mv: torch.Tensor, config: DeltaEncoderConfig) -> torch.Tensor:
    """(B, H, W, 2) pixels → (B, H, W, 2) in [−1, 1].

    "fixed": mv / motion_max_displacement, clamped. Zero stays zero and signs are kept, so a
    2-px and a 20-px motion stay distinguishable. "minmax" (paper): per frame, the smallest of all
    dx, dy values maps to −1 and the largest to +1; absolute speed and the position of zero are
    lost. A constant field (e.g. a static frame) maps to 0.
    """
    if config.motion_norm == "fixed":
        return (mv / config.motion_max_displacement).clamp(-1.0, 1.0)
    flat = mv.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = flat.amax(dim=1).view(-1, 1, 1, 1) - low
    scaled = 2.0 * (mv - low) / span.clamp_min(1e-6) - 1.0
    return torch.where(span > 0, scaled, torch.zeros_like(mv))


class MotionEmbedding(nn.Module):
    """Normalised motion (B, H, W, 2) → 16×16 patches (B, G, 512) → shared 2-layer MLP → (B, G, c)."""

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        patch_dim = config.patch_size * config.patch_size * 2
        self.mlp = nn.Sequential(
            nn.Linear(patch_dim, config.motion_hidden_dim),
            nn.GELU(),
            nn.Linear(config.motion_hidden_dim, config.width),
        )

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        b, height, width, _ = motion.shape
        p = self.patch_size
        patches = motion.reshape(b, height // p, p, width // p, p, 2).permute(0, 1, 3, 2, 4, 5)
        return self.mlp(patches.reshape(b, (height // p) * (width // p), p * p * 2))


def resnet_config(config: DeltaEncoderConfig):
    """The transformers ``ResNetConfig`` of the residual CNN (basic blocks, as ResNet-18)."""
    from transformers import ResNetConfig

    return ResNetConfig(
        num_channels=3,
        embedding_size=config.resnet_embedding_size,
        hidden_sizes=list(config.resnet_hidden_sizes),
        depths=list(config.resnet_depths),
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
    )


class ResidualBackbone(nn.Module):
    """Truncated ResNet: (B, 3, H, W) → (B, C, H/16, W/16), all convolutions, no global pool.

    The stem (stride 4) and stages 1–3 (strides 1, 2, 2) reach stride 16. A 4th stage (ResNet-18's
    layer4) runs with stride 1 and dilation 2 instead of stride 2: it keeps the H/16 grid, keeps
    the receptive-field growth its weights were trained for, and keeps every weight of a
    pretrained ResNet-18 usable.
    """

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        from transformers import ResNetModel

        self.resnet = ResNetModel(resnet_config(config))
        self.out_channels = config.resnet_hidden_sizes[-1]
        if len(self.resnet.encoder.stages) == 4:
            _dilate_stage(self.resnet.encoder.stages[3])

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        x = self.resnet.embedder(residual)
        for stage in self.resnet.encoder.stages:
            x = stage(x)
        return x

    def load_pretrained_resnet(self, path_or_id: str | os.PathLike) -> None:
        """Copy the weights of a transformers ResNet checkpoint (e.g. ``microsoft/resnet-18``).

        Stages beyond this backbone's depth are ignored; every weight of the kept stages must be
        present with the same shape. Only safetensors checkpoints are accepted (no pickles).
        """
        from transformers import ResNetModel

        try:
            pretrained = ResNetModel.from_pretrained(str(path_or_id), use_safetensors=True)
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CopeInputError(f"{path_or_id}: cannot load a ResNet checkpoint ({first_line})") from exc
        own = self.resnet.state_dict()
        theirs = pretrained.state_dict()
        missing = sorted(k for k in own if k not in theirs)
        wrong = sorted(k for k in own if k in theirs and theirs[k].shape != own[k].shape)
        if missing or wrong:
            detail = f"missing {missing[:3]}" if missing else f"shape mismatch in {wrong[:3]}"
            raise CopeInputError(
                f"{path_or_id}: ResNet checkpoint does not fit the residual branch ({detail})"
            )
        self.resnet.load_state_dict({k: theirs[k] for k in own}, strict=True)


def _dilate_stage(stage: nn.Module) -> None:
    """Turn a stride-2 ResNet stage into stride 1 with dilation 2 (same weights)."""
    for name, module in stage.named_modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3) and not name.startswith("layers.0.layer.0"):
                # The first 3×3 conv keeps dilation 1 where the stride used to be (as torchvision's
                # replace_stride_with_dilation does); the later ones see the sparser grid.
                module.dilation = (2, 2)
                module.padding = (2, 2)


class QueryCompressor(nn.Module):
    """[features (B, G, c) ; K learnable queries] → transformer → K query outputs → (B, K, d)."""

    def __init__(self, config: DeltaEncoderConfig, num_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(num_queries, config.width))
        self.transformer = Transformer(config)
        self.proj = nn.Linear(config.width, config.output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, _ = features.shape
        queries = self.queries.to(features.dtype).expand(b, -1, -1)
        x = self.transformer(torch.cat([features, queries], dim=1))
        return self.proj(x[:, -self.queries.shape[0] :])


class GridCompressor(nn.Module):
    """features (B, G, c) on an h × w grid → transformer → average per cell of a fixed
    rows × cols grid → (B, rows·cols, d), cells in row-major order.

    Each output token stands for one region of the frame (with h = 8, w = 8 and a 2 × 4 grid: a
    4 × 2 block of 16-px cells), so the LLM can tie it to the image tokens of the same region.
    The transformer first lets every cell see the whole frame (e.g. a pan moves every cell).
    """

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        assert config.token_grid is not None
        self.grid = config.token_grid
        self.transformer = Transformer(config)
        self.proj = nn.Linear(config.width, config.output_dim)

    def forward(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = features.shape
        x = self.transformer(features).transpose(1, 2).reshape(b, c, height, width)  # (B, c, h, w)
        cells = F.adaptive_avg_pool2d(x, self.grid)  # (B, c, rows, cols)
        return self.proj(cells.flatten(2).transpose(1, 2))


# ── the encoder ──────────────────────────────────────────────────────────────────────────────────


class DeltaEncoder(nn.Module):
    """Fused P-frame primitives → Δ-tokens in the vision tower's embedding space.

    ``forward(mv, residual)``: ``mv`` (B, H, W, 2) float32 pixels (codec sign convention),
    ``residual`` (B, H, W, 3) float in −255…255; H and W multiples of 16. Returns
    (B, K_τ + K_δ, d): the K_τ motion tokens, then the K_δ residual tokens; with a
    ``token_grid`` (rows, cols): (B, rows·cols, d), one token per cell in row-major order.
    """

    def __init__(self, config: DeltaEncoderConfig):
        super().__init__()
        self.config = config
        self.motion_embed = MotionEmbedding(config)
        self.residual_backbone = ResidualBackbone(config)
        self.residual_embed = nn.Linear(self.residual_backbone.out_channels, config.width)
        self.motion_compressor: QueryCompressor | GridCompressor
        self.residual_compressor: QueryCompressor | GridCompressor
        if config.token_grid is None:
            self.motion_compressor = QueryCompressor(config, config.motion_queries)
            self.residual_compressor = QueryCompressor(config, config.residual_queries)
        else:
            self.motion_compressor = GridCompressor(config)
            self.residual_compressor = GridCompressor(config)
        for module in (
            self.motion_embed,
            self.residual_embed,
            self.motion_compressor,
            self.residual_compressor,
        ):
            init_linear_layers(module)
        for compressor in (self.motion_compressor, self.residual_compressor):
            if isinstance(compressor, QueryCompressor):
                nn.init.normal_(compressor.queries, std=0.02)

    def forward(self, mv: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        _check_primitives(mv, residual, self.config.patch_size)
        b, height, width, _ = mv.shape
        p = self.config.patch_size
        dtype = self.residual_embed.weight.dtype
        positions = sincos_positions(height // p, width // p, self.config.width, mv.device, dtype)  # (G, c)

        motion = normalize_motion(mv.float(), self.config).to(dtype)
        motion_features = self.motion_embed(motion) + positions  # (B, G, c)

        scaled = (residual.float() / self.config.residual_scale).permute(0, 3, 1, 2).to(dtype)
        grid = self.residual_backbone(scaled)  # (B, C, H/16, W/16)
        residual_features = self.residual_embed(grid.flatten(2).transpose(1, 2)) + positions  # (B, G, c)

        if self.config.token_grid is not None:
            # One token per grid cell: the cell's motion plus its residual, (B, rows·cols, d).
            h, w = height // p, width // p
            return self.motion_compressor(motion_features, h, w) + self.residual_compressor(
                residual_features, h, w
            )
        motion_tokens = self.motion_compressor(motion_features)  # (B, K_τ, d)
        residual_tokens = self.residual_compressor(residual_features)  # (B, K_δ, d)
        return torch.cat([motion_tokens, residual_tokens], dim=1)

    def load_pretrained_resnet(self, path_or_id: str | os.PathLike) -> None:
        """Initialise the residual branch's ResNet from a transformers ResNet checkpoint."""
        self.residual_backbone.load_pretrained_resnet(path_or_id)

    def save_pretrained(
        self, directory: str | os.PathLike, overwrite: bool = False, state_dict: dict | None = None
    ) -> Path:
        """config.json + model.safetensors (``state_dict``: gathered weights to write instead)."""
        return save_checkpoint(self, self.config.to_dict(), directory, overwrite, state_dict)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> DeltaEncoder:
        """Load a Δ-encoder checkpoint, or just the encoder out of a ``DeltaPretrainer`` checkpoint."""
        directory = resolve_checkpoint(path_or_id)
        data = read_json(directory / CONFIG_NAME)
        source = str(directory / CONFIG_NAME)
        if data.get("model_type") == PRETRAINER_MODEL_TYPE:
            config = DeltaPretrainerConfig.from_dict(data, source).encoder
            state = load_weights(directory)
            state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        else:
            config = DeltaEncoderConfig.from_dict(data, source)
            state = load_weights(directory)
        return build_from_state(cls, config, state, directory)


def _check_primitives(mv: torch.Tensor, residual: torch.Tensor, patch: int) -> None:
    if mv.dim() != 4 or mv.shape[-1] != 2:
        raise ValueError(f"mv must be (B, H, W, 2), got {tuple(mv.shape)}")
    if residual.shape != (*mv.shape[:3], 3):
        raise ValueError(
            f"residual must be (B, H, W, 3) matching mv {tuple(mv.shape)}, got {tuple(residual.shape)}"
        )
    if mv.shape[1] % patch or mv.shape[2] % patch:
        raise ValueError(f"H and W must be multiples of {patch}, got {mv.shape[1]}×{mv.shape[2]}")


# ── checkpoints: config.json + model.safetensors ─────────────────────────────────────────────────


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub id downloaded to the local cache."""
    directory = resolve_directory(path_or_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise CopeInputError(f"{directory}: not a checkpoint directory (no {name})")
    return directory


def save_checkpoint(
    module: nn.Module,
    config: dict,
    directory: str | os.PathLike,
    overwrite: bool,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write config.json + model.safetensors, each appearing only once complete.

    ``state_dict``: the weights to write instead of ``module``'s own (under FSDP / ZeRO-3 the module
    holds only shards; the training loop passes the gathered ones).
    """
    directory = Path(directory)
    if not overwrite and any((directory / n).exists() for n in (CONFIG_NAME, WEIGHTS_NAME)):
        raise CopeInputError(f"{directory}: already holds a checkpoint (pass overwrite=True to replace it)")
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(module.state_dict() if state_dict is None else state_dict, directory / WEIGHTS_NAME)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(directory / WEIGHTS_NAME)


def build_from_state(cls, config, state: dict[str, torch.Tensor], directory: Path):
    """Construct ``cls(config)`` without random init (meta device) and assign the saved tensors."""
    with torch.device("meta"):
        model = cls(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CopeInputError(f"{directory / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({detail})")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CopeInputError(
            f"{directory / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({exc})"
        ) from exc
    return model.eval()
