"""The Δ-encoder (motion + residual branches) and its stage-1 pre-training heads.

from cope.model.delta import DeltaEncoder, delta_encoder_config
encoder = DeltaEncoder(delta_encoder_config("compact"))
tokens = encoder(mv, residual)          # (B, H, W, 2), (B, H, W, 3) → (B, 8, 1152)
encoder = DeltaEncoder.from_pretrained("runs/stage1/checkpoint")   # also from a pre-trainer checkpoint
"""

from cope.model.delta.configuration_delta import (
    DeltaEncoderConfig,
    DeltaPretrainerConfig,
    delta_encoder_config,
)
from cope.model.delta.modeling_delta import DeltaEncoder, normalize_motion
from cope.model.delta.pretraining_delta import DeltaPretrainer, DeltaPretrainerOutput, frame_tokens

__all__ = [
    "DeltaEncoder",
    "DeltaEncoderConfig",
    "DeltaPretrainer",
    "DeltaPretrainerConfig",
    "DeltaPretrainerOutput",
    "delta_encoder_config",
    "frame_tokens",
    "normalize_motion",
]
