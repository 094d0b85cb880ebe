"""A smoke run of the CoPE-Tiny recipe: every step of `make tiny-model` (and the stage-1 and
equal-steps dense rows of `make tiny-table`), with its own configs, a few steps each on a handful
of MotionQA clips, through the same `cope` commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cope.cli import main

pytestmark = pytest.mark.slow  # every step of the CoPE-Tiny recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def run(*args: str) -> None:
    assert main([str(a) for a in args]) == 0


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line and "eval/" not in line]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    from cope.model.videolm import cope_tiny_init

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-recipe")
    motionqa = root / "motionqa"
    for split, clips in (("train", 16), ("val", 4)):
        run("motionqa", "generate", "--out", motionqa, "--split", split, "--clips", clips)
    lists = {}
    for split in ("train", "val"):
        lists[split] = root / f"{split}.list"
        lists[split].write_text(
            "".join(f"{p}\n" for p in sorted((motionqa / "videos").glob(f"{split}-*.mp4")))
        )
    everything = root / "all.list"
    everything.write_text(lists["train"].read_text() + lists["val"].read_text())
    run(
        "preprocess",
        everything,
        "--out",
        root / "cache",
        "--size",
        "128x128",
        "--cache-dir",
        root / "transcode",
    )
    cope_tiny_init().save_pretrained(root / "init")
    for name, source in (("train", "train-chat"), ("val", "val-chat"), ("appearance", "train-appearance")):
        (root / f"mix-{name}.yaml").write_text(
            f"sources:\n  - {{path: {motionqa / source}.json, video_root: {motionqa}, ratio: 1.0}}\n"
        )
    return root


def test_every_step_of_the_recipe_runs_and_learns(recipe):
    r = recipe
    common = ["--set", "train.save_every=0", "--set", "train.warmup_steps=1"]
    run(
        "motionqa",
        "pretrain-tower",
        CONFIGS / "tower.yaml",
        "--output-dir",
        r / "tower",
        *common,
        "--set",
        "train.max_steps=3",
        "--set",
        "train.per_device_batch_size=2",
        "--set",
        f"data.motionqa={r / 'motionqa'}",
        "--set",
        f"data.slot_cache={r / 'cache'}",
        "--set",
        f"model.base={r / 'init'}",
    )

    def finetune(name: str, mix: str, steps: int, base: Path, *more: str) -> None:
        run(
            "finetune",
            CONFIGS / f"{name}.yaml",
            "--output-dir",
            r / name,
            *common,
            *("--set", f"data.slot_cache={r / 'cache'}", "--set", "data.eval_mix=''"),
            *("--set", f"data.mix={r / mix}", "--set", f"train.max_steps={steps}"),
            *("--set", "train.per_device_batch_size=2", "--set", f"model.base={base}"),
            *more,
        )

    finetune("stage0-keyframes", "mix-appearance.yaml", 8, r / "tower" / "final")
    finetune("stage0", "mix-train.yaml", 2, r / "stage0-keyframes" / "final")
    finetune("stage2", "mix-train.yaml", 2, r / "stage0" / "final")  # a fresh Δ-encoder: no stage 1
    # The paper's recipe, trained by `make tiny-table` for the results table: stage 1, then stage 2 from it.
    run(
        "pretrain",
        CONFIGS / "stage1.yaml",
        "--output-dir",
        r / "stage1",
        *common,
        "--set",
        "train.max_steps=3",
        "--set",
        "train.per_device_batch_size=8",
        "--set",
        f"data.videos={r / 'train.list'}",
        "--set",
        f"data.eval_videos={r / 'val.list'}",
        "--set",
        f"data.store_dir={r / 'pairs'}",
        "--set",
        f"data.slot_cache={r / 'cache'}",
        "--set",
        f"data.transcode_cache={r / 'transcode'}",
        "--set",
        f"model.vision_encoder={r / 'stage0' / 'final'}",
    )
    finetune(
        "stage2-with-stage1",
        "mix-train.yaml",
        2,
        r / "stage0" / "final",
        *("--set", f"model.delta_encoder={r / 'stage1' / 'final'}"),
    )

    # The equal-steps dense baseline: stage 2's run on dense RGB, no Δ-encoder.
    finetune("stage2-dense", "mix-train.yaml", 2, r / "stage0" / "final")

    keyframes = losses(r / "stage0-keyframes")
    assert len(keyframes) == 8 and keyframes[-1] < keyframes[0]  # the answers' loss falls
    from cope.model.videolm import CopeVideoLM

    model = CopeVideoLM.from_pretrained(r / "stage2" / "final")
    assert model.delta_encoder is not None and model.config.layout.iframe_tokens == 56
    assert model.delta_encoder.config.token_grid == (2, 4)  # the fresh encoder is CoPE-Tiny's grid one
    with_stage1 = CopeVideoLM.from_pretrained(r / "stage2-with-stage1" / "final")
    assert with_stage1.delta_encoder.config.token_grid == (2, 4)
    dense = CopeVideoLM.from_pretrained(r / "stage2-dense" / "final")
    assert dense.delta_encoder is None and len(losses(r / "stage2-dense")) == 2
    tower = CopeVideoLM.from_pretrained(r / "tower" / "final").vision_tower.state_dict()
    for name, tensor in model.vision_tower.state_dict().items():  # frozen after its own step
        assert torch.equal(tensor, tower[name]), name
