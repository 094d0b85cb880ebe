"""The one training loop both stages use: accelerate, exact resume, deterministic data order.

A stage plugs in a ``TrainTask`` (its model, the named parts that train, its dataset, its loss,
its evaluation and its final artifact) and calls ``train(task, config)``. The same code runs on
one CPU, one GPU, multi-GPU DDP, FSDP and DeepSpeed: the engine comes from the ``accelerate
launch`` config (``configs/accelerate/``) or torchrun's environment, never from this file.

Data order is a pure function of (seed, epoch): step k of a run consumes the global batch
``perm(seed, epoch)[offset·G : (offset+1)·G]`` with ``G = per-device batch × processes ×
accumulation``, split into micro-batches the same way whatever the process count. A resumed run
therefore skips exactly the samples already consumed, and 2 processes × batch B see the same
micro-batches as 1 process × 2 accumulation steps × batch B.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cope.errors import CopeInputError
from cope.train import checkpoint as ckpt

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
FINAL_DIR = "final"


@dataclass
class LoopConfig:
    """Optimisation, schedule, logging and checkpointing: the ``train`` section of every config."""

    output_dir: str = "runs/train"  # checkpoints/, final/, metrics.jsonl, config.json
    seed: int = 0  # model init, data order (with the epoch) and every RNG
    max_steps: int = 1000  # optimizer steps; the cosine schedule spans them
    per_device_batch_size: int = 8  # samples per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-4  # LR of every part without its own entry below
    part_learning_rates: dict[str, float] = field(default_factory=dict)  # part name → LR
    # Multiply every LR by the number of processes (the paper states its stage-1 LR per GPU).
    scale_lr_with_processes: bool = False
    weight_decay: float = 0.0  # AdamW decoupled decay, on ≥2-D weights only (not biases/norms)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup from LR/warmup to LR
    min_lr_ratio: float = 0.0  # cosine decays to LR × this at max_steps
    max_grad_norm: float = 1.0  # global gradient-norm clip; 0 disables clipping
    # "auto": bf16 on a GPU that supports it, fp32 elsewhere; or "no", "bf16", "fp16".
    mixed_precision: str = "auto"
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    save_every: int = 500  # checkpoint every N steps (and always at the end / on SIGTERM)
    keep_last: int = 2  # checkpoints kept (older ones are deleted); 0 keeps all
    log_every: int = 1  # write a metrics line every N steps
    log_with: list[str] = field(default_factory=list)  # extra trackers: "tensorboard", "wandb"
    num_workers: int = 0  # DataLoader worker processes
    progress: bool = True  # tqdm bar on stderr (main process only)

    def __post_init__(self):
        checks = {
            "max_steps": self.max_steps >= 1,
            "per_device_batch_size": self.per_device_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "max_grad_norm": self.max_grad_norm >= 0,
            "eval_every": self.eval_every >= 0,
            "save_every": self.save_every >= 0,
            "keep_last": self.keep_last >= 0,
            "log_every": self.log_every >= 1,
            "num_workers": self.num_workers >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"train.{bad[0]} has an invalid value ({getattr(self, bad[0])!r})")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(
                f"train.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}"
            )
        unknown = [t for t in self.log_with if t not in ("tensorboard", "wandb")]
        if unknown:
            raise ValueError(f"train.log_with: unknown tracker {unknown[0]!r} (tensorboard, wandb)")


class TrainTask(ABC):
    """What a training stage provides to the loop. Methods run on every process."""

    def setup(self, accelerator) -> None:  # noqa: B027 - optional hook
        """Prepare data (feature caches, …) before the model is built; called once."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model, with ``requires_grad`` already set: frozen parts are frozen here."""

    @abstractmethod
    def parts(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters grouped by part name (each part gets its own LR)."""

    @abstractmethod
    def train_dataset(self) -> torch.utils.data.Dataset:
        """A map-style dataset (``len`` + ``__getitem__``); the loop decides the order."""

    def collate(self, samples: list) -> Any:
        return torch.utils.data.default_collate(samples)

    def train_mode(self, model: nn.Module) -> None:
        """Switch to training mode; override to keep frozen parts in eval mode (batch-norm stats)."""
        model.train()

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of one micro-batch and extra scalars to log."""

    def evaluate(self, model: nn.Module, accelerator) -> dict[str, float]:
        """Held-out metrics; called in eval mode under ``no_grad`` on every process."""
        return {}

    @abstractmethod
    def save_final(self, model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
        """Write the stage's artifact (main process only). ``state_dict`` is the full gathered one."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    output_dir: Path
    final_dir: Path | None  # None when interrupted before the end
    interrupted: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Data order


class StepBatchSampler(torch.utils.data.Sampler):
    """The index lists one process consumes, micro-batch by micro-batch, from ``start_step``.

    Global batch of step k: ``perm(seed, epoch)[o·G:(o+1)·G]``, epoch = k // steps per epoch,
    o = k mod steps per epoch (the remainder of an epoch that does not fill a global batch is
    dropped). Micro-batch j of process r takes the slice ``[(j·P + r)·B : (j·P + r + 1)·B]``.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        per_device_batch_size: int,
        num_processes: int,
        accumulation_steps: int,
        process_index: int,
        start_step: int,
        stop_step: int,
    ):
        self.num_samples = num_samples
        self.seed = seed
        self.batch = per_device_batch_size
        self.processes = num_processes
        self.accumulation = accumulation_steps
        self.rank = process_index
        self.start_step, self.stop_step = start_step, stop_step
        self.global_batch_size = per_device_batch_size * num_processes * accumulation_steps
        self.steps_per_epoch = num_samples // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of "
                f"{self.global_batch_size} (per-device batch × processes × accumulation)"
            )

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def global_batch(self, step: int) -> np.ndarray:
        offset = (step % self.steps_per_epoch) * self.global_batch_size
        return self.permutation(self.epoch_of(step))[offset : offset + self.global_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.stop_step):
            indices = self.global_batch(step)
            for j in range(self.accumulation):
                start = (j * self.processes + self.rank) * self.batch
                yield indices[start : start + self.batch].tolist()

    def __len__(self) -> int:
        return (self.stop_step - self.start_step) * self.accumulation


# --------------------------------------------------------------------------------------------
# Optimizer and schedule


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR factor of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_param_groups(
    parts: dict[str, list[tuple[str, nn.Parameter]]], config: LoopConfig, lr_scale: float = 1.0
) -> list[dict]:
    """One AdamW group per part (and a no-decay twin for biases/norms), each with its own LR."""
    unknown = sorted(set(config.part_learning_rates) - set(parts))
    if unknown:
        raise CopeInputError(
            f"train.part_learning_rates: unknown part {unknown[0]!r} (parts: {', '.join(parts)})"
        )
    groups = []
    for part, named in parts.items():
        lr = config.part_learning_rates.get(part, config.learning_rate) * lr_scale
        frozen = [name for name, p in named if not p.requires_grad]
        if frozen:
            raise ValueError(f"part {part!r} lists frozen parameter {frozen[0]}")
        decay = [p for _, p in named if p.ndim >= 2]
        no_decay = [p for _, p in named if p.ndim < 2]
        if decay:
            groups.append({"name": part, "params": decay, "lr": lr, "weight_decay": config.weight_decay})
        if no_decay:
            groups.append({"name": f"{part}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise CopeInputError("nothing to train: every part is frozen or empty")
    return groups


# --------------------------------------------------------------------------------------------
# The loop


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def prepare_output_dir(config: LoopConfig, resume: bool) -> Path | None:
    """Check the output directory; return the checkpoint to resume from (or None).

    Without ``resume`` the directory must be new or empty (a run is never overwritten). With it,
    the latest complete checkpoint is used, and a directory without one starts from scratch.
    """
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise CopeInputError(f"{out}: output_dir exists and is not a directory")
    latest = ckpt.latest_checkpoint(out)
    if not resume:
        if out.is_dir() and any(out.iterdir()):
            raise CopeInputError(
                f"{out}: output_dir already holds a run; pass --resume to continue it or choose another output_dir"
            )
        return None
    if latest is None:
        return None
    saved = ckpt.read_trainer_state(latest)
    if saved.seed != config.seed:
        raise CopeInputError(
            f"{latest}: the run used train.seed {saved.seed}; cannot resume with seed {config.seed}"
        )
    return latest


class MetricsLog:
    """``metrics.jsonl`` (main process): one JSON object per logged step or evaluation."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            # Lines a killed run wrote after its last checkpoint are redone: drop them.
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class _StopFlag:
    """SIGTERM / SIGINT ask the loop to finish the current step, checkpoint and stop."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):  # torch ≥ 2.6: CUDA, XPU, MPS, …
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _make_accelerator(config: LoopConfig):
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    trackers = []
    for name in config.log_with:
        available = is_tensorboard_available() if name == "tensorboard" else is_wandb_available()
        if available:
            trackers.append(name)
        else:
            print(
                f"cope: warning: train.log_with: {name} is not installed; logging to JSONL only",
                file=sys.stderr,
            )
    return Accelerator(
        # Without a GPU (or other accelerator) say so: accelerate then runs several processes on
        # the CPU with gloo instead of ignoring the launcher's world size.
        cpu=not _has_accelerator_device(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        log_with=trackers or None,
        project_dir=config.output_dir,
        step_scheduler_with_optimizer=False,
    )


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """The whole optimizer state keyed by parameter names, as plain CPU tensors on the main process.

    PyTorch's distributed state-dict API gathers FSDP shards (a collective: every process calls
    it) and is a plain ``state_dict`` with names for DDP and single-process runs, so a checkpoint
    does not depend on the number of processes that wrote it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


def _any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _save_state(stem: Path, state: dict) -> None:
    try:
        ckpt.save_state(stem, state)
    except TypeError as exc:  # e.g. an engine that keeps Python objects in its optimizer state
        raise RuntimeError(f"cannot checkpoint the optimizer state without pickling: {exc}") from exc


class Trainer:
    """One run of ``train``: the objects it builds and the steps it takes."""

    def __init__(self, task: TrainTask, config: LoopConfig, config_record: dict, resume: bool):
        from accelerate.utils import set_seed

        self.task, self.config = task, config
        self.out = Path(config.output_dir)
        resume_from = prepare_output_dir(config, resume)
        self.accelerator = acc = _make_accelerator(config)
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_FILE).write_text(json.dumps(config_record, indent=1))
        set_seed(config.seed)
        task.setup(acc)
        set_seed(config.seed)  # the model's initialisation does not depend on what setup drew
        model = task.build_model()
        parts = task.parts(model)
        # What a checkpoint holds: the trained parameters and every persistent buffer (batch-norm
        # running statistics change while training; frozen parameters come from the base model).
        persistent = set(model.state_dict())
        buffers = [name for name, _ in model.named_buffers() if name in persistent]
        self.saved_names = [name for named in parts.values() for name, _ in named] + buffers
        self.state = ckpt.TrainerState(
            step=0,
            epoch=0,
            samples_seen=0,
            seed=config.seed,
            global_batch_size=config.per_device_batch_size
            * acc.num_processes
            * config.gradient_accumulation_steps,
            num_processes=acc.num_processes,
            max_steps=config.max_steps,
        )
        if resume_from is not None:
            self._load_weights(model, resume_from)
        lr_scale = acc.num_processes if config.scale_lr_with_processes else 1.0
        groups = build_param_groups(parts, config, lr_scale)
        optimizer = torch.optim.AdamW(
            groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, foreach=False
        )
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: cosine_with_warmup(step, config.warmup_steps, config.max_steps, config.min_lr_ratio),
        )
        self.group_names = [g["name"] for g in groups]
        self.dataset = task.train_dataset()
        if resume_from is not None:
            self._load_training_state(resume_from)
        else:
            set_seed(config.seed, device_specific=True)  # dropout etc. differ per process
        self.metrics = MetricsLog(
            self.out / METRICS_FILE, acc.is_main_process, self.state.step if resume_from else None
        )
        self.resumed_from = resume_from

    # -- checkpoints --------------------------------------------------------------------------

    def _load_weights(self, model: nn.Module, directory: Path) -> None:
        weights = ckpt.load_weights(directory / "model.safetensors")
        missing = sorted(set(self.saved_names) - set(weights))
        unexpected = sorted(set(weights) - set(self.saved_names))
        if missing or unexpected:
            name = (missing or unexpected)[0]
            why = "lacks" if missing else "has a tensor this run does not train:"
            raise CopeInputError(f"{directory}: checkpoint {why} {name}")
        model.load_state_dict(weights, strict=False)

    def _load_training_state(self, directory: Path) -> None:
        acc = self.accelerator
        saved = ckpt.read_trainer_state(directory)
        if saved.global_batch_size != self.state.global_batch_size:
            raise CopeInputError(
                f"{directory}: the run used a global batch of {saved.global_batch_size}, this launch gives "
                f"{self.state.global_batch_size} (per-device batch × processes × accumulation); keep it equal"
            )
        if _is_deepspeed(acc):  # DeepSpeed's optimizer state is per process (its own partitions)
            if saved.num_processes != acc.num_processes:
                raise CopeInputError(
                    f"{directory}: DeepSpeed optimizer state was saved by {saved.num_processes} processes; "
                    f"resume with the same number (got {acc.num_processes})"
                )
            self.optimizer.load_state_dict(ckpt.load_state(directory / f"optimizer-rank{acc.process_index}"))
        else:
            state = ckpt.load_state(directory / "optimizer")
            load_full_optimizer_state(self.model, self.optimizer.optimizer, state)
        scheduler_state = json.loads((directory / "scheduler.json").read_text())
        self.scheduler.load_state_dict(scheduler_state)
        rng_file = directory / f"rng-rank{acc.process_index}"
        if not rng_file.with_suffix(".json").exists():  # more processes than the run had
            rng_file = directory / "rng-rank0"
        ckpt.set_rng_state(ckpt.load_state(rng_file))
        self.state.step, self.state.epoch, self.state.samples_seen = (
            saved.step,
            saved.epoch,
            saved.samples_seen,
        )

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of the current step (all processes take part)."""
        acc = self.accelerator
        final = ckpt.step_dir(self.out, self.state.step)
        tmp = final.with_name(final.name + ".tmp")
        full = acc.get_state_dict(self.model)  # collective under FSDP / ZeRO-3
        deepspeed = _is_deepspeed(acc)
        optimizer = None if deepspeed else full_optimizer_state(self.model, self.optimizer.optimizer)
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            ckpt.save_weights(tmp / "model.safetensors", {name: full[name] for name in self.saved_names})
            if optimizer is not None:
                _save_state(tmp / "optimizer", optimizer)
            # LambdaLR stores None for plain functions: the schedule is rebuilt from the config.
            (tmp / "scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
            ckpt.write_trainer_state(tmp, self.state)
        acc.wait_for_everyone()
        if deepspeed:
            _save_state(tmp / f"optimizer-rank{acc.process_index}", self.optimizer.state_dict())
        ckpt.save_state(tmp / f"rng-rank{acc.process_index}", ckpt.rng_state())
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            ckpt.prune_checkpoints(self.out, self.config.keep_last)
        acc.wait_for_everyone()
        return final

    def save_final(self) -> Path:
        acc = self.accelerator
        final = self.out / FINAL_DIR
        full = acc.get_state_dict(self.model)
        if acc.is_main_process:
            tmp = final.with_name(FINAL_DIR + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.task.save_final(acc.unwrap_model(self.model), full, tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        acc.wait_for_everyone()
        return final

    # -- steps --------------------------------------------------------------------------------

    def _sampler(self, start_step: int, stop_step: int) -> StepBatchSampler:
        acc, config = self.accelerator, self.config
        try:
            return StepBatchSampler(
                len(self.dataset),
                config.seed,
                config.per_device_batch_size,
                acc.num_processes,
                config.gradient_accumulation_steps,
                acc.process_index,
                start_step,
                stop_step,
            )
        except ValueError as exc:
            raise CopeInputError(f"training data: {exc}") from exc

    def _micro_batches(self) -> Iterator[Any]:
        """This process's micro-batches from the current step to the end, epoch by epoch.

        A dataset with ``set_epoch`` (e.g. per-epoch ratio subsets of a data mix) is told the epoch
        before its loader starts, so a resumed run sees the same epoch contents.
        """
        config = self.config
        size = len(self.dataset)
        step = self.state.step
        while step < config.max_steps:
            epoch = step // self.steps_per_epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
                if len(self.dataset) != size:
                    raise ValueError("the dataset's length changed between epochs")
            stop = min(config.max_steps, (epoch + 1) * self.steps_per_epoch)
            yield from torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self._sampler(step, stop),
                collate_fn=self.task.collate,
                num_workers=config.num_workers,
                # A private generator: creating the loader must not draw from the global RNG.
                generator=torch.Generator().manual_seed(config.seed),
            )
            step = stop

    def _train_mode(self) -> None:
        self.model.train()  # the engine's wrapper too
        self.task.train_mode(self.accelerator.unwrap_model(self.model))

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        # Evaluation must not change what training draws next.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            result = self.task.evaluate(self.model, self.accelerator)
        self._train_mode()
        return {f"eval/{k}": float(v) for k, v in result.items()}

    def _log(self, record: dict) -> None:
        self.metrics.write(record)
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def _optimizer_step(self, micro_batches) -> dict[str, float]:
        """Forward/backward over the step's micro-batches, clip, update; return the step's metrics."""
        from accelerate.utils import send_to_device

        acc, config = self.accelerator, self.config
        losses, extras = [], {}
        for batch in micro_batches:
            with acc.accumulate(self.model):  # no gradient all-reduce before the last micro-batch
                loss, metrics = self.task.loss(self.model, send_to_device(batch, acc.device))
                acc.backward(loss)  # scales by 1 / accumulation steps
            losses.append(loss.detach())
            for k, v in metrics.items():
                extras.setdefault(k, []).append(float(v))
        if not acc.sync_gradients:
            raise RuntimeError("the data loader ended in the middle of an optimizer step")
        # One all-reduce for the loss and the task's scalars: the record is the mean over processes.
        names = sorted(extras)
        local = torch.stack(
            [torch.stack(losses).mean().float().cpu()]
            + [torch.tensor(float(np.mean(extras[k]))) for k in names]
        )
        values = acc.reduce(local.to(acc.device), "mean").tolist()
        record = {"loss": values[0]} | dict(zip(names, values[1:], strict=True))
        if config.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            if grad_norm is not None:  # DeepSpeed clips internally and may not report it
                record["grad_norm"] = float(grad_norm)
        for name, group in zip(self.group_names, self.optimizer.param_groups, strict=True):
            if not name.endswith(".no_decay"):
                record[f"lr/{name}"] = group["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.samples_seen = self.state.step * self.state.global_batch_size
        self.state.epoch = self.state.step // self.steps_per_epoch
        return {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "samples": self.state.samples_seen,
        } | record

    def run(self) -> TrainResult:
        from tqdm import tqdm

        acc, config = self.accelerator, self.config
        result = TrainResult(self.state.step, self.out, None)
        if self.state.step >= config.max_steps and (self.out / FINAL_DIR).is_dir():
            result.final_dir = self.out / FINAL_DIR  # a finished run: nothing to do
            return result
        if self.resumed_from is not None and acc.is_main_process:
            print(f"cope: resuming {self.out} from {self.resumed_from.name}", file=sys.stderr)
        if acc.trackers:
            acc.init_trackers("cope", config={"seed": config.seed, "max_steps": config.max_steps})
        self.steps_per_epoch = self._sampler(0, 0).steps_per_epoch
        batches = self._micro_batches()
        bar = tqdm(
            total=config.max_steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=not (config.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        self._train_mode()
        stop = _StopFlag()
        with stop.installed(), bar:
            while self.state.step < config.max_steps:
                started = time.perf_counter()
                record = self._optimizer_step(itertools.islice(batches, config.gradient_accumulation_steps))
                record["step_s"] = time.perf_counter() - started
                result.last_metrics = record
                step = record["step"]
                if step % config.log_every == 0 or step == config.max_steps:
                    self._log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}")
                if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                    result.eval_metrics = self.evaluate()
                    self._log({"step": step, **result.eval_metrics})
                interrupted = _any_process(acc, stop.requested)
                periodic = config.save_every and step % config.save_every == 0
                if interrupted or periodic or step == config.max_steps:
                    self.save_checkpoint()
                if interrupted:
                    result.step, result.interrupted = step, True
                    return result
        result.step = self.state.step
        result.eval_metrics = self.evaluate()
        if result.eval_metrics:
            self._log({"step": self.state.step, **result.eval_metrics})
        result.final_dir = self.save_final()
        acc.end_training()
        return result


def train(
    task: TrainTask, config: LoopConfig, config_record: dict | None = None, resume: bool = False
) -> TrainResult:
    """Train ``task`` to ``config.max_steps`` (or until SIGTERM/SIGINT), checkpointing on the way.

    ``config_record`` is the whole stage config as plain data, written to ``config.json`` in the
    output directory. With ``resume`` the latest checkpoint in the output directory is continued.
    """
    trainer = Trainer(task, config, config_record or {"train": {"seed": config.seed}}, resume)
    return trainer.run()
