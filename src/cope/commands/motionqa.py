"""``cope motionqa``: generate the MotionQA synthetic benchmark, summarise it, check its motion vectors.

cope motionqa generate --out DIR --split train --clips 3000 --seed 0 --workers 2
cope motionqa stats DIR --split test
cope motionqa verify DIR --split test --clips 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cope.commands.common import Parser, parse_size
from cope.errors import CopeInputError

SPLITS = ("train", "val", "test")  # cope.motionqa.SPLITS, repeated so --help needs no numpy import


def register(commands) -> None:
    parser = commands.add_parser("motionqa", help="the MotionQA synthetic video-QA benchmark")
    sub = parser.add_subparsers(
        dest="motionqa_command",
        metavar="{generate,stats,verify,pretrain-tower}",
        required=True,
        parser_class=Parser,
    )

    generate = sub.add_parser("generate", help="render clips and write questions for one split")
    generate.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    generate.add_argument("--split", required=True, choices=SPLITS, help="which split to generate")
    generate.add_argument("--clips", required=True, type=int, help="number of clips")
    generate.add_argument("--seed", type=int, default=0, help="seed; splits draw from disjoint streams (0)")
    generate.add_argument(
        "--size", type=parse_size, default=(128, 128), help="WIDTHxHEIGHT of the rendered video (128x128)"
    )
    generate.add_argument("--seconds", type=int, default=8, help="clip length in seconds, 8–60 (8 = one GOP)")
    generate.add_argument("--workers", type=int, default=1, help="processes rendering clips (1)")
    generate.add_argument(
        "--pan-speed",
        type=parse_speed_range,
        default=None,
        metavar="MIN,MAX",
        help="camera pans' speed range in frame sides per second, 0.02-0.3 (0.08,0.14: 10-22 px/s at 128 px)",
    )
    generate.add_argument(
        "--plans",
        type=lambda text: tuple(text.split(",")),
        default=None,
        metavar="PLAN[,PLAN]",
        help="write only the clips of the --clips-long schedule with these plans, e.g. pan (all)",
    )
    generate.add_argument("--overwrite", action="store_true", help="replace an existing split in DIR")
    generate.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    generate.set_defaults(func=cmd_generate)

    stats = sub.add_parser("stats", help="question types, answer balance, needs-motion share of a split")
    stats.add_argument("dir", type=Path, help="a directory made by `cope motionqa generate`")
    stats.add_argument("--split", required=True, choices=SPLITS)
    stats.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    stats.set_defaults(func=cmd_stats)

    verify = sub.add_parser(
        "verify", help="check that the codec's motion vectors follow the ground-truth trajectories"
    )
    verify.add_argument("dir", type=Path, help="a directory made by `cope motionqa generate`")
    verify.add_argument("--split", required=True, choices=SPLITS)
    verify.add_argument("--clips", type=int, default=None, help="check only the first N clips")
    verify.add_argument(
        "--cache-dir", type=Path, default=None, help="transcode cache (default: ~/.cache/cope)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_verify)

    tower = sub.add_parser(
        "pretrain-tower",
        help="teach a small vision tower what each patch shows (colour, shape) from the ground truth",
        description=(
            "Pre-train the vision tower of a CoPE checkpoint on MotionQA clips: every patch token "
            "predicts the colour and shape of the object covering it. The result (train.output_dir/final) "
            "is the checkpoint with the trained tower. The tiny recipe's first training step."
        ),
    )
    from cope.train.launch import add_run_options

    add_run_options(tower)
    tower.set_defaults(func=cmd_pretrain_tower)


def cmd_pretrain_tower(args) -> int:
    from cope.train.launch import is_main_process, load_stage_config, report
    from cope.train.tower import TowerPretrainConfig, run_tower_pretrain

    config = load_stage_config(args, TowerPretrainConfig)
    return report(run_tower_pretrain(config, resume=args.resume), args, is_main_process())


def parse_speed_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, e.g. 0.05,0.28, got {text!r}") from exc
    return lo, hi


def cmd_generate(args) -> int:
    from cope.motionqa import PAN_SPEED, generate_split

    summary = generate_split(
        args.out,
        args.split,
        args.clips,
        seed=args.seed,
        size=args.size,
        seconds=args.seconds,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=True,
        pan_speed=args.pan_speed or PAN_SPEED,
        plans=args.plans,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.out}: {summary['clips']} {args.split} clips, {summary['questions']} questions "
            f"({100 * summary['needs_motion_fraction']:.1f}% need motion) in {summary['elapsed_s']:.1f} s "
            f"({summary['clips_per_s']:.1f} clips/s, {summary['workers']} workers)"
        )
    return 0


def cmd_stats(args) -> int:
    from cope.motionqa import OBJECT_ANSWER_TYPES, load_split, question_stats

    stats = question_stats(load_split(args.dir, args.split))
    if args.json:
        print(json.dumps(stats))
        return 0
    print(
        f"{args.dir} {args.split}: {stats['questions']} questions, "
        f"{stats['needs_motion']} need motion ({100 * stats['needs_motion_fraction']:.1f}%)"
    )
    for qtype, t in stats["types"].items():
        if qtype in OBJECT_ANSWER_TYPES:  # object names vary per clip: show the answer's option slot
            answers = "option " + ", ".join(
                f"{chr(65 + int(k))} {n}" for k, n in t["answer_positions"].items()
            )
        else:
            answers = ", ".join(f"{a} {n}" for a, n in t["answers"].items())
        kind = "motion" if t["needs_motion"] else "appearance"
        print(
            f"  {qtype:<18} {kind:<10} {t['questions']:>6}  majority {100 * t['majority_share']:5.1f}%  {answers}"
        )
    return 0


def cmd_verify(args) -> int:
    from cope.motionqa import motion_vector_agreement

    if args.clips is not None and args.clips < 1:
        raise CopeInputError(f"--clips must be at least 1, got {args.clips}")
    report = motion_vector_agreement(args.dir, args.split, args.clips, args.cache_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.dir} {args.split}: {report['clips']} clips; MVs agree with the trajectories on "
            f"{100 * report['object_agreement']:.1f}% of {report['object_moves']} object moves and "
            f"{100 * report['pan_agreement']:.1f}% of {report['pan_moves']} camera pans"
        )
    return 0
