"""The generic loop: data order, schedule, no-pickle state, interruption and resume (toy task)."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch

import tests.train.support as tf
from cope.errors import CopeInputError
from cope.train import checkpoint as ckpt
from cope.train.config import load_config
from cope.train.loop import (
    StepBatchSampler,
    Trainer,
    build_param_groups,
    cosine_with_warmup,
    train,
)
from tests.train.toy_task import ToyTask, toy_config


def micro_batches(processes: int, accumulation: int, start: int = 0, stop: int = 6) -> list[list[list[int]]]:
    """Per step, the micro-batches of every process, in (accumulation step, process) order."""
    samplers = [
        StepBatchSampler(20, 5, 2, processes, accumulation, rank, start, stop) for rank in range(processes)
    ]
    streams = [list(s) for s in samplers]
    steps = []
    for step in range(stop - start):
        batches = []
        for j in range(accumulation):
            for rank in range(processes):
                batches.append(streams[rank][step * accumulation + j])
        steps.append(batches)
    return steps


def test_sampler_geometry_and_resume():
    # 2 processes × 1 micro-batch and 1 process × 2 accumulation see the same micro-batches.
    assert micro_batches(processes=2, accumulation=1) == micro_batches(processes=1, accumulation=2)
    # Starting at step 3 continues exactly where an uninterrupted run is at step 3.
    assert micro_batches(1, 2, start=3) == micro_batches(1, 2)[3:]
    # An epoch (20 samples, global batch 4 → 5 steps) uses each sample once; epochs differ.
    steps = micro_batches(1, 2, stop=10)
    epoch0 = sorted(i for step in steps[:5] for batch in step for i in batch)
    epoch1 = [i for step in steps[5:] for batch in step for i in batch]
    assert epoch0 == list(range(20))
    assert sorted(epoch1) == list(range(20)) and epoch1 != [i for s in steps[:5] for b in s for i in b]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 0, 2, 1, 2, 0, 0, 1)


def test_cosine_schedule_with_warmup():
    assert [cosine_with_warmup(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_with_warmup(8, 4, 12) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_with_warmup(12, 4, 12, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(6, 0, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(
        [{"params": [model.weight], "name": "w", "lr": 0.1}, {"params": [model.bias], "lr": 1e-5}],
        betas=(0.9, 0.95),
    )
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["odd"] = (float("inf"), None, True, 1 / 3)
    ckpt.save_state(tmp_path / "opt", state)
    raw = (tmp_path / "opt.json").read_text()
    assert "__tensor__" in raw and b"pickle" not in (tmp_path / "opt.safetensors").read_bytes()[:200]
    loaded = ckpt.load_state(tmp_path / "opt")
    assert loaded["param_groups"] == state["param_groups"]  # tuples, int keys, exact floats
    assert loaded["state"].keys() == state["state"].keys() == {0, 1}
    for key, value in state["state"][0].items():
        assert torch.equal(loaded["state"][0][key], value)
    with pytest.raises(TypeError, match="without pickling"):
        ckpt.flatten_state({"bad": object()})


def test_rng_state_round_trips(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    ckpt.save_state(tmp_path / "rng", ckpt.rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "rng"))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_sigterm_checkpoints_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """SIGTERM mid-run: the step finishes, a checkpoint is written, the run stops; resuming it
    reaches the same weights as a run never interrupted (dropout and 2 epochs included)."""
    straight = train(ToyTask(), toy_config(tmp_path / "a", max_steps=16))
    assert straight.step == 16 and straight.final_dir is not None

    original = Trainer._optimizer_step

    def step_then_signal(self, micro_batches):
        record = original(self, micro_batches)
        if record["step"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_signal)
    stopped = train(ToyTask(), toy_config(tmp_path / "b", max_steps=16))
    monkeypatch.undo()
    assert stopped.interrupted and stopped.step == 7 and stopped.final_dir is None
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["step-00000006", "step-00000007"]

    with pytest.raises(CopeInputError, match="already holds a run"):
        train(ToyTask(), toy_config(tmp_path / "b", max_steps=16))
    resumed = train(ToyTask(), toy_config(tmp_path / "b", max_steps=16), resume=True)
    assert resumed.step == 16
    tf.assert_bit_identical(
        tf.checkpoint_weights(tmp_path / "a" / "final"), tf.checkpoint_weights(tmp_path / "b" / "final")
    )
    # The frozen part is not in checkpoints and never changed.
    assert not any(
        k.startswith("frozen_embed") for k in tf.checkpoint_weights(ckpt.latest_checkpoint(tmp_path / "b"))
    )
    assert [m.get("loss") for m in tf.metrics(tmp_path / "a")] == [
        m.get("loss") for m in tf.metrics(tmp_path / "b")
    ]
    # Resuming a finished run does nothing.
    again = train(ToyTask(), toy_config(tmp_path / "b", max_steps=16), resume=True)
    assert again.step == 16 and again.final_dir == tmp_path / "b" / "final"
    # Another global batch cannot continue this data order.
    with pytest.raises(CopeInputError, match="global batch"):
        train(ToyTask(), toy_config(tmp_path / "b", max_steps=20, per_device_batch_size=2), resume=True)


def test_param_groups_per_part():
    model = ToyTask().build_model()
    parts = ToyTask().parts(model)
    groups = build_param_groups(parts, toy_config("x", weight_decay=0.1))
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-2 and by_name["body"]["lr"] == 3e-2
    assert by_name["body"]["weight_decay"] == 0.1 and by_name["body.no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in by_name["body.no_decay"]["params"])
    with pytest.raises(CopeInputError, match="unknown part 'neck'"):
        build_param_groups(parts, toy_config("x", part_learning_rates={"neck": 1.0}))


def test_config_errors_name_the_file_and_key(tmp_path):
    from cope.train.pretrain import PretrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 10\n  learning_rate: 1e-4\n")
    config = load_config(path, PretrainConfig, ["train.warmup_steps=3"])
    assert config.train.learning_rate == 1e-4 and config.train.warmup_steps == 3  # "1e-4" is YAML 1.1 str
    for text, message in [
        ("train:\n  max_step: 10\n", "unknown key 'train.max_step'"),
        ("train:\n  max_steps: ten\n", "train.max_steps must be int"),
        ("train:\n  max_steps: 0\n", "train.max_steps has an invalid value"),
        ("trian: {}\n", "unknown key 'trian'"),
        ("- a\n", "must be a mapping"),
    ]:
        path.write_text(text)
        with pytest.raises(CopeInputError, match=message) as error:
            load_config(path, PretrainConfig)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(p.name for p in (tf.REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    from cope.train.finetune import FinetuneConfig
    from cope.train.pretrain import PretrainConfig

    path = tf.REPO / "configs" / name
    config = load_config(path, PretrainConfig if name.startswith("pretrain") else FinetuneConfig)
    assert config.train.max_steps > 0
    assert (
        path.read_text().startswith("#") and "cope " in path.read_text().split("\ntrain:")[0]
    )  # says how to run
