"""Stage 1: frame pairs, the feature cache, `cope pretrain` training, kill + resume, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tests.train.support as tf
from cope.cli import main
from cope.errors import CopeInputError
from cope.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow  # stage-1 training runs, killed and resumed subprocesses


def load(config_path):
    from cope.train.config import load_config
    from cope.train.pretrain import PretrainConfig

    return load_config(config_path, PretrainConfig)


def test_pairs_match_the_codec_and_the_tower(tmp_path, tiny_tower, pair_videos, shared_cache):
    """Every stored pair is the codec's fused P-frame; cached features equal the tower on the RGB."""
    from cope.codec.extract import open_video
    from cope.codec.primitives import PFrame
    from cope.data.pairs import FramePairDataset, prepare_pairs
    from cope.model.delta import frame_tokens
    from cope.train.pretrain import load_vision_tower

    config = load(
        tf.pretrain_config(tmp_path / "c.yaml", tiny_tower, pair_videos, tmp_path / "w", shared_cache)
    )
    tower, layer = load_vision_tower(config.model)
    assert layer == -2
    split = prepare_pairs(config.data, None, tower, "pooled", -2, progress=False)
    assert len(split.train_files) == 3 and len(split.eval_files) == 1  # 25 % held out, by video
    assert not set(split.train_files) & set(split.eval_files)
    # 61 frames, GOP 30, fusion 5: slots 0,5,…,25 | 30,…,55 | 60 → 5 + 5 pairs per video.
    assert len(split.train_dataset()) == 3 * 10 and len(split.eval_dataset()) == 10

    video = open_video(
        pair_videos / "clip0.mp4", config.data.canonical(), cache_dir=config.data.transcode_cache
    )
    pframes = [e for e in video.entries(video.plan(fusion=5), with_rgb=True) if isinstance(e, PFrame)]
    files = split.train_files + split.eval_files
    features = split.train_features + split.eval_features
    number = [open_source(f) for f in files].index(str(pair_videos / "clip0.mp4"))
    on_the_fly = FramePairDataset([files[number]])
    first = on_the_fly[0]
    np.testing.assert_array_equal(first["mv"].numpy(), pframes[0].mv)
    np.testing.assert_array_equal(first["residual"].numpy(), pframes[0].residual)
    np.testing.assert_array_equal(first["target_rgb"].numpy(), pframes[0].rgb)
    np.testing.assert_array_equal(on_the_fly[1]["reference_rgb"].numpy(), pframes[0].rgb)

    cached = FramePairDataset([files[number]], [features[number]])[3]
    rgb = on_the_fly[3]
    expected = frame_tokens(tower, torch.stack([rgb["reference_rgb"], rgb["target_rgb"]]), "pooled", -2)
    assert cached["reference_tokens"].shape == (4, 32)  # 4×4 patches pooled to 2×2, width 32
    torch.testing.assert_close(cached["reference_tokens"], expected[0])
    torch.testing.assert_close(cached["target_tokens"], expected[1])


def test_pairs_from_a_slot_cache_equal_pairs_from_the_codec(tmp_path, tiny_tower, pair_videos, shared_cache):
    """With data.slot_cache the store is filled from `cope preprocess` entries, without decoding."""
    from safetensors.torch import load_file

    from cope.data.cache import CacheSettings
    from cope.data.pairs import build_pair_store, store_file
    from cope.data.preprocess import PreprocessConfig, run_preprocess

    config = load(
        tf.pretrain_config(tmp_path / "c.yaml", tiny_tower, pair_videos, tmp_path / "w", shared_cache)
    )
    video = pair_videos / "clip1.mp4"
    (tmp_path / "list.txt").write_text(f"{video}\n")
    settings = CacheSettings(config.data.canonical(), config.data.fusion, config.data.max_gops)
    run_preprocess(
        PreprocessConfig(tmp_path / "list.txt", tmp_path / "slots", settings, workers=1, progress=False)
    )
    assert not build_pair_store([video], config.data, progress=False)  # from the codec (or already there)
    from_codec = load_file(store_file(config.data, video))
    config.data.slot_cache, config.data.store_dir = str(tmp_path / "slots"), str(tmp_path / "store")
    assert not build_pair_store([video], config.data, progress=False)
    from_cache = load_file(store_file(config.data, video))
    tf.assert_bit_identical(from_codec, from_cache)
    config.data.fusion = 10  # a cache made with other settings is refused, naming it
    with pytest.raises(CopeInputError, match="slot cache made with"):
        build_pair_store([video], config.data, progress=False)


def test_vision_tower_from_a_videolm(tmp_path):
    """A VideoLM checkpoint lends its own tower and feature layer; "tiny" builds the same one."""
    from cope.model.videolm import tiny_random
    from cope.train.pretrain import Stage1ModelConfig, load_vision_tower

    kwargs = {"image_size": 32, "patch_size": 8, "canonical_side": 64, "seed": 5}
    tiny_random(**kwargs).save_pretrained(tmp_path / "videolm")
    from_checkpoint, layer = load_vision_tower(Stage1ModelConfig(vision_encoder=str(tmp_path / "videolm")))
    built, built_layer = load_vision_tower(Stage1ModelConfig(vision_encoder="tiny", tiny=kwargs))
    assert layer == built_layer == -2
    tf.assert_bit_identical(from_checkpoint.state_dict(), built.state_dict())
    assert not any(p.requires_grad for p in from_checkpoint.parameters())


def open_source(store_file) -> str:
    from safetensors import safe_open

    with safe_open(str(store_file), "pt") as f:
        return f.metadata()["source"]


def test_pretrain_kill_and_resume_is_bit_identical(tmp_path, tiny_tower, pair_videos, shared_cache, capsys):
    """`cope pretrain` SIGKILLed after step 5 (checkpoint at 3) and resumed == an uninterrupted run."""
    straight = tf.pretrain_config(tmp_path / "a.yaml", tiny_tower, pair_videos, tmp_path / "a", shared_cache)
    assert main(["pretrain", str(straight), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 8 and summary["final"]
    assert {
        "eval/cosine",
        "eval/mse",
        "eval/copy_cosine",
        "eval/copy_mse",
        "eval/R@1",
        "eval/vision_R@5",
    } <= set(summary["eval"])

    crashed = tf.pretrain_config(tmp_path / "b.yaml", tiny_tower, pair_videos, tmp_path / "b", shared_cache)
    tf.assert_killed(tf.run_killed(5, "pretrain", str(crashed)))
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step-00000003"]
    assert main(["pretrain", str(crashed)]) == 2  # never silently overwrite a run
    assert main(["pretrain", str(crashed), "--resume"]) == 0

    for name in ("checkpoints/step-00000008", "checkpoints/step-00000006"):
        tf.assert_bit_identical(
            tf.checkpoint_weights(tmp_path / "a" / "run" / name),
            tf.checkpoint_weights(tmp_path / "b" / "run" / name),
        )
    final_a = tf.checkpoint_weights(tmp_path / "a" / "run" / "final")
    tf.assert_bit_identical(final_a, tf.checkpoint_weights(tmp_path / "b" / "run" / "final"))
    losses_a = [m["loss"] for m in tf.metrics(tmp_path / "a" / "run") if "loss" in m]
    losses_b = [m["loss"] for m in tf.metrics(tmp_path / "b" / "run") if "loss" in m]
    assert losses_a == losses_b and len(losses_a) == 8  # steps 4–5 redone, logged once

    # The final directory is a Δ pre-trainer checkpoint: the encoder loads on its own for stage 2.
    from cope.model.delta import DeltaEncoder

    encoder = DeltaEncoder.from_pretrained(tmp_path / "a" / "run" / "final")
    assert torch.equal(
        encoder.state_dict()["motion_compressor.queries"], final_a["encoder.motion_compressor.queries"]
    )

    # --eval-only scores the saved checkpoint on the held-out video, as training's last evaluation did.
    capsys.readouterr()
    assert main(["pretrain", str(straight), "--eval-only", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["eval"]
    assert evaluated["mse"] == pytest.approx(summary["eval"]["eval/mse"], rel=1e-5)
    assert evaluated["pairs"] == 10 and evaluated["queries"] == 10


def test_pretrain_on_the_fly_features_learn(tmp_path, tiny_tower, pair_videos, shared_cache, capsys):
    """Without the feature cache the tower runs in the step. The model starts at the copy-reference
    baseline (its heads predict a change); training moves it below the baseline, on held-out pairs too."""
    config = tf.pretrain_config(
        tmp_path / "c.yaml", tiny_tower, pair_videos, tmp_path / "c", shared_cache, max_steps=60, save_every=0
    )
    assert main(["pretrain", str(config), "--set", "data.precompute_features=false", "--json"]) == 0
    steps = [m for m in tf.metrics(tmp_path / "c" / "run") if "loss" in m]
    ratio = [m["loss"] / m["copy_mse"] for m in steps]  # < 1: better than copying the reference
    assert np.mean(ratio[-10:]) < 0.95 < np.mean(ratio[:5])
    held_out = json.loads(capsys.readouterr().out)["eval"]
    assert held_out["eval/mse"] < held_out["eval/copy_mse"]


def test_bad_configs_exit_2_with_one_line(tmp_path, tiny_tower, pair_videos, shared_cache, capsys):
    config = tf.pretrain_config(tmp_path / "d.yaml", tiny_tower, pair_videos, tmp_path / "d", shared_cache)
    assert main(["pretrain", str(config), "--set", "train.learning_rat=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'train.learning_rat'" in err and str(config) in err
    assert main(["pretrain", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["pretrain", str(config), "--set", "model.vision_encoder=/nonexistent/tower"]) == 2
    assert "/nonexistent/tower" in capsys.readouterr().err


def test_pair_store_key_is_stable():
    """The store directory is a hash of the settings that shape a pair; pinned so that a new
    setting elsewhere (CanonicalSettings.codec: pairs always read the canonical stream) does not
    silently orphan every store built before it."""
    from cope.data.pairs import PairDataConfig

    assert PairDataConfig().settings_key() == "34fd6c0c401fef76"
    assert PairDataConfig(fusion=10).settings_key() != "34fd6c0c401fef76"
