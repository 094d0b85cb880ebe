"""Configuration of the Δ-encoder and of its stage-1 pre-training model, with the named presets.

The paper (App. B) states the branch dimensions — patch 16, width d = 1152, 4 layers, 9 heads,
PreNorm, 4 + 4 queries — and also "< 15M parameters", which those dimensions cannot meet (one such
transformer alone is ~64M). ``paper`` implements the stated dimensions, ``compact`` meets the
stated size at the same output width, ``tiny`` is for tests and small VideoLMs. The unstated
choices (MLP hidden width, FFN width, positional encoding, how the ResNet reaches the H/16 grid,
input scaling) are fields here, documented in docs/delta-encoder.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cope.errors import CopeInputError

MOTION_NORMS = ("fixed", "minmax")
TARGET_GRIDS = ("pooled", "full")
ENCODER_MODEL_TYPE = "cope_delta_encoder"
PRETRAINER_MODEL_TYPE = "cope_delta_pretrainer"


@dataclass
class DeltaEncoderConfig:
    """Everything that fixes a ``DeltaEncoder``'s architecture (and so its parameter count)."""

    # d: the vision tower's hidden size. Δ-tokens come out at this width, so the VideoLM's
    # projector takes them like image tokens (1152 for SigLIP-so400m).
    output_dim: int = 1152
    # Width of the two branch transformers. Equal to output_dim in the paper; narrower in
    # ``compact``. A linear layer always maps the query outputs from width to output_dim.
    width: int = 1152
    num_layers: int = 4  # transformer blocks per branch (PreNorm)
    num_heads: int = 9  # attention heads; width must be divisible by it
    ffn_dim: int = 4608  # hidden width of each block's GELU MLP (unstated in the paper: 4 × width)
    motion_queries: int = 4  # K_τ: motion Δ-tokens per P-frame
    residual_queries: int = 4  # K_δ: residual Δ-tokens per P-frame
    patch_size: int = 16  # side of the square motion patches and of the residual feature cells
    # Hidden width of the shared two-layer patch MLP (16·16·2 = 512 → hidden → width; unstated).
    motion_hidden_dim: int = 1152
    # "fixed": mv / motion_max_displacement, clamped to [−1, 1] (keeps absolute speed and the
    # sign). "minmax": the paper's per-frame min–max map of both components to [−1, 1].
    motion_norm: str = "fixed"
    motion_max_displacement: float = 96.0  # pixels that map to ±1 under "fixed"
    residual_scale: float = 255.0  # residual / residual_scale → [−1, 1]
    # The residual CNN: transformers' ResNet (basic blocks). ResNet-18 is stem 64, widths
    # (64, 128, 256, 512), depths (2, 2, 2, 2). Stem + stages 1–3 reach stride 16; a 4th stage
    # runs at stride 1 with dilation 2 so every convolution of ResNet-18 is kept on the H/16 grid.
    resnet_embedding_size: int = 64
    resnet_hidden_sizes: tuple[int, ...] = (64, 128, 256, 512)
    resnet_depths: tuple[int, ...] = (2, 2, 2, 2)
    # None: the paper's free queries (K_τ motion + K_δ residual tokens, each query attends to the
    # whole frame). (rows, cols): one Δ-token per cell of a fixed rows × cols grid over the frame,
    # the average of the motion branch's features in that cell plus the residual branch's (the
    # query counts are then unused). A pinned token tells a small LLM *where* the motion is, which
    # free queries leave it to learn (docs/delta-encoder.md: CoPE-Tiny uses (2, 4)).
    token_grid: tuple[int, int] | None = None

    def __post_init__(self):
        self.resnet_hidden_sizes = tuple(self.resnet_hidden_sizes)
        self.resnet_depths = tuple(self.resnet_depths)
        problems = []
        if self.token_grid is not None:
            grid = tuple(self.token_grid)
            if len(grid) != 2 or min(grid) < 1:
                problems.append(f"token_grid must be two positive sizes (rows, cols), got {list(grid)}")
            else:
                self.token_grid = (int(grid[0]), int(grid[1]))
        if self.motion_norm not in MOTION_NORMS:
            problems.append(f"motion_norm must be one of {MOTION_NORMS}, got {self.motion_norm!r}")
        if self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % 4:
            problems.append(f"width {self.width} must be a multiple of 4 (2-D sin-cos positions)")
        if not 3 <= len(self.resnet_hidden_sizes) <= 4:
            problems.append("the residual ResNet needs 3 stages (stride 16) or 4 (the 4th dilated)")
        if len(self.resnet_depths) != len(self.resnet_hidden_sizes):
            problems.append("resnet_depths and resnet_hidden_sizes must have the same length")
        if self.patch_size != 16:
            # The ResNet's total stride is 16; the motion grid must match it cell for cell.
            problems.append("patch_size must be 16 (the residual ResNet's stride)")
        if self.motion_max_displacement <= 0 or self.residual_scale <= 0:
            problems.append("motion_max_displacement and residual_scale must be positive")
        if min(self.motion_queries, self.residual_queries, self.num_layers) < 1:
            problems.append("motion_queries, residual_queries and num_layers must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_delta_tokens(self) -> int:
        """N = K_τ + K_δ, the Δ-tokens per P-frame (8 in the paper); rows × cols with a token grid."""
        if self.token_grid is not None:
            return self.token_grid[0] * self.token_grid[1]
        return self.motion_queries + self.residual_queries

    def to_dict(self) -> dict:
        return {"model_type": ENCODER_MODEL_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> DeltaEncoderConfig:
        return _build(cls, data, ENCODER_MODEL_TYPE, source)


@dataclass
class DeltaPretrainerConfig:
    """Stage-1 model: the Δ-encoder plus the "reference" and "warped" heads (paper §3.3, App. B).

    The heads are "architecturally identical" to the branch transformers: they use the encoder's
    width, layers, heads and FFN width.
    """

    encoder: DeltaEncoderConfig = field(default_factory=DeltaEncoderConfig)
    # Which tokens of the frozen vision tower the heads read (reference frame) and predict
    # (target frame): "pooled" = the 2×2 bilinear-pooled grid the VideoLM consumes
    # (14 × 14 = 196 for SigLIP-384/14), "full" = the whole G × G grid (27 × 27 = 729).
    target_grid: str = "pooled"
    feature_layer: int = -2  # hidden state of the vision tower, as LLaVA-Video (last layer dropped)

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = DeltaEncoderConfig.from_dict(self.encoder)
        if self.target_grid not in TARGET_GRIDS:
            raise ValueError(f"target_grid must be one of {TARGET_GRIDS}, got {self.target_grid!r}")

    def to_dict(self) -> dict:
        return {
            "model_type": PRETRAINER_MODEL_TYPE,
            "encoder": self.encoder.to_dict(),
            "target_grid": self.target_grid,
            "feature_layer": self.feature_layer,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> DeltaPretrainerConfig:
        data = dict(data)
        _check_model_type(data, PRETRAINER_MODEL_TYPE, source)
        encoder = data.pop("encoder", None)
        if not isinstance(encoder, dict):
            raise CopeInputError(f"{source}: a Δ pre-trainer config needs an 'encoder' object")
        return _build(
            cls,
            {**data, "encoder": DeltaEncoderConfig.from_dict(encoder, source)},
            PRETRAINER_MODEL_TYPE,
            source,
        )


def _build(cls, data: dict, model_type: str, source: str):
    data = dict(data)
    _check_model_type(data, model_type, source)
    data.pop("model_type", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CopeInputError(f"{source}: unknown {cls.__name__} fields: {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise CopeInputError(f"{source}: {exc}") from exc


def _check_model_type(data: dict, model_type: str, source: str) -> None:
    found = data.get("model_type", model_type)
    if found != model_type:
        raise CopeInputError(f"{source}: model_type is {found!r}, expected {model_type!r}")


def delta_encoder_config(name: str, **overrides) -> DeltaEncoderConfig:
    """A named preset, optionally with fields overridden (e.g. ``output_dim`` for a tiny tower).

    * ``paper``   — the stated dims: d 1152, 4 layers, 9 heads, 4 + 4 queries, full ResNet-18
      (4th stage dilated); FFN 4 × d and patch-MLP hidden d are our choices.
    * ``compact`` — the paper's "< 15M parameters" at d = 1152 output: branch width 288 (9 heads of
      32), 4 layers, FFN 4 × 288, ResNet-18 truncated after its 3rd stage (stride 16, 256 channels).
    * ``tiny``    — tests and tiny VideoLMs: width 64, 2 layers, a 3-stage ResNet of widths
      16/32/64; ``output_dim`` defaults to 64 and should be set to the tiny tower's width.
    """
    presets = {
        "paper": {},
        "compact": {
            "width": 288,
            "num_heads": 9,
            "ffn_dim": 4 * 288,
            "motion_hidden_dim": 288,
            "resnet_hidden_sizes": (64, 128, 256),
            "resnet_depths": (2, 2, 2),
        },
        "tiny": {
            "output_dim": 64,
            "width": 64,
            "num_layers": 2,
            "num_heads": 4,
            "ffn_dim": 128,
            "motion_hidden_dim": 64,
            "resnet_embedding_size": 16,
            "resnet_hidden_sizes": (16, 32, 64),
            "resnet_depths": (1, 1, 1),
        },
    }
    if name not in presets:
        raise CopeInputError(f"unknown Δ-encoder config {name!r}; choose one of {', '.join(presets)}")
    return DeltaEncoderConfig.from_dict({**presets[name], **overrides}, source=f"Δ-encoder config {name!r}")
