"""Stage 1 (``cope pretrain CONFIG``): pre-train the Δ-encoder against a frozen vision tower.

Each frame pair (reference t − s, fused mv + residual, target t) trains the Δ-encoder and its
"reference" / "warped" heads to predict the tower's tokens of the target frame from the tower's
tokens of the reference frame and the codec primitives (paper §3.3, App. B). The tower's tokens
come from the feature cache (``data.precompute_features``, computed once) or from running the
tower on both frames in every step. The final artifact, ``OUTPUT/final``, is a ``DeltaPretrainer``
checkpoint: ``DeltaEncoder.from_pretrained(OUTPUT/final)`` loads just the encoder for stage 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cope.data.pairs import PairDataConfig, PairSplit, prepare_pairs
from cope.errors import CopeInputError
from cope.train.config import to_dict
from cope.train.loop import LoopConfig, TrainTask


@dataclass
class Stage1ModelConfig:
    """The frozen vision tower and the Δ-encoder being pre-trained: the ``model`` section."""

    # The frozen vision tower whose tokens the Δ-encoder learns to predict; its width becomes the
    # Δ-encoder's output_dim. A SigLIP vision model (hub id or directory; the paper names
    # google/siglip-so400m-patch14-384), a VideoLM (CoPE checkpoint or LLaVA-OneVision model, e.g.
    # llava-hf/LLaVA-Video-7B-Qwen2-hf: its own tower, the one stage 2 feeds), or "tiny": the
    # tower of cope.model.videolm.tiny_random(**tiny) (random, frozen: the tiny recipe's tower).
    vision_encoder: str = "google/siglip-so400m-patch14-384"
    tiny: dict[str, Any] = field(default_factory=dict)  # tiny_random arguments (seed defaults to 0)
    delta_encoder: str = "compact"  # preset: paper | compact | tiny (cope.model.delta)
    delta_encoder_overrides: dict[str, Any] = field(default_factory=dict)  # DeltaEncoderConfig fields
    target_grid: str = "pooled"  # tokens predicted: "pooled" (14×14, what the VideoLM sees) or "full"
    # Tower hidden state to read; None = the VideoLM's vision_feature_layer, or −2 for a bare
    # SigLIP (LLaVA-Video drops the last layer).
    feature_layer: int | None = None
    resnet_init: str = ""  # optional transformers ResNet checkpoint for the residual branch


@dataclass
class Stage1EvalConfig:
    """Held-out evaluation (``cope.eval.stage1``): the ``eval`` section."""

    batch_size: int = 32
    max_pairs: int = 0  # cap on held-out pairs for token metrics (0: all)
    max_videos: int = 0  # cap on held-out videos for retrieval (0: all)


@dataclass
class PretrainConfig:
    train: LoopConfig = field(default_factory=LoopConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    model: Stage1ModelConfig = field(default_factory=Stage1ModelConfig)
    eval: Stage1EvalConfig = field(default_factory=Stage1EvalConfig)


def load_vision_tower(model: Stage1ModelConfig) -> tuple[nn.Module, int]:
    """The frozen tower (eval mode) and the hidden-state index to read, as ``model`` names them."""
    if model.vision_encoder == "tiny":
        from cope.model.videolm import tiny_random

        videolm = tiny_random(**{"seed": 0, **model.tiny})
        tower, layer = videolm.vision_tower, videolm.base.config.vision_feature_layer
    else:
        tower, layer = _videolm_tower(model.vision_encoder) or (_siglip_tower(model.vision_encoder), -2)
    tower.requires_grad_(False)
    return tower.float().eval(), layer if model.feature_layer is None else model.feature_layer


def _videolm_tower(name: str) -> tuple[nn.Module, int] | None:
    """The vision tower of a CoPE checkpoint or LLaVA-OneVision model; None if ``name`` is neither."""
    from cope.model.videolm.loading import load_base, resolve_checkpoint

    try:
        resolved = resolve_checkpoint(os.path.expanduser(name))
    except CopeInputError:
        return None
    base, _ = load_base(resolved.base_model, torch.float32)
    return base.model.vision_tower, base.config.vision_feature_layer


def _siglip_tower(name: str) -> nn.Module:
    from transformers import SiglipVisionModel

    try:
        return SiglipVisionModel.from_pretrained(os.path.expanduser(name))
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CopeInputError(f"{name}: cannot load a SigLIP vision tower ({reason})") from exc


def pretrainer_config(model: Stage1ModelConfig, vision_width: int, feature_layer: int):
    from cope.model.delta import DeltaPretrainerConfig, delta_encoder_config

    overrides = dict(model.delta_encoder_overrides)
    if overrides.get("output_dim", vision_width) != vision_width:
        raise CopeInputError(
            f"model.delta_encoder_overrides.output_dim {overrides['output_dim']} differs from the vision "
            f"tower's width {vision_width}"
        )
    overrides["output_dim"] = vision_width
    encoder = delta_encoder_config(model.delta_encoder, **overrides)
    try:
        return DeltaPretrainerConfig(
            encoder=encoder, target_grid=model.target_grid, feature_layer=feature_layer
        )
    except ValueError as exc:
        raise CopeInputError(f"model: {exc}") from exc


class Stage1Model(nn.Module):
    """The trained ``DeltaPretrainer`` plus, for on-the-fly features, the frozen tower.

    ``forward(batch)`` → (loss, predicted (B, T, d), reference tokens, target tokens).
    """

    def __init__(self, pretrainer: nn.Module, vision_tower: nn.Module | None):
        super().__init__()
        self.pretrainer = pretrainer
        self.vision_tower = vision_tower  # frozen; None when the batch carries cached tokens

    def tokens_of(self, frames: torch.Tensor) -> torch.Tensor:
        from cope.model.delta import frame_tokens

        config = self.pretrainer.config
        return frame_tokens(self.vision_tower, frames, config.target_grid, config.feature_layer)

    def forward(self, batch: dict[str, torch.Tensor]):
        from cope.eval.stage1 import pair_tokens

        tokens_of = self.tokens_of if self.vision_tower is not None else None
        reference, target = pair_tokens(batch, tokens_of, batch["mv"].device)
        out = self.pretrainer(batch["mv"], batch["residual"], reference, target)
        return out.loss, out.predicted, reference, target


class PretrainTask(TrainTask):
    """Stage 1 for the generic loop."""

    def __init__(self, config: PretrainConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        self.split: PairSplit | None = None
        self.vision_tower: nn.Module | None = None
        self.feature_layer: int | None = None

    def setup(self, accelerator) -> None:
        model, data = self.config.model, self.config.data
        tower, self.feature_layer = load_vision_tower(model)
        self.vision_tower = tower.to(accelerator.device)
        self.split = prepare_pairs(
            data,
            accelerator,
            self.vision_tower if data.precompute_features else None,
            model.target_grid,
            self.feature_layer,
            progress=self.progress and accelerator.is_local_main_process,
        )
        if data.precompute_features:
            self.vision_tower = self.vision_tower.cpu()  # not needed again: free the device memory

    def build_model(self) -> nn.Module:
        from cope.model.delta import DeltaPretrainer

        width = self.vision_tower.config.hidden_size
        pretrainer = DeltaPretrainer(pretrainer_config(self.config.model, width, self.feature_layer))
        if self.config.model.resnet_init:
            pretrainer.encoder.load_pretrained_resnet(self.config.model.resnet_init)
        tower = None if self.config.data.precompute_features else self.vision_tower
        return Stage1Model(pretrainer, tower)

    def parts(self, model: nn.Module):
        encoder = [
            (f"pretrainer.{n}", p) for n, p in model.pretrainer.named_parameters() if n.startswith("encoder.")
        ]
        heads = [
            (f"pretrainer.{n}", p)
            for n, p in model.pretrainer.named_parameters()
            if not n.startswith("encoder.")
        ]
        return {"delta_encoder": encoder, "heads": heads}

    def train_dataset(self):
        return self.split.train_dataset()

    def loss(self, model, batch):
        loss, _, reference, target = model(batch)
        copy_mse = (reference.float() - target.float()).pow(2).mean().item()
        return loss, {"copy_mse": copy_mse}

    def evaluate(self, model, accelerator) -> dict[str, float]:
        from cope.eval.stage1 import evaluate_stage1

        if not self.split.eval_files:
            return {}
        inner = accelerator.unwrap_model(model)
        tokens_of = inner.tokens_of if inner.vision_tower is not None else None
        ev = self.config.eval
        return evaluate_stage1(
            inner.pretrainer,
            self.split.eval_dataset(),
            self.split.eval_files,
            self.split.eval_features,
            tokens_of,
            ev.batch_size,
            ev.max_pairs,
            ev.max_videos,
            accelerator.device,
        )

    def save_final(self, model, state_dict, directory: Path) -> None:
        """The ``DeltaPretrainer`` checkpoint, from the gathered state dict."""
        weights = {
            k.removeprefix("pretrainer."): v for k, v in state_dict.items() if k.startswith("pretrainer.")
        }
        model.pretrainer.save_pretrained(directory, overwrite=True, state_dict=weights)


def run_pretrain(config: PretrainConfig, resume: bool = False, progress: bool = True):
    """Train stage 1 as configured; returns the loop's ``TrainResult``."""
    from cope.train.loop import train

    config.train.progress = config.train.progress and progress
    return train(PretrainTask(config, progress), config.train, to_dict(config), resume=resume)


def evaluate_checkpoint(
    config: PretrainConfig, checkpoint: str | Path, progress: bool = True
) -> dict[str, float]:
    """Stage-1 evaluation of a saved ``DeltaPretrainer`` on the config's held-out videos."""
    from cope.eval.stage1 import evaluate_stage1
    from cope.model.delta import DeltaPretrainer

    pretrainer = DeltaPretrainer.from_pretrained(checkpoint)
    tower, feature_layer = load_vision_tower(config.model)
    trained_on = (pretrainer.config.target_grid, pretrainer.config.feature_layer)
    if trained_on != (config.model.target_grid, feature_layer):
        raise CopeInputError(
            f"{checkpoint}: trained on {trained_on[0]} tokens of layer {trained_on[1]}, the config reads "
            f"{config.model.target_grid} tokens of layer {feature_layer}"
        )
    split = prepare_pairs(
        config.data,
        None,
        tower if config.data.precompute_features else None,
        config.model.target_grid,
        feature_layer,
        progress=progress,
    )
    if not split.eval_files:
        raise CopeInputError(
            f"{config.data.videos}: no held-out videos to evaluate on (set data.eval_videos)"
        )
    stage = Stage1Model(pretrainer, None if config.data.precompute_features else tower)
    tokens_of = stage.tokens_of if stage.vision_tower is not None else None
    ev = config.eval
    with torch.no_grad():
        return evaluate_stage1(
            pretrainer,
            split.eval_dataset(),
            split.eval_files,
            split.eval_features,
            tokens_of,
            ev.batch_size,
            ev.max_pairs,
            ev.max_videos,
        )
