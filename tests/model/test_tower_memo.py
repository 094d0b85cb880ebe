"""TowerFeatureMemo: a frozen tower's features reused across steps give the same image tokens."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cope.model.inputs import VisualInput
from cope.model.videolm import tiny_random
from cope.model.videolm.tower_memo import TowerFeatureMemo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_random(image_size=56, canonical_side=48, vision_batch_size=3)


def video(source: str | None, seed: int, kinds: str = "IPPI") -> VisualInput:
    g = torch.Generator().manual_seed(seed)
    rgb, delta = kinds.count("I"), kinds.count("P")
    return VisualInput(
        kinds=tuple(kinds),
        indices=tuple(range(0, 30 * len(kinds), 30)),
        frames=torch.randint(0, 256, (rgb, 48, 48, 3), generator=g, dtype=torch.uint8),
        mv=torch.randn(delta, 48, 48, 2, generator=g) * 4,
        residual=torch.randint(-50, 50, (delta, 48, 48, 3), generator=g, dtype=torch.int16),
        source=source,
    )


def test_memoised_features_give_the_same_tokens_and_each_frame_runs_once(model):
    batches = [[video("a.mp4", 0), video("b.mp4", 1)], [video("b.mp4", 1), video(None, 2), video("a.mp4", 0)]]
    expected = [model.embed_visuals(batch) for batch in batches]
    model.tower_memo = TowerFeatureMemo()
    try:
        got = [model.embed_visuals(batch) for batch in batches]
    finally:
        memo, model.tower_memo = model.tower_memo, None
    for want, have in zip(expected, got, strict=True):
        for w, h in zip(want, have, strict=True):
            torch.testing.assert_close(h, w)
    # a.mp4 and b.mp4 have 2 RGB frames each: 4 misses in the first batch; the second batch finds
    # them (4 hits) and computes only the source-less video's 2 frames, which it does not keep.
    assert (memo.misses, memo.hits, len(memo.features)) == (6, 4, 4)


def test_the_projector_still_trains_through_memoised_features(model):
    model.tower_memo = TowerFeatureMemo()
    try:
        for _ in range(2):  # the second pass reads every frame from the memo
            model.zero_grad()
            (tokens,) = model.embed_visuals([video("a.mp4", 0)])
            tokens.sum().backward()
            assert model.projector.linear_1.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in model.vision_tower.parameters())
        assert model.tower_memo.hits == 2
    finally:
        model.tower_memo = None
        model.zero_grad()


def test_a_full_memo_computes_without_keeping(model):
    memo = TowerFeatureMemo(max_bytes=0)
    memo.image_tokens(model, [video("a.mp4", 0)])
    memo.image_tokens(model, [video("a.mp4", 0)])
    assert (memo.misses, memo.hits, memo.features) == (4, 0, {})


def test_a_trained_tower_cannot_be_memoised(model):
    trained = dataclasses.replace(model.config, train_vision_tower=True)
    original, model.config = model.config, trained
    try:
        with pytest.raises(ValueError, match="frozen"):
            TowerFeatureMemo().image_tokens(model, [video("a.mp4", 0)])
    finally:
        model.config = original
