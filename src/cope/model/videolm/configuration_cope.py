"""``CopeConfig``: what a CoPE checkpoint's ``config.json`` holds.

A CoPE checkpoint directory is::

    config.json                 this config ("cope_version": 1)
    delta_encoder.safetensors   the Δ-encoder's weights (absent for a stage-0, dense-only model)
    base/                       optional: the LLaVA-OneVision base model + tokenizer (HF save_pretrained)

``base_model`` says where the base comes from: a hub id (``llava-hf/LLaVA-Video-7B-Qwen2-hf``), a
local directory, or ``"base"`` for the checkpoint's own ``base/`` subfolder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cope.codec.canonical import CanonicalSettings
from cope.errors import CopeInputError
from cope.plan import DEFAULT_FUSION, DENSE_FRAMES, MAX_GOPS, PAPER_LAYOUT, TokenLayout

CONFIG_NAME = "config.json"
DELTA_WEIGHTS_NAME = "delta_encoder.safetensors"
BASE_SUBFOLDER = "base"
COPE_VERSION = 1

MODES = ("cope", "iframes-only", "dense", "delta-zero")

# LLaVA-Video's ``qwen_1_5`` conversation format (ChatML): the system turn is added when the
# conversation has none. Rendered for one question:
#   <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\nQ<|im_end|>\n
#   <|im_start|>assistant\n
QWEN_1_5_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class CopeConfig:
    """Everything a CoPE VideoLM needs besides weights."""

    # Where the LLaVA-OneVision base model + tokenizer come from: hub id, local directory, or
    # "base" = the checkpoint's own base/ subfolder.
    base_model: str = "llava-hf/LLaVA-Video-7B-Qwen2-hf"
    # DeltaEncoderConfig fields (cope.model.delta); None = no Δ-encoder (stage-0 / dense-only model).
    delta_encoder: dict | None = None
    # Positions per RGB frame / P-frame. image_side must equal ceil(vision grid side / 2).
    layout: TokenLayout = PAPER_LAYOUT
    # The canonical stream the model was trained on (paper: 30 fps, GOP 240, 384×384).
    canonical: CanonicalSettings = field(default_factory=CanonicalSettings)
    # Sampling defaults (paper §4.1): fuse 30 P-frames per Δ-frame, K keyframes per GOP, at most
    # 64 GOPs; the dense baseline takes 64 uniformly sampled RGB frames.
    fusion: int = DEFAULT_FUSION
    keyframes_per_gop: int = 1
    max_gops: int = MAX_GOPS
    dense_frames: int = DENSE_FRAMES
    mode: str = "cope"  # default mode: one of MODES
    # The prompt's stand-in for the whole video: one token of the tokenizer, replaced by the
    # visual embeddings.
    video_placeholder: str = "<video>"
    # Jinja chat template; None = the tokenizer's own. paper-7b pins LLaVA-Video's qwen_1_5.
    chat_template: str | None = None
    # A system turn to prepend; None = whatever the template adds by itself.
    system_prompt: str | None = None
    vision_batch_size: int = 16  # frames per vision-tower call (bounds activation memory)
    delta_batch_size: int = 64  # P-frames per Δ-encoder call
    train_vision_tower: bool = False  # False (LLaVA-Video, paper): the SigLIP tower stays frozen

    def __post_init__(self) -> None:
        if isinstance(self.layout, dict):
            self.layout = TokenLayout(**self.layout)
        if isinstance(self.canonical, dict):
            self.canonical = CanonicalSettings(**self.canonical)
        if self.delta_encoder is not None:  # JSON form (tuples → lists), so configs compare after a save
            self.delta_encoder = json.loads(json.dumps(self.delta_encoder))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def to_dict(self) -> dict:
        data = asdict(self)  # nested dataclasses (layout, canonical) become dicts
        return {"cope_version": COPE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> CopeConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path) -> CopeConfig:
        """Read a checkpoint's config without loading weights (CoPE checkpoint or bare base model)."""
        from cope.model.videolm.loading import read_base_config, resolve_checkpoint

        resolved = resolve_checkpoint(str(path_or_hub_id))
        if resolved.cope_dir is None:
            return base_only_config(resolved.base_model, read_base_config(resolved.base_model))
        return read_config(resolved.cope_dir)


def is_cope_config(data: dict) -> bool:
    return "cope_version" in data


def read_config(directory: Path) -> CopeConfig:
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
        return CopeConfig.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise CopeInputError(f"{path}: not a valid CoPE config ({exc})") from None


def base_only_config(base_model: str, base_config) -> CopeConfig:
    """The config of a bare LLaVA-OneVision model used as a VideoLM without a Δ-encoder.

    The layout and the canonical frame size follow its vision tower (27 × 27 patches → 14 × 14
    pooled, 384 × 384 frames for LLaVA-Video-7B); only the modes that need no Δ-encoder (dense,
    iframes-only, delta-zero) work, and the default mode is the dense baseline.
    """
    vision = base_config.vision_config
    grid = vision.image_size // vision.patch_size
    side = -(-vision.image_size // 16) * 16  # canonical sides are multiples of 16
    return CopeConfig(
        base_model=base_model,
        delta_encoder=None,
        layout=TokenLayout(image_side=-(-grid // 2)),
        canonical=CanonicalSettings(width=side, height=side),
        mode="dense",
    )
