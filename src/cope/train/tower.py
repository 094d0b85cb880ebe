"""Pre-train a small vision tower on MotionQA's ground truth (``cope motionqa pretrain-tower CONFIG``).

LLaVA-Video starts from SigLIP, whose tokens already name what is in each patch. No pretrained
SigLIP is reachable here, and a randomly initialised tower gives tokens that barely differ from
patch to patch, so the tiny recipe first teaches its tower what a patch shows: every patch token
(hidden state −2, the one the VideoLM reads) predicts the colour and the shape of the object
covering that patch, or background (``cope.motionqa.render.patch_labels``), with a linear head that is
dropped afterwards. The result, ``OUTPUT/final``, is the base CoPE checkpoint with the trained
tower; stages 0–2 keep the tower frozen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cope.errors import CopeInputError
from cope.motionqa.render import COLOURS, SHAPES, Scene, patch_labels
from cope.train.config import to_dict
from cope.train.loop import LoopConfig, TrainTask

BACKGROUND_WEIGHT = 0.1  # objects cover ~6% of patches: weigh background down in the loss


@dataclass
class TowerDataConfig:
    motionqa: str = "build/tiny/motionqa"  # a `cope motionqa generate` output directory
    split: str = "train"
    slot_cache: str = "build/tiny/cache"  # `cope preprocess` cache holding the split's clips
    max_clips: int = 0  # 0: every clip of the split


@dataclass
class TowerModelConfig:
    base: str = "build/tiny/init"  # the CoPE checkpoint whose tower is trained (and re-saved)


@dataclass
class TowerPretrainConfig:
    train: LoopConfig = field(default_factory=LoopConfig)
    data: TowerDataConfig = field(default_factory=TowerDataConfig)
    model: TowerModelConfig = field(default_factory=TowerModelConfig)


class ClipFrames(torch.utils.data.Dataset):
    """One item per clip: its 1-FPS slot frames (S, H, W, 3) and per-patch labels (S, G·G) × 2."""

    def __init__(self, data: TowerDataConfig, grid: int, image_size: int):
        from cope.data.cache import SlotCache

        root = Path(data.motionqa)
        meta_path = root / f"{data.split}-meta.jsonl"
        if not meta_path.is_file():
            raise CopeInputError(f"{meta_path}: no MotionQA split there (run `cope motionqa generate`)")
        self.root = root
        self.metas = [json.loads(line) for line in meta_path.read_text().splitlines() if line.strip()]
        if data.max_clips:
            self.metas = self.metas[: data.max_clips]
        self.cache = SlotCache(os.path.expanduser(data.slot_cache))
        self.grid, self.image_size = grid, image_size

    def __len__(self) -> int:
        return len(self.metas)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from cope.data.cache import visual_input_from_cache

        meta = self.metas[index]
        entry = self.cache.entry(str((self.root / meta["video"]).resolve()))
        frames = visual_input_from_cache(entry, "dense").frames  # every slot as RGB
        scene = Scene.from_dict(meta["scene"])
        labels = [patch_labels(scene, slot, self.grid, self.image_size) for slot in range(len(frames))]
        colours, shapes = (
            torch.from_numpy(np.stack(x).reshape(len(frames), -1)) for x in zip(*labels, strict=True)
        )
        return {"frames": frames, "colours": colours, "shapes": shapes}


def collate_clips(items: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


class TowerWithHeads(nn.Module):
    def __init__(self, tower: nn.Module, feature_layer: int, image_size: int):
        super().__init__()
        self.tower, self.feature_layer, self.image_size = tower, feature_layer, image_size
        width = tower.config.hidden_size
        self.colour_head = nn.Linear(width, 1 + len(COLOURS))
        self.shape_head = nn.Linear(width, 1 + len(SHAPES))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 → colour logits (N, G², 7), shape logits (N, G², 6)."""
        from cope.model.vision import frames_to_pixels, vision_features

        pixels = frames_to_pixels(frames, self.image_size).to(self.colour_head.weight.device)
        tokens = vision_features(self.tower, pixels, self.feature_layer)  # (N, G², d)
        return self.colour_head(tokens), self.shape_head(tokens)


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    weight = torch.ones(logits.shape[-1], device=logits.device)
    weight[0] = BACKGROUND_WEIGHT
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), weight=weight)


class TowerPretrainTask(TrainTask):
    def __init__(self, config: TowerPretrainConfig):
        from cope.model.videolm import CopeVideoLM

        self.config = config
        self.videolm = CopeVideoLM.from_pretrained(os.path.expanduser(config.model.base), dtype=torch.float32)

    def build_model(self) -> nn.Module:
        base = self.videolm.base
        model = TowerWithHeads(
            self.videolm.vision_tower, base.config.vision_feature_layer, self.videolm.image_size
        )
        model.tower.requires_grad_(True)
        return model

    def parts(self, model):
        """Names as in ``model`` (the loop saves and restores by these names)."""
        named = list(model.named_parameters())
        return {
            "vision_tower": [(n, p) for n, p in named if n.startswith("tower.")],
            "heads": [(n, p) for n, p in named if not n.startswith("tower.")],
        }

    def train_dataset(self):
        return ClipFrames(self.config.data, self.videolm.vision_grid, self.videolm.image_size)

    def collate(self, samples):
        return collate_clips(samples)

    def loss(self, model, batch):
        colour_logits, shape_logits = model(batch["frames"])
        colours, shapes = batch["colours"].to(colour_logits.device), batch["shapes"].to(colour_logits.device)
        colour_loss, shape_loss = weighted_ce(colour_logits, colours), weighted_ce(shape_logits, shapes)
        on_object = colours > 0
        metrics = {
            "colour_loss": colour_loss.item(),
            "shape_loss": shape_loss.item(),
            "object_colour_acc": (colour_logits.argmax(-1)[on_object] == colours[on_object])
            .float()
            .mean()
            .item(),
            "object_shape_acc": (shape_logits.argmax(-1)[on_object] == shapes[on_object])
            .float()
            .mean()
            .item(),
        }
        return colour_loss + shape_loss, metrics

    def save_final(self, model, state_dict, directory: Path) -> None:
        """The base CoPE checkpoint with the trained tower (the heads are dropped)."""
        tower_state = {k.removeprefix("tower."): v for k, v in state_dict.items() if k.startswith("tower.")}
        self.videolm.vision_tower.load_state_dict(tower_state)
        self.videolm.vision_tower.requires_grad_(False)
        self.videolm.save_pretrained(directory, overwrite=True)


def run_tower_pretrain(config: TowerPretrainConfig, resume: bool = False, progress: bool = True):
    from cope.train.loop import train

    config.train.progress = config.train.progress and progress
    return train(TowerPretrainTask(config), config.train, to_dict(config), resume=resume)
