"""The ``cope`` command.

Exit codes: 0 success, 2 bad usage or bad input (one line on stderr), 1 internal error.
``--json`` prints one JSON object on stdout; logs and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from cope import __version__
from cope.commands.common import Parser, add_canonical_options, open_cli_video
from cope.errors import CopeInputError

# Sub-commands that live in their own module ``cope.commands.<name>``, each exposing
# ``register(commands)`` that adds its parser to the sub-parsers. Modules must import heavy
# dependencies (torch, transformers, …) inside their command function, so ``cope --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "budget",
    "preprocess",
    "ask",
    "chat",
    "infer",
    "pretrain",
    "serve",
    "finetune",
    "motionqa",
    "bench",
    "eval",
)


def _check_plan_options(args, video) -> None:
    try:
        video.plan(fusion=args.fusion, keyframes_per_gop=getattr(args, "keyframes_per_gop", 1))
    except ValueError as exc:
        raise CopeInputError(str(exc)) from None


def cmd_inspect(args) -> int:
    video = open_cli_video(args)
    _check_plan_options(args, video)
    plans = video.standard_plans(args.fusion)
    report = {
        "source": video.source.to_dict(),
        "canonical": video.info.to_dict(),
        "plans": {name: plan.to_dict() for name, plan in plans.items()},
    }
    if args.plot:
        from cope.viz import plot_codec_view

        plot_codec_view(video, args.plot, args.fusion, name=Path(args.video).name)
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(_format_inspect(args.video, report))
    return 0


def _format_inspect(path, report: dict) -> str:
    lines = [f"{path}"]
    for label in ("source", "canonical"):
        s = report[label]
        t = s["frame_types"]
        lines.append(
            f"  {label:<9} {s['codec']:<8} {s['width']}x{s['height']} {s['fps']:.3g} fps  "
            f"{s['frames']} frames  {s['duration_s']:.2f} s  {s['gops']} GOPs  I/P/B = {t['I']}/{t['P']}/{t['B']}"
        )
    dense = report["plans"]["dense64"]["visual_tokens"] or 1
    lines.append("  plan        visual tokens   RGB frames   Δ-frames   % of dense64")
    for name, plan in report["plans"].items():
        lines.append(
            f"  {name:<10} {plan['visual_tokens']:>14} {plan['rgb_frames']:>12} {plan['delta_frames']:>10} "
            f"{100 * plan['visual_tokens'] / dense:>13.1f}"
        )
    return "\n".join(lines)


def cmd_extract(args) -> int:
    from cope.codec.primitives import IFrame
    from cope.npz import NpzStreamWriter

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CopeInputError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise CopeInputError(f"{out.parent}: output directory does not exist")
    video = open_cli_video(args)
    try:
        plan = video.plan(
            fusion=args.fusion, keyframes_per_gop=args.keyframes_per_gop, max_gops=args.max_gops
        )
    except ValueError as exc:
        raise CopeInputError(str(exc)) from None
    h, w = video.info.height, video.info.width
    arrays = {
        "iframe_index": ((), "int64"),
        "iframes": ((h, w, 3), "uint8"),
        "pframe_index": ((), "int64"),
        "pframe_ref_index": ((), "int64"),
        "mv": ((h, w, 2), "float32"),
        "residual": ((h, w, 3), "int16"),
    }
    with NpzStreamWriter(out, arrays) as writer:
        for entry in video.entries(plan, progress=True):
            if isinstance(entry, IFrame):
                writer.append("iframe_index", entry.index)
                writer.append("iframes", entry.rgb)
            else:
                writer.append("pframe_index", entry.index)
                writer.append("pframe_ref_index", entry.ref_index)
                writer.append("mv", entry.mv)
                writer.append("residual", entry.residual)
    summary = {"out": str(out), **plan.to_dict(), "frames": video.info.frames, "gops": len(plan.gops)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{out}: {summary['rgb_frames']} I-frames, {summary['delta_frames']} P-frames "
            f"({summary['visual_tokens']} visual tokens) from {summary['gops']} GOPs"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cope", description="Video language models that read video through its codec.")
    parser.add_argument("--version", action="version", version=f"cope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    inspect = commands.add_parser("inspect", help="stream summary, GOPs and token plans of a video")
    inspect.add_argument("video", help="any video file PyAV/FFmpeg can read")
    inspect.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    inspect.add_argument(
        "--plot", metavar="OUT.png", help="draw the GOP timeline, a motion field and a residual"
    )
    inspect.add_argument("--fusion", type=int, default=30, help="P-frames fused per Δ-frame (default: 30)")
    add_canonical_options(inspect)
    inspect.set_defaults(func=cmd_inspect)

    extract = commands.add_parser("extract", help="write I-frames, motion vectors and residuals to .npz")
    extract.add_argument("video", help="any video file PyAV/FFmpeg can read")
    extract.add_argument("--out", required=True, metavar="FILE.npz", help="output archive")
    extract.add_argument("--fusion", type=int, default=30, help="P-frames fused per Δ-frame; 1 = no fusion")
    extract.add_argument(
        "--keyframes-per-gop", type=int, default=1, help="RGB keyframes per GOP (1, 2, 4, …)"
    )
    extract.add_argument("--max-gops", type=int, default=64, help="GOP cap, uniform GOP sampling beyond")
    extract.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    extract.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_canonical_options(extract)
    extract.set_defaults(func=cmd_extract)

    for name in COMMAND_MODULES:
        importlib.import_module(f"cope.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CopeInputError as exc:
        print(f"cope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: one line, the traceback only on request
        if os.environ.get("COPE_DEBUG"):
            raise
        print(
            f"cope: internal error: {type(exc).__name__}: {exc} (set COPE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
