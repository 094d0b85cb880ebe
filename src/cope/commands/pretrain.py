"""``cope pretrain CONFIG [--resume] [--set K=V] [--eval-only [--checkpoint DIR]] [--json]``: stage 1."""

from __future__ import annotations

import json
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="stage 1: pre-train the Δ-encoder on frame pairs (resumable, multi-GPU via accelerate)",
        description=(
            "Pre-train the Δ-encoder to predict the frozen vision tower's tokens of frame t from frame "
            "t − s and the fused motion vectors and residual between them. Checkpoints go to "
            "train.output_dir/checkpoints, the result to train.output_dir/final. With --eval-only, "
            "evaluate a saved checkpoint on the held-out videos instead (cosine / MSE vs copying the "
            "reference frame, next-frame retrieval R@1/2/5 vs the vision tower)."
        ),
    )
    from cope.train.launch import add_run_options

    add_run_options(parser)
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate a checkpoint on the held-out videos, do not train"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="with --eval-only: a Δ pre-trainer checkpoint (default: train.output_dir/final)",
    )
    parser.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from cope.train.launch import is_main_process, load_stage_config, report
    from cope.train.pretrain import PretrainConfig, evaluate_checkpoint, run_pretrain

    config = load_stage_config(args, PretrainConfig)
    if args.eval_only:
        checkpoint = args.checkpoint or Path(config.train.output_dir) / "final"
        metrics = evaluate_checkpoint(config, checkpoint)
        if args.json:
            print(json.dumps({"checkpoint": str(checkpoint), "eval": metrics}))
        else:
            print(f"{checkpoint}: held-out evaluation")
            for name, value in metrics.items():
                print(f"  {name:<24} {value:.4f}")
        return 0
    result = run_pretrain(config, resume=args.resume)
    return report(result, args, is_main_process())
