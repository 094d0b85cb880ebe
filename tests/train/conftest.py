"""Session fixtures of the training tests: a tiny SigLIP tower, short clips, MotionQA conversations.

They are session-scoped, so every training test reuses the same files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.clips import write_translation_clip
from tests.train.support import SIDE


@pytest.fixture(autouse=True)
def training_on_one_thread(one_thread):
    """Every training test runs on one torch thread (``one_thread``): tiny models run fastest so, and
    the subprocesses get the same count, which bit-identical comparisons need."""


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """Transcodes and the pair store, shared by every test (they are content-addressed)."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="session")
def tiny_tower(tmp_path_factory) -> Path:
    """A random SigLIP vision tower saved like a hub checkpoint (image 32, patch 8, width 32)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    path = tmp_path_factory.mktemp("tower")
    SiglipVisionModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pair_videos(tmp_path_factory) -> Path:
    """Four textures translating in different directions, 61 frames each (two GOPs of 30 + 1)."""
    folder = tmp_path_factory.mktemp("pair-videos")
    for i, (dx, dy) in enumerate([(1.0, 0.0), (-1.0, 0.5), (0.0, 1.0), (1.5, -1.0)]):
        write_translation_clip(folder / f"clip{i}.mp4", frames=61, dx=dx, dy=dy, side=SIDE)
    return folder


@pytest.fixture(scope="session")
def motionqa_mix(tmp_path_factory) -> dict[str, Path]:
    """Four 8-s MotionQA clips (64×64) with their conversations, as train and eval data mixes."""
    from cope.motionqa import generate_split

    root = tmp_path_factory.mktemp("motionqa")
    generate_split(root, "train", clips=4, seed=0, size=(SIDE, SIDE), seconds=8)
    generate_split(root, "val", clips=1, seed=0, size=(SIDE, SIDE), seconds=8)
    mixes = {}
    for split in ("train", "val"):
        mixes[split] = root / f"{split}-mix.yaml"
        mixes[split].write_text(
            yaml.safe_dump({"sources": [{"path": f"{split}.json", "video_root": ".", "ratio": 1.0}]})
        )
    return mixes
