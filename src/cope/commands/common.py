"""Pieces every ``cope`` sub-command shares: the parser class and the canonical-stream options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage already; keep its message to one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from exc
    return width, height


def add_canonical_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("canonical stream (what every input is transcoded to)")
    group.add_argument("--fps", type=int, default=30, help="frame rate (default: 30, as the paper)")
    group.add_argument("--gop", type=int, default=240, help="GOP length in frames (default: 240)")
    group.add_argument(
        "--size", type=parse_size, default=(384, 384), help="WIDTHxHEIGHT, multiples of 16 (384x384)"
    )
    group.add_argument("--quantizer", type=int, default=3, help="pinned MPEG-4 quantiser, 2–31 (default: 3)")
    group.add_argument(
        "--cache-dir", type=Path, default=None, help="transcode cache (default: ~/.cache/cope)"
    )
    group.add_argument(
        "--no-transcode",
        action="store_true",
        help="read the input's own stream; it must be MPEG-4 Part 2 with I/P-frames only, half-pel",
    )


def canonical_settings(args):
    from cope.codec.canonical import CanonicalSettings

    return CanonicalSettings(
        fps=args.fps, gop=args.gop, width=args.size[0], height=args.size[1], quantizer=args.quantizer
    )


def open_cli_video(args):
    from cope.codec.extract import open_video

    video = open_video(
        args.video,
        canonical_settings(args),
        no_transcode=args.no_transcode,
        cache_dir=args.cache_dir,
        progress=True,
    )
    warn_decode_errors(args.video, video)
    return video


def warn_decode_errors(name, video, since: int = 0) -> int:
    """Warn about damaged data met since ``since`` errors (transcode, scan or decode); return the
    count so far. Every path that reads a video calls this, so damage is never silent."""
    errors = video.decode_errors
    if errors > since:
        print(
            f"cope: warning: {name}: FFmpeg reported {errors - since} decode errors "
            f"(damaged data concealed or skipped); {video.source.frames} frames decoded",
            file=sys.stderr,
        )
    return errors


def check_plan_args(args, keyframes_per_gop: int = 1, video=None) -> None:
    """Every plan option, by the one rule set of ``cope.plan.check_plan_options``; exit 2 if broken.

    Without ``video`` it runs before any decoding, against the ``--gop`` the video will be
    transcoded to (under ``--no-transcode`` only what needs no stream is checked); with ``video``
    against the GOP its plans use.
    """
    from cope.errors import CopeInputError
    from cope.plan import check_plan_options

    max_gops = getattr(args, "max_gops", None)
    if max_gops is not None and max_gops < 1:
        raise CopeInputError(f"max GOPs must be ≥ 1, got {max_gops}")
    if video is not None:
        gop = video.plan_gop(args.fusion)
    elif args.no_transcode:
        gop = args.fusion * keyframes_per_gop if args.fusion >= 1 and keyframes_per_gop >= 1 else 1
    else:
        gop = args.gop
    try:
        check_plan_options(gop, args.fusion, keyframes_per_gop)
    except ValueError as exc:
        raise CopeInputError(str(exc)) from exc


def warn_without_deltas(name, plan, frames: int, gop: int, fusion: int, keyframes_per_gop: int) -> None:
    """A CoPE plan that came out as keyframes only says so: the user asked for Δ-tokens."""
    if plan.delta_frames:
        return
    if gop // fusion == keyframes_per_gop:
        why = f"a GOP of {gop} frames at fusion {fusion} has {gop // fusion} slot(s), all keyframes"
    else:
        why = f"the {frames} frames are fewer than one fusion window of {fusion}"
    print(f"cope: warning: {name}: the plan has no Δ-frames ({why})", file=sys.stderr)


def warn_scene_cuts(name, plan, cuts: list[int]) -> None:
    """Δ-frames fused across a hard cut mix two shots: near-zero motion, a huge residual."""
    spanning = [
        (e.index, c) for e in plan.entries if e.kind == "P" for c in cuts if e.ref_index < c <= e.index
    ]
    if spanning:
        shown = ", ".join(f"{index} (cut at {cut})" for index, cut in spanning[:5])
        more = f" and {len(spanning) - 5} more" if len(spanning) > 5 else ""
        print(
            f"cope: warning: {name}: {len(spanning)} Δ-frame(s) span a scene cut, their motion and "
            f"residual mix two shots: {shown}{more} (a smaller --fusion or more keyframes helps)",
            file=sys.stderr,
        )
