"""`cope bench --train-step` on the tiny random checkpoint: exact token counts, the stage-2 parameter
split, weights that move (the tower's not), gradient checkpointing that recomputes without changing
the step, and the option combinations it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from cope.cli import build_parser, main
from cope.eval.bench import CONFIGS_BY_NAME, encode
from cope.eval.train_step import ANSWER_TOKENS, prepare_stage2, step_batch, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

# The checkpoint fixture (fusion 5, GOP 30) on the 61-frame integer clip: 3 GOPs of 6 slots; an RGB
# frame is 4×(4+1) = 20 positions (56-px image, 8-px patches, pooled to 4×4), a Δ-frame 2×(4+1) = 10.
VISUAL_TOKENS = {
    "cope_k1": 3 * 20 + 10 * 10,
    "cope_k2": 5 * 20 + 8 * 10,
    "iframes_k1": 3 * 20,
    "dense64": 61 * 20,  # 64 frames asked, the clip has 61
}


@pytest.fixture
def cache_env(monkeypatch, cache_dir):
    """The session's transcode cache, nothing under ~ (`cope bench` has no --cache-dir)."""
    monkeypatch.setenv("COPE_CACHE_DIR", str(cache_dir))


def load(checkpoint):
    from cope.model.videolm import CopeVideoLM

    return CopeVideoLM.from_pretrained(checkpoint, device="cpu", dtype="float32")


def opened(model, clip):
    from cope.codec.extract import open_video

    return open_video(clip, model.config.canonical)


def test_train_step_json(capsys, checkpoint, integer_clip, cache_env):
    configs = ",".join(VISUAL_TOKENS)
    args = [
        "bench",
        "--train-step",
        "--model",
        checkpoint,
        "--video",
        str(integer_clip),
        "--configs",
        configs,
    ]
    common = ["--repeats", "1", "--batch", "2", "--json", "--threads", "1", "--device", "cpu"]
    assert main([*args, *common]) == 0
    report = json.loads(capsys.readouterr().out)
    runs = {row["config"]: row for row in report["runs"]}
    assert {name: row["visual_tokens"] for name, row in runs.items()} == VISUAL_TOKENS

    model = load(checkpoint)
    video = opened(model, integer_clip)
    frozen = sum(p.numel() for p in model.vision_tower.parameters())
    trainable = sum(p.numel() for p in model.parameters()) - frozen
    assert report["trainable_parameters"] == trainable and report["frozen_parameters"] == frozen
    assert report["train_parts"] == ["delta_encoder", "projector", "llm"]
    assert report["threads"] == 1 and report["answer_tokens"] == ANSWER_TOKENS
    for name, row in runs.items():
        assert (
            row["visual_tokens"] == encode(model, video, CONFIGS_BY_NAME[name]).visual_tokens
        )  # as `cope bench`
        assert row["batch"] == 2 and row["trainable_parameters"] == trainable
        assert row["gradient_checkpointing"] is False
        assert (row["device"], row["dtype"]) == ("cpu", "float32")
        assert row["step_s"] > 0 and len(row["steps"]) == 1
        assert row["step_s"] == pytest.approx(row["forward_backward_s"] + row["optimizer_s"])
        assert row["peak_memory_bytes"] >= row["memory_before_bytes"] > 0
        assert row["loss"] > 0
    assert runs["dense64"]["sequence_tokens"] - runs["cope_k1"]["sequence_tokens"] == 61 * 20 - 160


def test_train_step_table_and_gradient_checkpointing_flag(capsys, checkpoint, integer_clip, cache_env):
    args = [
        "bench",
        "--train-step",
        "--model",
        checkpoint,
        "--video",
        str(integer_clip),
        "--configs",
        "cope_k1",
    ]
    assert main([*args, "--repeats", "1", "--gradient-checkpointing", "--no-memory", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "batch 1, gradient checkpointing on" in table
    assert "| cope_k1 | 160 |" in table and "not measured" in table


def test_default_configs():
    parse = build_parser().parse_args
    from cope.commands.bench import _configs

    assert _configs(parse(["bench", "--train-step"])) == "cope_k1,cope_k4,dense64"
    assert _configs(parse(["bench"])) == ",".join(CONFIGS_BY_NAME)
    assert _configs(parse(["bench", "--train-step", "--configs", "cope_k2"])) == "cope_k2"


def test_a_step_moves_the_trained_weights_not_the_tower(checkpoint, integer_clip, cache_env):
    model = load(checkpoint)
    optimizer = prepare_stage2(model)
    watched = {
        "projector": model.projector,
        "delta_encoder": model.delta_encoder,
        "llm": model.language_model,
        "lm_head": model.lm_head,
        "vision_tower": model.vision_tower,
    }
    before = {name: [p.detach().clone() for p in part.parameters()] for name, part in watched.items()}
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert model.vision_tower.training is False and model.language_model.training is True

    batch = step_batch(model, opened(model, integer_clip), CONFIGS_BY_NAME["cope_k1"], batch=2)
    assert len(batch.visuals) == 2 and batch.delta_frames == 10
    labelled = [int((labels != -100).sum()) for labels in batch.labels]
    assert labelled == [ANSWER_TOKENS] * 2  # only the answer is supervised
    step = train_step(model, optimizer, batch)
    assert step.loss > 0 and step.forward_backward_s > 0

    for name, part in watched.items():
        changed = any(
            not torch.equal(old, new) for old, new in zip(before[name], part.parameters(), strict=True)
        )
        assert changed == (name != "vision_tower"), name
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def two_steps(checkpoint, clip, checkpointing: bool) -> tuple[int, float, float]:
    """(calls of the first LLM layer's attention in the first step, first loss, second loss). The
    layer checkpoints its `forward` (hooks on the layer itself stay outside): count a module inside it."""
    model = load(checkpoint)
    optimizer = prepare_stage2(model, gradient_checkpointing=checkpointing)
    calls = []
    model.language_model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    batch = step_batch(model, opened(model, clip), CONFIGS_BY_NAME["cope_k2"], batch=2)
    first = train_step(model, optimizer, batch)
    layer_calls = len(calls)
    second = train_step(model, optimizer, batch)  # the loss after the first update
    return layer_calls, first.loss, second.loss


def test_gradient_checkpointing_recomputes_and_gives_the_same_step(checkpoint, integer_clip, cache_env):
    """With checkpointing, every LLM layer runs twice per step (forward, then again in backward);
    the loss and the update are those of the plain step."""
    plain = two_steps(checkpoint, integer_clip, checkpointing=False)
    recomputed = two_steps(checkpoint, integer_clip, checkpointing=True)
    assert plain[0] == 1 and recomputed[0] == 2
    assert recomputed[1] == pytest.approx(plain[1], rel=1e-6)
    assert recomputed[2] == pytest.approx(plain[2], rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train-step", "--dry-run"], "drop --dry-run"),
        (["--train-step", "--cold"], "drop --cold"),
        (["--train-step", "--compile"], "drop --compile"),
        (["--train-step", "--out", "{tmp}"], "drop --out"),
        (["--train-step", "--device", "meta"], "drop --device meta"),
        (["--train-step", "--batch", "0"], "--batch must be at least 1"),
        (["--batch", "2"], "need --train-step"),
        (["--gradient-checkpointing"], "need --train-step"),
        (["--train-step", "--configs", "cope_k9"], "unknown config"),
    ],
)
def test_refused_options(capsys, checkpoint, tmp_path, extra, message):
    args = ["bench", "--model", checkpoint, *(a.format(tmp=tmp_path / "out") for a in extra)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
