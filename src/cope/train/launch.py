"""What ``cope pretrain`` and ``cope finetune`` share on the command line: options, config, report.

Both commands are the same entry point on a laptop and on a cluster:

    cope pretrain configs/tiny/stage1.yaml
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml --num_processes 8 \\
        -m cope.cli finetune configs/finetune-paper-7b.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_run_options(parser) -> None:
    parser.add_argument("config", type=Path, help="YAML training config (see configs/)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in train.output_dir from its latest checkpoint (start it if it has none)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax), e.g. --set train.max_steps=100; repeatable",
    )
    parser.add_argument("--output-dir", default=None, help="shorthand for --set train.output_dir=DIR")
    parser.add_argument("--json", action="store_true", help="print the run summary as one JSON object")


def load_stage_config(args, cls):
    from cope.train.config import load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={json.dumps(str(args.output_dir))}")
    return load_config(args.config, cls, overrides)


def report(result, args, is_main: bool) -> int:
    """Print the summary (main process only); exit code 130 when the run was interrupted."""
    summary = {
        "output_dir": str(result.output_dir),
        "final": str(result.final_dir) if result.final_dir else None,
        "step": result.step,
        "interrupted": result.interrupted,
        "train": result.last_metrics,
        "eval": result.eval_metrics,
    }
    if is_main:
        if args.json:
            print(json.dumps(summary))
        elif result.interrupted:
            print(
                f"interrupted at step {result.step}; checkpoint saved in {result.output_dir}/checkpoints "
                f"(rerun with --resume to continue)",
                file=sys.stderr,
            )
        else:
            loss = result.last_metrics.get("loss")
            loss_text = f", last loss {loss:.4g}" if loss is not None else ""
            print(f"{result.final_dir}: trained {result.step} steps{loss_text}")
            for name, value in result.eval_metrics.items():
                print(f"  {name:<24} {value:.4f}")
    return 130 if result.interrupted else 0


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
