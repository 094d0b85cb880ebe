"""The command tests' checkpoint: a tiny random CoPE model saved to disk."""

from __future__ import annotations

import pytest

from cope.model.videolm import tiny_random


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """Saved with save_pretrained, loaded by the CLI through CopeVideoLM.from_pretrained."""
    model = tiny_random(image_size=56, canonical_side=48, canonical_gop=30, fusion=5, keyframes_per_gop=2)
    return str(model.save_pretrained(tmp_path_factory.mktemp("models") / "cope-tiny"))
