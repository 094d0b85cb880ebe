"""The Δ-encoder: shapes and sizes per config, normalisation, determinism, gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch

from cope.errors import CopeInputError
from cope.model.delta import DeltaEncoder, delta_encoder_config, normalize_motion
from cope.model.delta.modeling_delta import resolve_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def primitives(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random motion (pixels) and residual (−255…255) in the encoder's input format."""
    g = torch.Generator().manual_seed(seed)
    mv = torch.randn(batch, height, width, 2, generator=g) * 12
    residual = torch.randint(-255, 256, (batch, height, width, 3), generator=g).float()
    return mv, residual


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# The counts are a pure function of the config; they are printed in docs/delta-encoder.md.
@pytest.mark.parametrize(
    ("name", "params", "dim"),
    [("paper", 143_878_848, 1152), ("compact", 11_749_664, 1152), ("tiny", 263_440, 64)],
)
def test_parameter_count_and_output_shape_per_config(name, params, dim):
    config = delta_encoder_config(name)
    with torch.device("meta"):  # shapes and counts without allocating the 144M-parameter model
        encoder = DeltaEncoder(config)
        out = encoder(torch.empty(3, 384, 384, 2), torch.empty(3, 384, 384, 3))
    assert count(encoder) == params
    assert out.shape == (3, 8, dim)
    if name == "compact":
        assert params < 15_000_000  # the paper's stated size


def test_residual_grid_is_h_over_16_with_and_without_the_dilated_fourth_stage():
    _, residual = primitives(2, 96, 64)
    three = DeltaEncoder(delta_encoder_config("tiny")).residual_backbone
    four = DeltaEncoder(
        delta_encoder_config("tiny", resnet_hidden_sizes=(8, 16, 32, 48), resnet_depths=(1, 1, 1, 1))
    ).residual_backbone
    assert three(residual.permute(0, 3, 1, 2) / 255).shape == (2, 64, 6, 4)
    assert four(residual.permute(0, 3, 1, 2) / 255).shape == (2, 48, 6, 4)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (64, 96), (16, 16)])
def test_tiny_forward_any_multiple_of_16(height, width):
    encoder = DeltaEncoder(delta_encoder_config("tiny", output_dim=96))
    out = encoder(*primitives(2, height, width))
    assert out.shape == (2, 8, 96)
    assert torch.isfinite(out).all()


def test_bad_shapes_are_rejected():
    encoder = DeltaEncoder(delta_encoder_config("tiny"))
    mv, residual = primitives(1, 40, 48)
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(mv, residual)
    mv, residual = primitives(1, 32, 32)
    with pytest.raises(ValueError, match="residual"):
        encoder(mv, residual[:, :16])


def test_same_seed_same_model_same_output():
    mv, residual = primitives(2, 64, 64)
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(DeltaEncoder(delta_encoder_config("tiny")).eval()(mv, residual))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    encoder = DeltaEncoder(delta_encoder_config("tiny"))
    out = encoder(*primitives(2, 64, 64))
    (out * torch.randn_like(out)).sum().backward()
    without = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_motion_tokens_come_first_and_depend_only_on_motion():
    encoder = DeltaEncoder(delta_encoder_config("tiny")).eval()
    mv, residual = primitives(1, 64, 64)
    base = encoder(mv, residual)
    other_residual = encoder(mv, residual.flip(1))
    other_motion = encoder(-mv, residual)
    assert torch.equal(base[:, :4], other_residual[:, :4])  # motion tokens unchanged
    assert not torch.allclose(base[:, 4:], other_residual[:, 4:])
    assert torch.equal(base[:, 4:], other_motion[:, 4:])  # residual tokens unchanged
    assert not torch.allclose(base[:, :4], other_motion[:, :4])


def test_fixed_motion_normalisation_keeps_sign_zero_and_speed():
    config = delta_encoder_config("tiny", motion_max_displacement=32.0)
    mv = torch.zeros(2, 16, 16, 2)
    mv[0, ..., 0] = -2.0  # content moving right by 2 px
    mv[1, ..., 0] = -20.0
    mv[1, 0, 0] = torch.tensor([100.0, 8.0])  # beyond the maximum: clamped
    out = normalize_motion(mv, config)
    assert out[0, 5, 5].tolist() == [-2.0 / 32, 0.0]
    assert out[1, 5, 5].tolist() == [-20.0 / 32, 0.0]
    assert out[1, 0, 0].tolist() == [1.0, 0.25]
    assert torch.equal(torch.sign(out), torch.sign(mv))
    assert out.abs().max() == 1.0


def test_minmax_motion_normalisation_is_the_papers_per_frame_map():
    config = delta_encoder_config("tiny", motion_norm="minmax")
    slow, fast, static = torch.zeros(3, 16, 16, 2)
    slow[..., 0], fast[..., 0] = -2.0, -20.0
    slow[:8, :, 1], fast[:8, :, 1] = 2.0, 20.0
    out = normalize_motion(torch.stack([slow, fast, static]), config)
    assert out[:2].amin(dim=(1, 2, 3)).tolist() == [-1.0, -1.0]
    assert out[:2].amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    assert torch.equal(out[0], out[1])  # 2 px and 20 px look the same: absolute speed is gone
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # a constant field maps to 0, not −1


def test_save_load_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(3)
    encoder = DeltaEncoder(delta_encoder_config("tiny", motion_norm="minmax", output_dim=48))
    mv, residual = primitives(2, 64, 64)
    encoder(mv, residual)  # a train-mode pass moves the BatchNorm running statistics
    encoder.eval()
    encoder.save_pretrained(tmp_path / "enc")
    loaded = DeltaEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == encoder.config
    assert not loaded.training
    state, loaded_state = encoder.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    assert torch.equal(loaded(mv, residual), encoder(mv, residual))
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]


def test_save_refuses_to_overwrite_without_the_flag(tmp_path):
    encoder = DeltaEncoder(delta_encoder_config("tiny"))
    encoder.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(CopeInputError, match="already holds a checkpoint"):
        DeltaEncoder(delta_encoder_config("tiny")).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    DeltaEncoder(delta_encoder_config("tiny")).save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "model.safetensors").read_bytes() != before


def test_bad_checkpoints_raise_one_line_input_errors(tmp_path):
    with pytest.raises(CopeInputError, match="no such model directory"):
        resolve_checkpoint(tmp_path / "missing" / "dir")
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CopeInputError, match="config.json: not a readable JSON file"):
        DeltaEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "cope_delta_encoder", "widht": 3}')
    with pytest.raises(CopeInputError, match="unknown DeltaEncoderConfig fields: widht"):
        DeltaEncoder.from_pretrained(tmp_path)
    DeltaEncoder(delta_encoder_config("tiny")).save_pretrained(tmp_path / "small")
    (tmp_path / "small" / "config.json").write_text(
        '{"model_type": "cope_delta_encoder", "output_dim": 64, "width": 64, "num_heads": 4}'
    )
    with pytest.raises(CopeInputError, match="weights do not match config.json"):
        DeltaEncoder.from_pretrained(tmp_path / "small")
    with pytest.raises(CopeInputError, match="unknown Δ-encoder config"):
        delta_encoder_config("huge")


def test_residual_resnet_initialises_from_a_transformers_checkpoint(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(1)
    resnet = ResNetForImageClassification(
        ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic"
        )
    )
    resnet.save_pretrained(tmp_path / "resnet")  # as microsoft/resnet-18 is stored: "resnet." prefix
    config = delta_encoder_config("tiny", resnet_hidden_sizes=(16, 32, 64), resnet_depths=(1, 1, 1))
    encoder = DeltaEncoder(config)
    encoder.load_pretrained_resnet(tmp_path / "resnet")
    theirs = resnet.resnet.state_dict()
    ours = encoder.residual_backbone.resnet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # 3 kept stages; the 4th is ignored

    too_wide = DeltaEncoder(
        delta_encoder_config("tiny", resnet_hidden_sizes=(16, 32, 96), resnet_depths=(1, 1, 1))
    )
    with pytest.raises(CopeInputError, match="does not fit the residual branch"):
        too_wide.load_pretrained_resnet(tmp_path / "resnet")
    with pytest.raises(CopeInputError, match="cannot load a ResNet checkpoint"):
        encoder.load_pretrained_resnet(tmp_path / "nothing-here")


def test_bfloat16_weights_take_float32_primitives():
    encoder = DeltaEncoder(delta_encoder_config("tiny")).to(torch.bfloat16).eval()
    out = encoder(*primitives(1, 32, 32))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 8, 64)


def test_grid_tokens_one_per_cell_of_the_frame_in_row_major_order():
    config = delta_encoder_config("tiny", output_dim=48, token_grid=(2, 4))
    assert config.num_delta_tokens == 8
    encoder = DeltaEncoder(config).eval()
    out = encoder(*primitives(3, 128, 128))
    assert out.shape == (3, 8, 48)
    # Without its transformer, a grid compressor's token (i, j) is the projection of the mean
    # feature of its block of 16-px cells: rows 4i..4i+3, columns 2j..2j+1 of the 8 × 8 grid.
    compressor = encoder.motion_compressor
    compressor.transformer = torch.nn.Identity()
    features = torch.randn(1, 64, config.width)
    tokens = compressor(features, 8, 8)
    grid = features.view(8, 8, config.width)
    for i in range(2):
        for j in range(4):
            cell = grid[4 * i : 4 * i + 4, 2 * j : 2 * j + 2].reshape(-1, config.width).mean(0)
            torch.testing.assert_close(tokens[0, 4 * i + j], compressor.proj(cell))


def test_grid_tokens_carry_motion_and_residual_and_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = DeltaEncoder(delta_encoder_config("tiny", token_grid=(2, 4))).eval()
    mv, residual = primitives(1, 64, 64)
    base = encoder(mv, residual)
    assert not torch.allclose(base, encoder(-mv, residual))
    assert not torch.allclose(base, encoder(mv, residual.flip(1)))
    encoder.save_pretrained(tmp_path / "enc")
    loaded = DeltaEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config.token_grid == (2, 4)
    assert torch.equal(loaded(mv, residual), base)


@pytest.mark.parametrize("grid", [[2], [0, 4], [2, 4, 1]])
def test_a_bad_token_grid_is_a_one_line_input_error(grid):
    with pytest.raises(CopeInputError, match="token_grid"):
        delta_encoder_config("tiny", token_grid=grid)
