"""The ``cope`` command.

Exit codes: 0 success, 2 bad usage or bad input (one line on stderr), 1 internal error,
128 + signal number when stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129).
``--json`` prints one JSON object on stdout; logs and progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from cope import __version__
from cope.commands.common import (
    Parser,
    add_adaptive_keyframes_option,
    add_canonical_options,
    add_workers_option,
    check_output,
    check_plan_args,
    open_cli_video,
    warn_decode_errors,
    warn_scene_cuts,
    warn_without_deltas,
)
from cope.errors import CopeInputError
from cope.plan import DEFAULT_FUSION, MAX_GOPS

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


def cmd_inspect(args) -> int:
    check_plan_args(args)  # before any decoding: bad options fail at once
    video = open_cli_video(args)
    check_plan_args(args, video=video)
    plans = video.standard_plans(args.fusion)
    gop = video.plan_gop(args.fusion)
    warn_without_deltas(args.video, plans["cope_k1"], video.info.frames, gop, args.fusion, 1)
    report = {
        "source": video.source.to_dict(),
        "canonical": video.info.to_dict(),
        "plans": {name: plan.to_dict() for name, plan in plans.items()},
        "scene_cuts": video.scan.scene_cuts,
    }
    if args.plot:
        from cope.viz import plot_codec_view

        plot_codec_view(video, args.plot, args.fusion, name=Path(args.video).name)
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        native = video.canonical is None and not args.no_transcode  # read in its own codec
        print(_format_inspect(args.video, report, "native" if native else "canonical"))
    return 0


def _format_inspect(path, report: dict, stream_label: str = "canonical") -> str:
    """The human-readable report; ``stream_label`` names the stream read (canonical or native)."""
    lines = [f"{path}"]
    for key, label in (("source", "source"), ("canonical", stream_label)):
        s = report[key]
        t = s["frame_types"]
        kinds = "/".join(t)  # I/P/B, and S when the source has GMC sprite frames
        lines.append(
            f"  {label:<9} {s['codec']:<8} {s['width']}x{s['height']} {s['fps']:.3g} fps  "
            f"{s['frames']} frames  {s['duration_s']:.2f} s  {s['gops']} GOPs  "
            f"{kinds} = {'/'.join(str(n) for n in t.values())}"
        )
    dense = report["plans"]["dense64"]["visual_tokens"] or 1
    lines.append("  plan        visual tokens   RGB frames   Δ-frames   % of dense64")
    for name, plan in report["plans"].items():
        lines.append(
            f"  {name:<10} {plan['visual_tokens']:>14} {plan['rgb_frames']:>12} {plan['delta_frames']:>10} "
            f"{100 * plan['visual_tokens'] / dense:>13.1f}"
        )
    if report["scene_cuts"]:
        lines.append(f"  scene cuts inside GOPs at frames {', '.join(map(str, report['scene_cuts']))}")
    return "\n".join(lines)


# Above this, ``extract`` warns before writing; beyond the free space it refuses.
LARGE_OUTPUT_BYTES = 1 << 30


def extract_arrays(height: int, width: int, mv_dtype: str) -> dict:
    """The archive's arrays: (item shape, dtype), README's ``cope extract`` table."""
    return {
        "iframe_index": ((), "int64"),
        "iframes": ((height, width, 3), "uint8"),
        "pframe_index": ((), "int64"),
        "pframe_ref_index": ((), "int64"),
        "mv": ((height, width, 2), mv_dtype),
        "residual": ((height, width, 3), "int16"),
    }


def check_output_size(out: Path, arrays: dict, plan, args) -> None:
    """Refuse a plan whose archive cannot fit on the disk; warn about a very large one."""
    from cope.npz import free_bytes, npz_bytes, peak_spool_bytes

    counts = {
        "iframe_index": plan.rgb_frames,
        "iframes": plan.rgb_frames,
        **dict.fromkeys(("pframe_index", "pframe_ref_index", "mv", "residual"), plan.delta_frames),
    }
    size, needed = npz_bytes(arrays, counts), peak_spool_bytes(arrays, counts)
    free = free_bytes(out.parent)
    compact = _compact_options(args)
    if needed > free:
        shrink = ", ".join([*compact, "a larger --fusion", "fewer --max-gops", "a smaller --size"])
        raise CopeInputError(
            f"{out}: the archive needs about {_gb(needed)} while writing ({_gb(size)} uncompressed) "
            f"but {out.parent} has {_gb(free)} free; try {shrink}"
        )
    if size > LARGE_OUTPUT_BYTES:
        hint = f"; {' and '.join(compact)} would make it smaller" if compact else ""
        print(
            f"cope: warning: {out}: writing about {_gb(size)} uncompressed ({_gb(free)} free){hint}",
            file=sys.stderr,
        )


def _compact_options(args) -> list[str]:
    """The options for a compact archive which the user has not passed yet."""
    flags = (("--dtype float16", args.dtype == "float16"), ("--compress", args.compress))
    return [flag for flag, on in flags if not on]


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def cmd_extract(args) -> int:
    from cope.npz import NpzStreamWriter

    out = check_output(args.out, args.overwrite)
    check_plan_args(args, args.keyframes_per_gop)
    video = open_cli_video(args)
    check_plan_args(args, args.keyframes_per_gop, video)
    plan = video.plan(fusion=args.fusion, keyframes_per_gop=args.keyframes_per_gop, max_gops=args.max_gops)
    gop = video.plan_gop(args.fusion)
    warn_without_deltas(args.video, plan, video.info.frames, gop, args.fusion, args.keyframes_per_gop)
    warn_scene_cuts(args.video, plan, video.scan.scene_cuts)
    arrays = extract_arrays(video.info.height, video.info.width, args.dtype)
    check_output_size(out, arrays, plan, args)
    reported = video.decode_errors  # warned about by open_cli_video already
    with NpzStreamWriter(out, arrays, compresslevel=1 if args.compress else None) as writer:
        missing = _write_entries(writer, video, plan)
    warn_decode_errors(args.video, video, since=reported)
    summary = _extract_summary(out, writer.counts, plan, video)
    if missing:
        print(
            f"cope: warning: {args.video}: {missing} planned frame(s) left out (not decodable, or a "
            f"Δ-frame whose reference was lost); the archive holds {summary['rgb_frames']} RGB and "
            f"{summary['delta_frames']} Δ-frames",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{out}: {summary['rgb_frames']} I-frames, {summary['delta_frames']} P-frames "
            f"({summary['visual_tokens']} visual tokens) from {summary['gops']} GOPs"
        )
    return 0


def _write_entries(writer, video, plan) -> int:
    """Append the plan's entries as they are decoded; return how many never came out."""
    from cope.codec.primitives import IFrame

    written = 0
    for entry in video.entries(plan, progress=True):
        if isinstance(entry, IFrame):
            writer.append("iframe_index", entry.index)
            writer.append("iframes", entry.rgb)
        else:
            writer.append("pframe_index", entry.index)
            writer.append("pframe_ref_index", entry.ref_index)
            writer.append("mv", entry.mv)
            writer.append("residual", entry.residual)
        written += 1
    return len(plan.entries) - written


def _extract_summary(out: Path, counts: dict, plan, video) -> dict:
    """What the archive holds, counted while writing it (not what the plan hoped for)."""
    from cope.plan import PAPER_LAYOUT

    rgb, delta = counts["iframes"], counts["mv"]
    return {
        "out": str(out),
        "visual_tokens": rgb * PAPER_LAYOUT.iframe_tokens + delta * PAPER_LAYOUT.pframe_tokens,
        "rgb_frames": rgb,
        "delta_frames": delta,
        "planned": plan.to_dict(),
        "frames": video.info.frames,
        "gops": len(plan.gops),
    }


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
    inspect.add_argument(
        "--fusion", type=int, default=DEFAULT_FUSION, help="P-frames fused per Δ-frame (default: 30)"
    )
    add_canonical_options(inspect)
    add_adaptive_keyframes_option(inspect)
    inspect.set_defaults(func=cmd_inspect)

    extract = commands.add_parser("extract", help="write I-frames, motion vectors and residuals to .npz")
    extract.add_argument("video", help="any video file PyAV/FFmpeg can read")
    extract.add_argument("--out", required=True, metavar="FILE.npz", help="output archive")
    extract.add_argument(
        "--fusion", type=int, default=DEFAULT_FUSION, help="P-frames fused per Δ-frame; 1 = no fusion"
    )
    extract.add_argument(
        "--keyframes-per-gop", type=int, default=1, help="RGB keyframes per GOP (1, 2, 4, …)"
    )
    extract.add_argument(
        "--max-gops", type=int, default=MAX_GOPS, help="GOP cap, uniform GOP sampling beyond"
    )
    extract.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    extract.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="dtype of the motion array: float16 halves it, exact for half-pel vectors below 1024 px",
    )
    extract.add_argument(
        "--compress", action="store_true", help="deflate the archive's members (slower, smaller)"
    )
    extract.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_canonical_options(extract)
    add_adaptive_keyframes_option(extract)
    add_workers_option(extract)
    extract.set_defaults(func=cmd_extract)

    for name in COMMAND_MODULES:
        importlib.import_module(f"cope.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cope import signals

    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.started = started  # what the user waited for starts here (``cope ask --json``: wall_s)
    with signals.handled():  # SIGTERM and SIGHUP clean up like Ctrl-C
        try:
            return args.func(args)
        except CopeInputError as exc:
            print(f"cope: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            print(f"cope: interrupted ({exc.args[0] if exc.args else 'SIGINT'})", file=sys.stderr)
            return signals.exit_code(exc)
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
