"""Stage 1 on a CPU in minutes: panning clips → `cope pretrain` (tiny recipe) → held-out evaluation.

    python benchmarks/stage1_pretrain_cpu.py --out /tmp/stage1-cpu [--clips 192] [--steps 1500]

The clips are MotionQA scenes (``cope.motionqa.render``: procedural backgrounds, coloured
shapes) whose camera pans with a new random velocity every second while 1–3 objects wander: every
1-s frame pair moves, so the codec's motion vectors and residuals carry what changed. 1/8 of the
clips are held out. Training is ``configs/pretrain-pan-benchmark.yaml`` with the data paths pointed here
(and ``--steps``).

Prints one JSON object: the training loss against the copy-reference baseline at the start and
the end, the held-out evaluation (cosine / MSE vs copying the reference frame, next-frame R@k vs the
vision tower), and the wall time of each phase.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pan_scene(rng: np.random.Generator, seconds: int):
    from cope.motionqa.render import Scene, SceneObject
    from cope.motionqa.scenes import draw_background, draw_looks

    background = draw_background(rng, "train")
    camera = [(0.0, 0.0)]
    for _ in range(seconds - 1):  # a new pan velocity every second, up to 15 % of the frame
        step = rng.uniform(-0.15, 0.15, size=2) * (rng.random() > 0.15)
        camera.append((camera[-1][0] + step[0], camera[-1][1] + step[1]))
    objects = []
    for look in draw_looks(rng, "train", int(rng.integers(1, 4))):
        position = rng.uniform(0.25, 0.75, size=2)
        track = [tuple(position)]
        for _ in range(seconds - 1):
            position = np.clip(position + rng.uniform(-0.1, 0.1, size=2), 0.1, 0.9)
            track.append(tuple(position))
        on_screen = [
            (round(x - cx, 4), round(y - cy, 4)) for (x, y), (cx, cy) in zip(track, camera, strict=True)
        ]
        objects.append(SceneObject(positions=on_screen, **look))
    return Scene(seconds, background, [(round(x, 4), round(y, 4)) for x, y in camera], objects)


def write_clips(folder: Path, clips: int, size: int, seconds: int, seed: int) -> None:
    from cope.codec.canonical import CanonicalSettings
    from cope.motionqa.render import render_frames, write_video

    folder.mkdir(parents=True, exist_ok=True)
    settings = CanonicalSettings()
    held_out = max(1, clips // 8)
    for i in range(clips):
        split = "val" if i < held_out else "train"
        path = folder / f"{split}-{i:05d}.mp4"
        if path.exists():
            continue
        scene = pan_scene(np.random.default_rng([seed, i]), seconds)
        write_video(render_frames(scene, size, size), path, size, size, settings.gop, settings.quantizer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working directory (clips, pair store, run)")
    parser.add_argument("--clips", type=int, default=192)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cope.cli import main as cope

    started = time.perf_counter()
    write_clips(args.out / "videos", args.clips, size=128, seconds=8, seed=args.seed)
    generated = time.perf_counter()
    run = args.out / "run"
    overrides = {
        "data.videos": str(args.out / "videos" / "train-*.mp4"),
        "data.eval_videos": str(args.out / "videos" / "val-*.mp4"),
        "data.store_dir": str(args.out / "pair-store"),
        "train.output_dir": str(run),
        "train.max_steps": args.steps,
    }
    argv = ["pretrain", str(REPO / "configs" / "pretrain-pan-benchmark.yaml"), "--json"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    if (run / "checkpoints").exists():
        argv.append("--resume")
    captured = io.StringIO()
    with redirect_stdout(captured):
        code = cope(argv)
    if code != 0:
        print(captured.getvalue(), file=sys.stderr)
        return code
    summary = json.loads(captured.getvalue())
    trained = time.perf_counter()

    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(s["loss"], s["copy_mse"]) for s in steps if "loss" in s]
    window = max(1, len(losses) // 20)  # first and last 5 % of the steps

    def mean(rows, column):
        return float(np.mean([row[column] for row in rows]))

    report = {
        "clips": args.clips,
        "steps": summary["step"],
        "train_loss_first": mean(losses[:window], 0),
        "train_copy_mse_first": mean(losses[:window], 1),
        "train_loss_last": mean(losses[-window:], 0),
        "train_copy_mse_last": mean(losses[-window:], 1),
        "held_out": {k.removeprefix("eval/"): v for k, v in summary["eval"].items()},
        "generate_s": round(generated - started, 1),
        "pretrain_s": round(trained - generated, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
