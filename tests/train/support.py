"""Plain helpers of the training tests: configs, subprocess runs that die on purpose, comparisons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


SIDE = 64  # canonical frame side: a 4×4 grid of 16-px Δ-encoder cells


def pretrain_config(path: Path, tower: Path, videos: Path, work: Path, shared: Path, **train) -> Path:
    """A stage-1 config for the tiny tower: canonical 64×64, GOP 30, fusion 5 (5 pairs per GOP)."""
    config = {
        "train": {
            "output_dir": str(work / "run"),
            "seed": 1,
            "max_steps": 8,
            "per_device_batch_size": 4,
            "learning_rate": 2e-3,
            "warmup_steps": 2,
            "save_every": 3,
            "eval_every": 0,
            "progress": False,
            **train,
        },
        "data": {
            "videos": str(videos),
            "eval_fraction": 0.25,
            "store_dir": str(shared / "pair-store"),
            "transcode_cache": str(shared / "transcode"),
            "fusion": 5,
            "gop": 30,
            "width": SIDE,
            "height": SIDE,
        },
        "model": {"vision_encoder": str(tower), "delta_encoder": "tiny"},
        "eval": {"batch_size": 8},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def finetune_config(
    path: Path, mixes: dict[str, Path], work: Path, shared: Path, model: dict | None = None, **train
) -> Path:
    """A stage-2 config for the tiny random VideoLM (image 32, canonical 64×64, 4 kf + 4 P per GOP)."""
    config = {
        "train": {
            "output_dir": str(work / "run"),
            "seed": 2,
            "max_steps": 6,
            "per_device_batch_size": 2,
            "learning_rate": 3e-3,
            "warmup_steps": 1,
            "save_every": 2,
            "progress": False,
            **train,
        },
        "data": {
            "mix": str(mixes["train"]),
            "eval_mix": str(mixes["val"]),
            "eval_max_samples": 2,
            "transcode_cache": str(shared / "transcode"),
            "max_length": 256,
        },
        "model": {
            "base": "tiny",
            "tiny": {"image_size": 32, "patch_size": 8, "canonical_side": SIDE, "text_width": 32},
            "delta_encoder_preset": "tiny",
            **(model or {}),
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cope_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    # The thread count of the in-process runs (``one_thread``): float reductions, and so the
    # bits of the weights, depend on it.
    env["OMP_NUM_THREADS"] = "1"
    return env


KILL_SCRIPT = """
import os, signal, sys
from cope.train.loop import Trainer
kill_after = int(sys.argv[1])
original = Trainer._optimizer_step
def step_then_die(self, micro_batches):
    record = original(self, micro_batches)
    if record["step"] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)   # a real crash: no cleanup, no final checkpoint
    return record
Trainer._optimizer_step = step_then_die
from cope.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_killed(kill_after: int, *cope_args: str) -> subprocess.CompletedProcess:
    """Run ``cope *cope_args`` in a subprocess that SIGKILLs itself right after optimizer step N."""
    return subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(kill_after), *cope_args],
        env=cope_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def checkpoint_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)
