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
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
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
    if video.canonical is not None and video.canonical.decode_errors:
        print(
            f"cope: warning: {args.video}: FFmpeg reported {video.canonical.decode_errors} decode errors "
            f"(damaged data concealed or skipped); {video.source.frames} frames decoded",
            file=sys.stderr,
        )
    return video
