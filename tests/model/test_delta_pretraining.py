"""Stage-1 pre-training model (encoder + reference/warped heads), target tokens, and the metrics."""

from __future__ import annotations

import math

import pytest
import torch

from cope.errors import CopeInputError
from cope.model.delta import (
    DeltaEncoder,
    DeltaPretrainer,
    DeltaPretrainerConfig,
    delta_encoder_config,
    frame_tokens,
)
from cope.model.delta.metrics import (
    frame_embeddings,
    next_frame_ranks,
    recall_at_k,
    stage1_metrics,
    token_cosine,
    token_mse,
)
from cope.model.vision import bilinear_pool, frames_to_pixels, vision_features

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pretrainer(seed: int = 0, **overrides) -> DeltaPretrainer:
    torch.manual_seed(seed)
    return DeltaPretrainer(DeltaPretrainerConfig(encoder=delta_encoder_config("tiny", **overrides)))


def pair_batch(batch: int = 2, side: int = 64, tokens: int = 16, dim: int = 64, seed: int = 0):
    """mv, residual, reference tokens, target tokens (random, right shapes)."""
    g = torch.Generator().manual_seed(seed)
    mv = torch.randn(batch, side, side, 2, generator=g) * 10
    residual = torch.randint(-255, 256, (batch, side, side, 3), generator=g).float()
    reference = torch.randn(batch, tokens, dim, generator=g)
    target = reference + 0.3 * torch.randn(batch, tokens, dim, generator=g)
    return mv, residual, reference, target


@pytest.mark.parametrize(
    ("name", "params"), [("paper", 275_394_624), ("compact", 20_741_600), ("tiny", 410_320)]
)
def test_pretrainer_parameter_count_and_shapes(name, params):
    config = DeltaPretrainerConfig(encoder=delta_encoder_config(name))
    dim = config.encoder.output_dim
    with torch.device("meta"):
        model = DeltaPretrainer(config)
        out = model(
            torch.empty(2, 384, 384, 2),
            torch.empty(2, 384, 384, 3),
            torch.empty(2, 196, dim),
            torch.empty(2, 196, dim),
        )
    assert sum(p.numel() for p in model.parameters()) == params
    assert out.predicted.shape == (2, 196, dim)
    assert out.delta_tokens.shape == (2, 8, dim)
    assert out.loss.shape == ()


@pytest.mark.parametrize("tokens", [16, 49])
def test_one_prediction_per_target_token_and_loss_is_mse(tokens):
    model = tiny_pretrainer()
    mv, residual, reference, target = pair_batch(tokens=tokens)
    out = model(mv, residual, reference, target)
    assert out.predicted.shape == (2, tokens, 64)
    assert torch.equal(out.loss, torch.nn.functional.mse_loss(out.predicted, target))
    assert model(mv, residual, reference).loss is None


def test_heads_predict_a_change_of_the_reference_tokens():
    model = tiny_pretrainer()
    mv, residual, reference, _ = pair_batch()
    predicted, _ = model.predict(mv, residual, reference)
    assert (predicted - reference).abs().max() < 0.5  # small initial change: starts near copy-reference
    with torch.no_grad():
        model.change_out.weight.zero_()
    predicted, _ = model.predict(mv, residual, reference)
    assert torch.equal(predicted, reference)


@pytest.mark.parametrize("token_grid", [None, (2, 4)])
def test_gradients_reach_every_trainable_parameter_of_encoder_and_heads(token_grid):
    model = tiny_pretrainer(token_grid=token_grid)
    model(*pair_batch()).loss.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    assert any(n.startswith("encoder.residual_backbone") for n, _ in model.named_parameters())


def test_same_seed_same_loss():
    batch = pair_batch()
    first = tiny_pretrainer(seed=5)(*batch)
    second = tiny_pretrainer(seed=5)(*batch)
    assert torch.equal(first.predicted, second.predicted) and torch.equal(first.loss, second.loss)


def test_bad_token_grids_are_rejected():
    model = tiny_pretrainer()
    mv, residual, reference, target = pair_batch(tokens=12)
    with pytest.raises(ValueError, match="square grid"):
        model(mv, residual, reference, target)
    mv, residual, reference, target = pair_batch(tokens=16)
    with pytest.raises(ValueError, match="do not match"):
        model(mv, residual, reference, target[:, :9])


def test_checkpoint_round_trip_and_encoder_only_loading(tmp_path):
    model = tiny_pretrainer(seed=2, output_dim=32)
    batch = pair_batch(dim=32)
    model(*batch)  # BatchNorm statistics move in train mode
    model.eval()
    model.save_pretrained(tmp_path / "stage1")

    loaded = DeltaPretrainer.from_pretrained(tmp_path / "stage1")
    assert loaded.config == model.config
    assert torch.equal(loaded(*batch).predicted, model(*batch).predicted)

    encoder = DeltaEncoder.from_pretrained(tmp_path / "stage1")  # what the VideoLM does
    assert encoder.config == model.config.encoder
    assert set(encoder.state_dict()) == {
        k.removeprefix("encoder.") for k in model.state_dict() if k.startswith("encoder.")
    }
    assert torch.equal(encoder(*batch[:2]), model.encoder(*batch[:2]))

    encoder.save_pretrained(tmp_path / "encoder-only")
    with pytest.raises(CopeInputError, match="model_type is 'cope_delta_encoder'"):
        DeltaPretrainer.from_pretrained(tmp_path / "encoder-only")


def test_training_on_a_fixed_batch_lowers_the_loss_below_copy_reference():
    """Content shifts by one grid cell left, right or not at all; the motion field says which."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch, side, dim = 8, 64, 64
    cells = side // 16
    shifts = torch.tensor([-1, 0, 1, 1, -1, 0, 1, -1])  # cells the content moves right
    reference = torch.randn(batch, cells, cells, dim, generator=g)
    target = torch.stack([torch.roll(reference[i], int(shifts[i]), dims=1) for i in range(batch)])
    mv = torch.zeros(batch, side, side, 2)
    mv[..., 0] = -16.0 * shifts.view(batch, 1, 1).float()  # codec sign: content right → dx < 0
    residual = torch.zeros(batch, side, side, 3)
    reference, target = reference.reshape(batch, -1, dim), target.reshape(batch, -1, dim)

    model = tiny_pretrainer(motion_max_displacement=16.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(mv, residual, reference, target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        metrics = stage1_metrics(model.eval()(mv, residual, reference).predicted, target, reference)
    assert metrics["mse"] < 0.5 * metrics["copy_mse"]
    assert metrics["cosine"] > metrics["copy_cosine"] + 0.2


def test_frame_tokens_are_the_towers_layer_minus_2_full_or_pooled():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=56,
            patch_size=8,
        )
    ).eval()
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    full = frame_tokens(tower, frames, "full")
    pooled = frame_tokens(tower, frames, "pooled")
    with torch.no_grad():
        expected = vision_features(tower, frames_to_pixels(frames, 56), feature_layer=-2)
    assert full.shape == (3, 49, 64) and pooled.shape == (3, 16, 64)
    assert torch.equal(full, expected)
    assert torch.equal(pooled, bilinear_pool(expected))
    assert not full.requires_grad


def test_token_metrics_on_known_tensors():
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert token_cosine(target, target).item() == pytest.approx(1.0)
    assert token_mse(target, target).item() == 0.0
    orthogonal = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    assert token_cosine(orthogonal, target).item() == pytest.approx(0.0)
    assert token_mse(orthogonal, target).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    metrics = stage1_metrics(predicted=target, target=target, reference=-target)
    assert metrics == pytest.approx(
        {"cosine": 1.0, "mse": 0.0, "copy_cosine": -1.0, "copy_mse": (4 + 16) / 4}
    )


def test_next_frame_retrieval_on_known_embeddings():
    # Frame t = e_t + e_(t+1): it shares one axis with t − 1 and one with t + 1 (cosine exactly ½).
    frames = torch.eye(7)[:-1] + torch.eye(7)[1:]
    perfect = next_frame_ranks(frames[1:], frames)  # queries that are the successor itself
    assert perfect.tolist() == [1, 1, 1, 1, 1]
    assert recall_at_k(perfect) == {"R@1": 1.0, "R@2": 1.0, "R@5": 1.0}
    # Baseline query = frame t itself: t − 1 ties with t + 1 and ties count against the query.
    copy = next_frame_ranks(frames[:-1], frames)
    assert copy.tolist() == [1, 2, 2, 2, 2]
    assert recall_at_k(copy, ks=(1, 2)) == pytest.approx({"R@1": 0.2, "R@2": 1.0})
    # A query pointing away from everything: the successor ranks last among the N − 1 candidates.
    far = next_frame_ranks(-frames[1:], frames)
    assert far.tolist() == [5, 5, 5, 5, 5]
    with pytest.raises(ValueError):
        next_frame_ranks(frames, frames)


def test_frame_embeddings_mean_pool_and_normalise():
    tokens = torch.tensor([[[3.0, 0.0], [3.0, 8.0]]])
    assert torch.allclose(frame_embeddings(tokens), torch.tensor([[0.6, 0.8]]))
    assert math.isclose(frame_embeddings(torch.randn(4, 9, 16)).norm(dim=-1)[2].item(), 1.0, rel_tol=1e-6)
