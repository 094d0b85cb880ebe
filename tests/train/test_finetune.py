"""Stage 2 (and stage 0): `cope finetune` on a tiny random VideoLM and generated MotionQA clips."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tests.train.support as tf
from cope.cli import main
from cope.train.config import load_config
from cope.train.finetune import FinetuneConfig, FinetuneTask, build_videolm

pytestmark = pytest.mark.slow  # stage-2 training runs, killed and resumed subprocesses

REPO = tf.REPO
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # batch-norm state in checkpoints


def initial_model(config_path):
    """The model a run starts from (same seed → same random initialisation)."""
    from accelerate.utils import set_seed

    config = load_config(config_path, FinetuneConfig)
    set_seed(config.train.seed)
    return build_videolm(config.model, config.data, config.train.seed)


def final_model(run_dir):
    from cope.model.videolm import CopeVideoLM

    return CopeVideoLM.from_pretrained(run_dir / "final")


def changed(before: dict, after: dict, prefix: str) -> list[bool]:
    names = [k for k in before if k.startswith(prefix)]
    assert names, prefix
    return [not torch.equal(before[k], after[k]) for k in names]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, motionqa_mix, shared_cache):
    """One uninterrupted stage-2 run: 10 steps, checkpoints every 2, evaluation at the end."""
    work = tmp_path_factory.mktemp("straight")
    config = tf.finetune_config(
        work / "a.yaml", motionqa_mix, work / "a", shared_cache, max_steps=10, learning_rate=1e-2
    )
    torch.set_num_threads(1)  # as every in-process run here (``one_thread``)
    assert main(["finetune", str(config), "--json"]) == 0
    return config, work / "a" / "run"


def test_finetune_learns_and_changes_only_the_trained_parts(straight_run):
    config, run = straight_run
    steps = tf.metrics(run)
    assert steps[-1]["step"] == 10 and steps[-1]["eval/tokens"] > 0
    losses = [m["loss"] for m in steps if "loss" in m]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])

    before = initial_model(config).state_dict()
    after = final_model(run).state_dict()
    assert before.keys() == after.keys()
    assert not any(changed(before, after, "base.model.vision_tower."))  # frozen by default
    for part in (
        "delta_encoder.",
        "base.model.multi_modal_projector.",
        "base.model.language_model.",
        "base.lm_head.",
    ):
        assert all(changed(before, after, part)), part
    assert not torch.equal(before["base.model.image_newline"], after["base.model.image_newline"])


def test_frozen_llm_stays_bit_identical(tmp_path, motionqa_mix, shared_cache):
    config = tf.finetune_config(
        tmp_path / "g.yaml",
        motionqa_mix,
        tmp_path / "g",
        shared_cache,
        model={"train_parts": ["delta_encoder", "projector"]},
        max_steps=2,
    )
    assert main(["finetune", str(config), "--set", "data.eval_mix=''"]) == 0
    before = initial_model(config).state_dict()
    after = final_model(tmp_path / "g" / "run").state_dict()
    for part in ("base.model.language_model.", "base.lm_head.", "base.model.vision_tower."):
        assert not any(changed(before, after, part)), part
    assert all(changed(before, after, "delta_encoder."))
    checkpoint = tf.checkpoint_weights(tmp_path / "g" / "run" / "checkpoints" / "step-00000002")
    assert {k.split(".")[0] for k in checkpoint} == {"delta_encoder", "base"}
    assert not any(k.startswith("base.model.language_model") for k in checkpoint)  # only what trains


def test_labels_supervise_only_the_answer(tmp_path, motionqa_mix, shared_cache):
    config = load_config(
        tf.finetune_config(tmp_path / "l.yaml", motionqa_mix, tmp_path / "l", shared_cache), FinetuneConfig
    )
    task = FinetuneTask(config)
    model = task.build_model()
    data = task.train_dataset()
    batch = task.collate([data[0], data[1]])
    for row, sample in enumerate([data[0], data[1]]):
        ids, labels = batch.input_ids[row], batch.labels[row]
        supervised = labels != -100
        answer = sample.conversation[-1]["content"]
        assert model.tokenizer.decode(labels[supervised]) == f"{answer} <|im_end|>"
        first = int(supervised.nonzero()[0])
        assert model.tokenizer.decode(ids[:first]).endswith("<|im_start|> assistant")  # the prompt is masked
        assert (ids == model.placeholder_id).sum() == 1
    assert batch.visual[0].kinds == ("I", "P", "I", "P", "I", "P", "I", "P")  # 4 keyframes + 4 P per GOP


def test_finetune_kill_and_resume_is_bit_identical(tmp_path, straight_run, motionqa_mix, shared_cache):
    """SIGKILL after step 5 (last checkpoint: 4), resume: the same weights as the uninterrupted run."""
    _, a = straight_run
    crashed = tf.finetune_config(
        tmp_path / "b.yaml", motionqa_mix, tmp_path / "b", shared_cache, max_steps=10, learning_rate=1e-2
    )
    tf.assert_killed(tf.run_killed(5, "finetune", str(crashed)))
    assert main(["finetune", str(crashed), "--resume"]) == 0
    b = tmp_path / "b" / "run"
    for step in ("step-00000008", "step-00000010"):
        tf.assert_bit_identical(
            tf.checkpoint_weights(a / "checkpoints" / step), tf.checkpoint_weights(b / "checkpoints" / step)
        )
    for name in ("base/model.safetensors", "delta_encoder.safetensors"):
        tf.assert_bit_identical(load_file(a / "final" / name), load_file(b / "final" / name))
    assert [m.get("loss") for m in tf.metrics(a)] == [m.get("loss") for m in tf.metrics(b)]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, motionqa_mix, shared_cache):
    """DDP over gloo (accelerate launch, the multi-GPU config) vs gradient accumulation in one process."""
    one = tf.finetune_config(
        tmp_path / "one.yaml",
        motionqa_mix,
        tmp_path / "one",
        shared_cache,
        per_device_batch_size=1,
        gradient_accumulation_steps=2,
        max_steps=3,
        save_every=0,
    )
    assert main(["finetune", str(one), "--set", "data.eval_mix=''"]) == 0
    two = tf.finetune_config(
        tmp_path / "two.yaml",
        motionqa_mix,
        tmp_path / "two",
        shared_cache,
        per_device_batch_size=1,
        gradient_accumulation_steps=1,
        max_steps=3,
        save_every=0,
    )
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "multi-gpu.yaml"),
        "--num_processes", "2", "--main_process_port", "29517",
        "-m", "cope.cli", "finetune", str(two), "--set", "data.eval_mix=''", "--json",
    ]  # fmt: skip
    proc = subprocess.run(launch, env=tf.cope_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 3  # one JSON object, main process
    last = {
        name: tf.checkpoint_weights(tmp_path / name / "run" / "checkpoints" / "step-00000003")
        for name in ("one", "two")
    }
    assert last["one"].keys() == last["two"].keys()
    # Batch-norm running statistics (the Δ-encoder's ResNet) are per-forward state, not training
    # results: accumulation updates them twice per step, DDP once per process. Compare parameters.
    parameters = [k for k in last["one"] if not k.endswith(BUFFERS)]
    assert len(parameters) > 100
    for key in parameters:
        # Reduction order differs (all-reduce vs accumulation): equal up to float32 rounding.
        torch.testing.assert_close(last["two"][key], last["one"][key], rtol=1e-5, atol=1e-6)
    losses = {
        run: [m["loss"] for m in tf.metrics(tmp_path / run / "run") if "loss" in m] for run in ("one", "two")
    }
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-5)


def test_lora_stage2_and_dense_stage0(tmp_path, motionqa_mix, shared_cache):
    lora = tf.finetune_config(
        tmp_path / "lora.yaml",
        motionqa_mix,
        tmp_path / "lora",
        shared_cache,
        model={"train_parts": ["llm"], "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
        max_steps=2,
        learning_rate=1e-2,
    )
    # With time words on: the slot cache's entries carry their times into the training embedding.
    assert main(["finetune", str(lora), "--set", "data.eval_mix=''", "--set", "model.time_words=true"]) == 0
    run = tmp_path / "lora" / "run"
    saved = tf.checkpoint_weights(run / "checkpoints" / "step-00000002")
    adapters = {k: v for k, v in saved.items() if not k.endswith(BUFFERS)}
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    before = initial_model(lora).state_dict()
    trained = final_model(run)
    assert trained.config.time_words
    after = trained.state_dict()  # loads without peft: adapters merged
    # The frozen Δ-encoder ran in eval mode: its batch-norm statistics did not move either.
    assert not any(changed(before, after, "delta_encoder."))
    q = "base.model.language_model.layers.0.self_attn.q_proj.weight"
    prefix = "base.model.language_model.base_model.model.layers.0.self_attn.q_proj"
    a, b = adapters[f"{prefix}.lora_A.default.weight"], adapters[f"{prefix}.lora_B.default.weight"]
    torch.testing.assert_close(after[q], before[q] + (b @ a) * (8 / 4))
    assert not torch.equal(after[q], before[q])
    for untouched in ("base.lm_head.weight", "base.model.language_model.embed_tokens.weight"):
        assert torch.equal(after[untouched], before[untouched])

    dense = tf.finetune_config(
        tmp_path / "dense.yaml",
        motionqa_mix,
        tmp_path / "dense",
        shared_cache,
        model={"delta_encoder": "none", "train_parts": ["projector", "llm"], "gradient_checkpointing": True},
        max_steps=1,
    )
    assert main(["finetune", str(dense), "--set", "data.mode=dense", "--set", "data.eval_mix=''"]) == 0
    stage0 = final_model(tmp_path / "dense" / "run")
    assert stage0.delta_encoder is None and stage0.config.mode == "dense" and not stage0.config.time_words
    assert not (tmp_path / "dense" / "run" / "final" / "delta_encoder.safetensors").exists()
