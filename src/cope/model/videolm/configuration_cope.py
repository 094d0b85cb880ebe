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
from cope.hub import atomic_write_text, read_json
from cope.model.videolm.loading import CONFIG_NAME, read_base_config, resolve_checkpoint
from cope.plan import DEFAULT_FUSION, DENSE_FRAMES, MAX_GOPS, MODES, PAPER_LAYOUT, TokenLayout

COPE_VERSION = 1


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
    # Answer length cap of `cope ask` / `chat` / `infer` when --max-new-tokens is not given. A model
    # trained on short answers says so here (CoPE-Tiny: 8), so an answer that fails to stop ends soon.
    max_new_tokens: int = 256
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
    # Time stamps in the LLM's own words: every position of a visual block gets the input embedding
    # of its second (an RGB frame: the second it shows; a Δ-frame: the mean of the seconds it
    # starts and ends at), written in digits, added. A question about "second 3" then names the
    # blocks it is about with the same token. Off in the paper and in LLaVA-Video.
    time_words: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layout, dict):
            self.layout = TokenLayout(**self.layout)
        if isinstance(self.canonical, dict):
            self.canonical = CanonicalSettings(**self.canonical)
        if self.delta_encoder is not None:  # JSON form (tuples → lists), so configs compare after a save
            self.delta_encoder = json.loads(json.dumps(self.delta_encoder))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict:
        data = asdict(self)  # nested dataclasses (layout, canonical) become dicts
        return {"cope_version": COPE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> CopeConfig:
        """The config of ``to_dict``'s form; unknown keys and other versions are errors naming ``source``
        (a misspelt field must not be dropped silently)."""
        data = dict(data)
        version = data.pop("cope_version", COPE_VERSION)
        if version != COPE_VERSION:
            raise CopeInputError(
                f"{source}: cope_version {version!r} is not supported (this cope reads {COPE_VERSION})"
            )
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CopeInputError(f"{source}: unknown CopeConfig fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CopeInputError(f"{source}: not a valid CoPE config ({exc})") from exc

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path) -> CopeConfig:
        """Read a checkpoint's config without loading weights (CoPE checkpoint or bare base model)."""
        resolved = resolve_checkpoint(str(path_or_hub_id))
        if resolved.cope_dir is None:
            return base_only_config(resolved.base_model, read_base_config(resolved.base_model))
        return read_config(resolved.cope_dir)


def read_config(directory: Path) -> CopeConfig:
    path = Path(directory) / CONFIG_NAME
    return CopeConfig.from_dict(read_json(path), str(path))


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
