"""Train CoPE-Tiny, the bundled default model, from nothing: ``make tiny-model`` runs this.

Steps (each a ``cope`` command; a step whose output exists is skipped, so a rerun resumes):
  1. MotionQA train / val / test clips (``cope motionqa generate``) at 128×128, and stage 2's
     own clips: a larger train split (9,000 clips whose first 3,000 are the train split's, but
     with camera pans at 6.4–45 px/s instead of 10–22) and the 900 pan clips of a second (seed 1)
     9,000-clip train split at the same speeds
  2. the slot cache of every clip (``cope preprocess``)
  3. the untrained model: ``cope_tiny_init()`` (MotionQA's closed vocabulary, random weights)
  4. the vision tower learns what each patch shows (``cope motionqa pretrain-tower configs/tiny/tower.yaml``)
  5. stage 0, part 1: reading one keyframe (``cope finetune configs/tiny/stage0-keyframes.yaml``)
  6. stage 0, part 2: dense-RGB base VideoLM (``cope finetune configs/tiny/stage0.yaml``)
  7. stage 2: interleaved fine-tuning with a fresh Δ-encoder (``cope finetune configs/tiny/stage2.yaml``)
  8. export to src/cope/assets/cope-tiny in float16 (``--export``)
No stage 1 by default: at this scale stage 2 from a fresh Δ-encoder reads motion better than from
the stage-1 one (docs/tiny-model.md). ``--ablation`` also trains, for the results table
(benchmarks/motionqa_table.py), the paper's recipe: stage-1 pre-training
(configs/tiny/stage1.yaml) then stage 2 from its encoder (stage2-with-stage1.yaml), and the
paper's free-query Δ-encoder with stage 1 (stage1-free-queries.yaml, stage2-free-queries.yaml),
and the equal-steps dense baseline: stage 2's run on dense RGB input (stage2-dense.yaml).
Wall time per step goes to build/tiny/recipe.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "tiny"
ASSET = ROOT / "src" / "cope" / "assets" / "cope-tiny"
SPLITS = {"train": 3000, "val": 200, "test": 1000}
# Stage 2 reads more clips than the tower and stages 0–1: 9,000 train clips, written to their own
# folder. Their first 3,000 are the train split above (a prefix of a longer split is the same as
# the shorter split) except for the camera pans, which move at a wider range of speeds: 10–22 px/s
# alone left the model naming the direction of real footage's pans in 50–67% of clips, 6.4–45 px/s
# with twice the pan clips (those of a seed-1 split added) in 100% (docs/tiny-model.md, v7 and v8).
STAGE2_TRAIN_CLIPS = 9000
STAGE2_PAN_SPEED = "0.05,0.28"  # frame sides per second, before MotionQA's ×1.0–1.25 jitter
COPE = [sys.executable, "-m", "cope.cli"]


def timed_step(step: str, done: Path, timings: dict, action) -> None:
    """Run ``action()`` unless ``done`` exists; its wall time goes into ``timings`` and recipe.json."""
    if done.exists():
        print(f"[{step}] done already ({done.relative_to(ROOT)})", file=sys.stderr)
        return
    started = time.perf_counter()
    action()
    timings[step] = round(time.perf_counter() - started, 1)
    record_timings(timings)


def run(step: str, command: list, done: Path, timings: dict) -> None:
    """One ``cope`` command as a step of the recipe."""
    command = [str(c) for c in command]

    def action() -> None:
        print(f"[{step}] {' '.join(command)}", file=sys.stderr)
        subprocess.run(command, cwd=ROOT, check=True)

    timed_step(step, done, timings, action)


def record_timings(timings: dict) -> None:
    """Merge into build/tiny/recipe.json after every step, so a killed run keeps its record."""
    record = BUILD / "recipe.json"
    previous = json.loads(record.read_text()) if record.exists() else {}
    record.write_text(json.dumps({**previous, **timings}, indent=1) + "\n")


def data_steps(timings: dict, workers: int) -> None:
    motionqa = BUILD / "motionqa"
    for split, clips in SPLITS.items():
        generate_step(f"motionqa-{split}", motionqa, split, clips, timings, workers)
    lists = []
    for split in SPLITS:
        lists.append(video_list(motionqa, split))
        (BUILD / f"{split}.list").write_text(lists[-1])
    everything = BUILD / "all.list"
    everything.write_text("".join(lists))
    preprocess_step("preprocess", everything, BUILD / "cache" / ".complete", timings, workers)
    stage2_data_steps(timings, workers)


def stage2_data_steps(timings: dict, workers: int) -> None:
    """Stage 2's clips (configs/tiny/mix-train-stage2.yaml), in the same slot cache."""
    faster_pans = ("--pan-speed", STAGE2_PAN_SPEED)
    stage2, pans = BUILD / "motionqa-stage2", BUILD / "motionqa-pans"
    generate_step(
        "motionqa-train-stage2", stage2, "train", STAGE2_TRAIN_CLIPS, timings, workers, options=faster_pans
    )
    only_pans = ("--plans", "pan", *faster_pans)
    generate_step(
        "motionqa-train-pans", pans, "train", STAGE2_TRAIN_CLIPS, timings, workers, seed=1, options=only_pans
    )
    videos = BUILD / "train-stage2.list"
    videos.write_text(video_list(stage2, "train") + video_list(pans, "train"))
    preprocess_step("preprocess-stage2", videos, BUILD / "cache" / ".complete-stage2", timings, workers)


def generate_step(
    step: str,
    out: Path,
    split: str,
    clips: int,
    timings: dict,
    workers: int,
    seed: int = 0,
    options: tuple = (),
) -> None:
    """``cope motionqa generate`` of one split into ``out``, with further ``options``; done once its
    chat file exists."""
    generate = [*COPE, "motionqa", "generate", "--out", out, "--split", split]
    generate += ["--clips", clips, "--seed", seed, "--workers", workers, *options]
    run(step, generate, out / f"{split}-chat.json", timings)


def video_list(motionqa: Path, split: str) -> str:
    """The split's clip paths, one per line, sorted: a ``cope preprocess`` list file's text."""
    return "".join(f"{p}\n" for p in sorted((motionqa / "videos").glob(f"{split}-*.mp4")))


def preprocess_step(step: str, videos: Path, done: Path, timings: dict, workers: int) -> None:
    """``cope preprocess`` of the listed videos into build/tiny/cache at 128×128; ``done`` marks it."""
    preprocess = [*COPE, "preprocess", videos, "--out", BUILD / "cache", "--size", "128x128"]
    preprocess += ["--workers", workers, "--cache-dir", BUILD / "transcode"]
    run(step, preprocess, done, timings)
    done.touch()


def init_model(timings: dict) -> None:
    def action() -> None:
        from cope.model.videolm import cope_tiny_init

        cope_tiny_init(seed=0).save_pretrained(BUILD / "init")

    timed_step("init", BUILD / "init" / "config.json", timings, action)


def export(overwrite: bool) -> None:
    """The stage-2 model in float16 (half the bytes; it runs in float32 after loading)."""
    import torch

    from cope.model.videolm import CopeVideoLM

    if ASSET.exists() and not overwrite:
        raise SystemExit(f"{ASSET} exists: pass --overwrite to replace the bundled model")
    model = CopeVideoLM.from_pretrained(BUILD / "stage2" / "final", dtype=torch.float32)
    staging = ASSET.with_name(ASSET.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.float16).save_pretrained(staging)
    shutil.rmtree(ASSET, ignore_errors=True)
    staging.rename(ASSET)
    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    print(f"exported {ASSET.relative_to(ROOT)} ({size / 1e6:.1f} MB)", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ablation", action="store_true", help="also the stage-1 and free-query rows")
    parser.add_argument("--export", action="store_true", help="copy the result to src/cope/assets/cope-tiny")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundled model")
    args = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data_steps(timings, args.workers)
    init_model(timings)
    stages = [
        ("tower", ["motionqa", "pretrain-tower"]),
        ("stage0-keyframes", ["finetune"]),
        ("stage0", ["finetune"]),
        ("stage2", ["finetune"]),
    ]
    if args.ablation:
        stages += [
            ("stage1", ["pretrain"]),
            ("stage2-with-stage1", ["finetune"]),
            ("stage1-free-queries", ["pretrain"]),
            ("stage2-free-queries", ["finetune"]),
            ("stage2-dense", ["finetune"]),
        ]
    for name, command in stages:
        output = BUILD / name
        resume = ["--resume"] if output.exists() else []
        run(
            name,
            [*COPE, *command, ROOT / "configs" / "tiny" / f"{name}.yaml", *resume],
            output / "final",
            timings,
        )
    print(json.dumps({"wall_s": timings, "total_s": round(sum(timings.values()), 1)}))
    if args.export:
        export(args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
