"""`cope bench --train-step`: the time and peak memory of one stage-2 training step per sampling config.

A step is what ``cope finetune`` does in stage 2 (``cope.train.finetune``), with the project's own
functions: ``set_trainable`` freezes the vision tower and trains the Δ-encoder, the projector (and
its row newline) and the LLM; ``enable_activation_checkpointing`` turns on gradient checkpointing;
``build_param_groups`` makes the AdamW groups (no weight decay on biases and norms). One step:

* ``CopeVideoLM.forward(input_ids, labels, visuals)`` on the batch, then ``loss.backward()``;
* the gradient-norm clip at 1.0 (``LoopConfig.max_grad_norm``), ``optimizer.step()``,
  ``optimizer.zero_grad(set_to_none=True)``.

Differences from ``cope finetune`` that matter when reading the numbers:

* everything is in the model's dtype (weights, gradients, AdamW moments; bf16 on CUDA by default),
  where ``cope finetune`` keeps float32 weights under accelerate's bf16 autocast;
* the frozen tower runs on every step (no ``TowerFeatureMemo``: training's first epoch, where
  the memo is still empty);
* AdamW's moments are created by the first (warm-up) step, so every timed step and the memory
  step hold them, as every step of a training run after the first does.

The batch: the bench video read once per config under that config's plan (the plan
``encode_video`` would embed, so ``visual_tokens`` equals ``cope bench``'s), repeated ``batch``
times, each sample one chat turn with ``BENCH_QUESTION`` and a fixed answer of exactly
``answer_tokens`` tokens, the only supervised positions.

Per config: one warm-up step, ``repeats`` timed steps (median ``step_s``), and, unless
``measure_memory`` is off, one more untimed step for the peak memory (``cope.eval.bench.PeakMemory``:
CUDA ``max_memory_allocated`` after a reset; on CPU the process's resident set size sampled every
2 ms, weights and libraries included: ``memory_before_bytes`` is the same measure just before).
The weights change with every step: the model is not fit for anything else afterwards.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cope.eval.bench import BENCH_QUESTION, BenchConfig, PeakMemory, report_header, rss_mb

TRAIN_STEP_CONFIGS = ("cope_k1", "cope_k4", "dense64")  # `--train-step` without --configs
ANSWER_TOKENS = 64  # supervised tokens per sample
# Repeated until it gives ANSWER_TOKENS tokens, then cut: the answer's content does not change the cost.
ANSWER_TEXT = "The blue star moves from the left edge to the right while the red square stays still. "
LEARNING_RATE = 1e-5  # small, so the weights stay sane over many steps; it does not change the cost
MAX_GRAD_NORM = 1.0  # LoopConfig's default clip
IGNORE_INDEX = -100


@dataclass
class StepBatch:
    """One config's training batch: the same sample ``batch`` times."""

    input_ids: list[torch.Tensor]  # B × (L,) with the video placeholder once
    labels: list[torch.Tensor]  # B × (L,), IGNORE_INDEX except on the answer
    visuals: list  # B × VisualInput (the same object: one video read)
    visual_tokens: int  # T per sample
    rgb_frames: int  # per sample
    delta_frames: int  # per sample

    @property
    def sequence_tokens(self) -> int:
        """LLM positions per sample: text without the placeholder + visual tokens."""
        return self.input_ids[0].shape[0] - 1 + self.visual_tokens


@dataclass
class StepTime:
    forward_backward_s: float
    optimizer_s: float  # clip + AdamW step + zero_grad
    loss: float

    @property
    def step_s(self) -> float:
        return self.forward_backward_s + self.optimizer_s


def stage2_parts(model) -> list[str]:
    """Stage 2's default ``train_parts``: the Δ-encoder (when the model has one), projector, LLM."""
    parts = ["projector", "llm"]
    return ["delta_encoder", *parts] if model.delta_encoder is not None else parts


def prepare_stage2(model, gradient_checkpointing: bool = False) -> torch.optim.Optimizer:
    """Freeze and unfreeze ``model`` as ``cope finetune`` stage 2 does; its AdamW over the trained parts."""
    from cope.train.finetune import (
        Stage2ModelConfig,
        enable_activation_checkpointing,
        named_parts,
        set_trainable,
    )
    from cope.train.loop import LoopConfig, build_param_groups

    settings = Stage2ModelConfig(
        base="",  # a name only: the model is already built
        train_parts=stage2_parts(model),
        gradient_checkpointing=gradient_checkpointing,
        cache_tower_features=False,
    )
    model.config.train_vision_tower = False  # the tower's forward runs without autograd
    model.base.config.use_cache = False  # as build_videolm: no KV cache in training
    set_trainable(model, settings)
    if gradient_checkpointing:
        enable_activation_checkpointing(model.base)
    model.train()
    model.vision_tower.eval()  # FinetuneTask.train_mode: a frozen part stays in eval mode
    loop = LoopConfig(learning_rate=LEARNING_RATE, max_grad_norm=MAX_GRAD_NORM)
    groups = build_param_groups(named_parts(model, settings), loop)
    return torch.optim.AdamW(
        groups, betas=(loop.adam_beta1, loop.adam_beta2), eps=loop.adam_eps, foreach=False
    )


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def visual_input(model, video, config: BenchConfig):
    """The raw entries ``config`` feeds the model: (VisualInput, TokenPlan).

    The plan is ``encode_video``'s (``mode_plan`` with the model's fusion and max_gops, the
    config's K or dense frame count), so the visual tokens are those of ``cope bench``. Training
    needs the frames, motion vectors and residuals themselves (``encode_video`` returns embeddings
    computed without autograd).
    """
    from cope.codec.primitives import IFrame
    from cope.model.inputs import VisualInput
    from cope.model.videolm.encoding import mode_plan

    settings = model.config
    dense_frames = config.dense_frames or settings.dense_frames
    plan, decoded = mode_plan(
        video,
        config.mode,
        settings.fusion,
        config.keyframes_per_gop or settings.keyframes_per_gop,
        settings.max_gops,
        dense_frames,
    )
    if config.mode == "dense":
        fps = video.info.fps
        entries = (IFrame(index, index / fps, 0, rgb) for index, rgb in video.dense_frames(dense_frames))
    else:
        entries = video.entries(decoded)
    return VisualInput.from_entries(entries, video.info.height, video.info.width, video.info.fps), plan


def answer_ids(model, count: int) -> torch.Tensor:
    """(count,) ids of a fixed answer text, cut to exactly ``count`` tokens."""
    from cope.model.videolm.prompting import tokenize

    ids = tokenize(model, ANSWER_TEXT * count)
    if ids.shape[0] < count:
        raise RuntimeError(f"the answer text gives {ids.shape[0]} tokens, fewer than {count}")
    return ids[:count]


def training_sample(model, answer_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of one turn: the rendered question up to the assistant header, then the
    answer. Only the answer is supervised, so every config trains on the same ``answer_tokens``."""
    from cope.model.videolm.prompting import render_chat, tokenize, video_turn

    prompt = tokenize(model, render_chat(model, [video_turn(model, BENCH_QUESTION)]))  # (Lp,)
    answer = answer_ids(model, answer_tokens)  # (A,)
    input_ids = torch.cat([prompt, answer])  # (Lp + A,)
    labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer])  # (Lp + A,)
    return input_ids, labels


def step_batch(
    model, video, config: BenchConfig, batch: int, answer_tokens: int = ANSWER_TOKENS
) -> StepBatch:
    """The video read once under ``config``, the sample repeated ``batch`` times."""
    visual, plan = visual_input(model, video, config)
    input_ids, labels = training_sample(model, answer_tokens)
    return StepBatch(
        input_ids=[input_ids] * batch,
        labels=[labels] * batch,
        visuals=[visual] * batch,
        visual_tokens=plan.tokens(model.config.layout),
        rgb_frames=visual.num_rgb,
        delta_frames=visual.num_delta,
    )


def train_step(model, optimizer: torch.optim.Optimizer, batch: StepBatch) -> StepTime:
    """One stage-2 step on ``batch``, timed (the device is synchronised before every clock read)."""
    from cope.model.videolm.encoding import synchronize

    trained = [p for group in optimizer.param_groups for p in group["params"]]
    synchronize(model.device)
    start = time.perf_counter()
    loss = model(batch.input_ids, batch.labels, batch.visuals).loss  # scalar, mean over B × A tokens
    loss.backward()
    synchronize(model.device)
    backward_done = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(trained, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(model.device)
    return StepTime(backward_done - start, time.perf_counter() - backward_done, float(loss.detach()))


def time_config(model, optimizer, batch: StepBatch, repeats: int, measure_memory: bool) -> dict:
    """One warm-up step, ``repeats`` timed ones, then the untimed memory step: one row of the report."""
    train_step(model, optimizer, batch)  # warm-up: kernels, allocator, AdamW moments
    times = [train_step(model, optimizer, batch) for _ in range(repeats)]
    row = {
        "step_s": statistics.median(t.step_s for t in times),
        "steps": [t.step_s for t in times],
        "forward_backward_s": statistics.median(t.forward_backward_s for t in times),
        "optimizer_s": statistics.median(t.optimizer_s for t in times),
        "loss": times[-1].loss,
    }
    if measure_memory:
        row["memory_before_bytes"] = current_memory_bytes(model.device)
        with PeakMemory(model.device) as memory:
            train_step(model, optimizer, batch)
        row["peak_memory_bytes"] = None if memory.peak_mb is None else round(memory.peak_mb * 2**20)
    return row


def current_memory_bytes(device: torch.device) -> int | None:
    """What ``PeakMemory`` measures, now: CUDA allocated bytes, else the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    rss = rss_mb()
    return None if rss is None else round(rss * 2**20)


def run_train_step(
    model,
    video_path: str | Path,
    configs: tuple[BenchConfig, ...],
    batch: int = 1,
    repeats: int = 3,
    gradient_checkpointing: bool = False,
    measure_memory: bool = True,
    answer_tokens: int = ANSWER_TOKENS,
    progress: bool = False,
) -> dict:
    """Time stage-2 steps of ``model`` for each config: the JSON object ``cope bench --train-step --json``
    prints. The configs run one after the other, with one optimizer over the whole run."""
    from tqdm import tqdm

    from cope.codec.extract import open_video

    if batch < 1 or repeats < 1:
        raise ValueError("batch and repeats must be at least 1")
    video = open_video(video_path, model.config.canonical, progress=progress)  # transcode outside clocks
    optimizer = prepare_stage2(model, gradient_checkpointing)
    trainable = trainable_parameters(model)
    common = {
        "batch": batch,
        "trainable_parameters": trainable,
        "gradient_checkpointing": gradient_checkpointing,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    rows = []
    for config in tqdm(configs, desc="train step", unit="config", disable=not progress, leave=False):
        samples = step_batch(model, video, config, batch, answer_tokens)
        row = {
            "config": config.name,
            "mode": config.mode,
            "keyframes_per_gop": config.keyframes_per_gop,
            "visual_tokens": samples.visual_tokens,
            "sequence_tokens": samples.sequence_tokens,
            "rgb_frames": samples.rgb_frames,
            "delta_frames": samples.delta_frames,
            **common,
            **time_config(model, optimizer, samples, repeats, measure_memory),
        }
        rows.append(row)
    return {
        "benchmark": "train_step",
        **report_header(model, video_path, video),
        **common,
        "frozen_parameters": sum(p.numel() for p in model.parameters()) - trainable,
        "train_parts": stage2_parts(model),
        "answer_tokens": answer_tokens,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "optimizer": f"AdamW lr {LEARNING_RATE:g}, grad-norm clip {MAX_GRAD_NORM}",
        "memory": None if not measure_memory else memory_method(model.device),
        "runs": rows,
    }


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated"
    return "cpu peak rss of the process (sampled every 2 ms, weights included)"


def format_train_step(report: dict) -> str:
    """Human-readable report: one line of set-up, one table row per config."""
    checkpointing = "on" if report["gradient_checkpointing"] else "off"
    lines = [
        f"`cope bench --train-step` — model `{report['model']}` on {report['device']} ({report['dtype']}, "
        f"{report['threads']} threads), batch {report['batch']}, gradient checkpointing {checkpointing}, "
        f"{report['answer_tokens']} answer tokens per sample, median of {report['repeats']} steps after warm-up",
        f"step = forward + backward + {report['optimizer']}; trained: {', '.join(report['train_parts'])} "
        f"({report['trainable_parameters']:,} parameters), frozen: "
        f"{report['frozen_parameters']:,} (vision tower); memory: {report['memory'] or 'not measured'}",
        "",
        "| config | visual tokens/sample | LLM positions/sample | **step s** | fwd+bwd s | optimizer s "
        "| peak GB | before GB | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        lines.append(
            f"| {row['config']} | {row['visual_tokens']} | {row['sequence_tokens']} | **{row['step_s']:.4f}** "
            f"| {row['forward_backward_s']:.4f} | {row['optimizer_s']:.4f} | {_gb(row.get('peak_memory_bytes'))} "
            f"| {_gb(row.get('memory_before_bytes'))} | {row['loss']:.3f} |"
        )
    return "\n".join(lines)


def _gb(value: int | None) -> str:
    return "–" if value is None else f"{value / 1e9:.3f}"
