"""Pieces every ``cope`` sub-command shares: the parser class and the canonical-stream options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cope.errors import CopeInputError


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


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_model_options(group) -> None:
    """--model, --device, --dtype: the same names, defaults and choices in every command."""
    group.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="CoPE checkpoint dir or hub id, or a LLaVA-OneVision base (default: the bundled tiny model)",
    )
    group.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bfloat16 on CUDA")


def add_compile_option(group, default: str) -> None:
    """--compile / --no-compile (``GenerationConfig.compile``); unset = ``default``, as described."""
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode with a static KV cache and a torch.compile'd step (CUDA graphs); compiling costs "
        "once per cache size (reported as compile_s). On CPU/MPS: the static cache with the eager "
        f"step, no compilation (default: {default})",
    )


def compile_on_cuda(args, device) -> bool:
    """--compile as given, else on where the model runs on CUDA (``cope serve``, ``cope bench``)."""
    return args.compile if args.compile is not None else device.type == "cuda"


def add_sampling_options(group) -> None:
    """--mode, --keyframes-per-gop, --fusion, --max-gops, --dense-frames; unset = the model's config
    (``CopeConfig``), so a command never overrides a checkpoint's own defaults by accident."""
    from cope.plan import MODES

    group.add_argument("--mode", choices=MODES, help="how the video becomes tokens")
    group.add_argument("--keyframes-per-gop", type=int, help="RGB keyframes per GOP (1, 2, 4, …)")
    group.add_argument("--fusion", type=int, help="P-frames fused per Δ-frame (30 = 1 per second)")
    group.add_argument("--max-gops", type=int, help="GOP cap; longer videos take GOPs uniformly")
    group.add_argument("--dense-frames", type=int, help="frames of the dense baseline (64)")


def sampling_options(args) -> dict:
    """The sampling options the user set, as ``encode_video`` keywords (the rest stay the model's)."""
    options = {
        "keyframes_per_gop": args.keyframes_per_gop,
        "fusion": args.fusion,
        "max_gops": args.max_gops,
        "dense_frames": args.dense_frames,
    }
    return {key: value for key, value in options.items() if value is not None}


def check_output(path: str | Path | None, overwrite: bool) -> Path | None:
    """An output file the command may write: never replaced without ``--overwrite``, and its folder
    must exist. None passes through (no output asked for)."""
    if path is None:
        return None
    out = Path(path)
    if out.exists() and not overwrite:
        raise CopeInputError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise CopeInputError(f"{out.parent}: output directory does not exist")
    return out


def add_canonical_options(parser: argparse.ArgumentParser) -> None:
    from cope.codec.canonical import CanonicalSettings

    paper = CanonicalSettings()  # the defaults live there only
    group = parser.add_argument_group("canonical stream (what every input is transcoded to)")
    group.add_argument(
        "--fps", type=int, default=paper.fps, help=f"frame rate (default: {paper.fps}, as the paper)"
    )
    group.add_argument(
        "--gop", type=int, default=paper.gop, help=f"GOP length in frames (default: {paper.gop})"
    )
    group.add_argument(
        "--size",
        type=parse_size,
        default=(paper.width, paper.height),
        help=f"WIDTHxHEIGHT, multiples of 16 ({paper.width}x{paper.height})",
    )
    group.add_argument(
        "--quantizer",
        type=int,
        default=paper.quantizer,
        help=f"pinned MPEG-4 quantiser, 2–31 (default: {paper.quantizer})",
    )
    group.add_argument(
        "--cache-dir", type=Path, default=None, help="transcode cache (default: ~/.cache/cope)"
    )
    group.add_argument(
        "--no-transcode",
        action="store_true",
        help="read the input's own stream; it must be MPEG-4 Part 2 with I/P-frames only, half-pel",
    )
    add_codec_option(group, paper.codec)


def add_codec_option(group, default: str | None) -> None:
    """--codec canonical|native|auto (``CanonicalSettings.codec``); ``default`` None: the model's."""
    from cope.codec.canonical import CODEC_CHOICES

    group.add_argument(
        "--codec",
        choices=CODEC_CHOICES,
        default=default,
        help="canonical: transcode first; native: read the source's own H.264 / MPEG-4 stream (its "
        "GOPs and frame rate, no transcode); auto: native where the stream allows it "
        f"(default: {default or 'the model config'})",
    )


def add_workers_option(group) -> None:
    """--workers N: GOPs decoded and fused at once (``CodecVideo.workers``)."""
    group.add_argument(
        "--workers",
        type=int,
        help="GOPs decoded and fused in parallel threads (default: the available cores); the output "
        "is the same for any number",
    )


def add_adaptive_keyframes_option(group) -> None:
    """--adaptive-keyframes (``CodecVideo.adaptive_keyframes``)."""
    group.add_argument(
        "--adaptive-keyframes",
        action="store_true",
        help="a scene cut inside a GOP starts a new keyframe (one more RGB frame each), so no "
        "Δ-frame mixes two shots",
    )


def check_codec_args(args) -> None:
    """--workers ≥ 1, and --no-transcode (the canonical reader) only with --codec canonical."""
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise CopeInputError(f"--workers must be ≥ 1, got {workers}")
    if getattr(args, "no_transcode", False) and args.codec not in (None, "canonical"):
        raise CopeInputError(f"--no-transcode reads the stream as canonical: drop it or --codec {args.codec}")


def canonical_settings(args):
    from cope.codec.canonical import CanonicalSettings

    return CanonicalSettings(
        fps=args.fps,
        gop=args.gop,
        width=args.size[0],
        height=args.size[1],
        quantizer=args.quantizer,
        codec=args.codec,
    )


def open_cli_video(args):
    from cope.codec.extract import open_video

    check_codec_args(args)
    video = open_video(
        args.video,
        canonical_settings(args),
        no_transcode=args.no_transcode,
        cache_dir=args.cache_dir,
        progress=True,
        workers=getattr(args, "workers", None),
        adaptive_keyframes=args.adaptive_keyframes,
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
    transcoded to (under ``--no-transcode`` and ``--codec native|auto``, whose GOPs are the
    source's, only what needs no stream is checked); with ``video`` against the GOP its plans use.
    """
    max_gops = getattr(args, "max_gops", None)
    if max_gops is not None and max_gops < 1:
        raise CopeInputError(f"max GOPs must be ≥ 1, got {max_gops}")
    if video is not None:
        gop = video.plan_gop(args.fusion)
    elif args.no_transcode or args.codec != "canonical":
        gop = args.fusion * keyframes_per_gop if args.fusion >= 1 and keyframes_per_gop >= 1 else 1
    else:
        gop = args.gop
    _check_plan(gop, args.fusion, keyframes_per_gop)


def check_model_plan_args(config, args) -> None:
    """The plan options against a model's canonical GOP (``config``: its ``CopeConfig``), before
    any video is transcoded or weights load; dense mode has no plan to check."""
    if (args.mode or config.mode) == "dense":
        return
    fusion = args.fusion if args.fusion is not None else config.fusion
    keyframes = args.keyframes_per_gop if args.keyframes_per_gop is not None else config.keyframes_per_gop
    source_gops = (getattr(args, "codec", None) or config.canonical.codec) != "canonical"
    if source_gops and fusion >= 1 and keyframes >= 1:  # checked against the video once it is open
        _check_plan(fusion * keyframes, fusion, keyframes)
        return
    _check_plan(config.canonical.gop, fusion, keyframes)


def _check_plan(gop: int, fusion: int, keyframes_per_gop: int) -> None:
    """``cope.plan.check_plan_options`` with its one-line reason as a usage error (exit 2)."""
    from cope.plan import check_plan_options

    try:
        check_plan_options(gop, fusion, keyframes_per_gop)
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
            f"residual mix two shots: {shown}{more} (--adaptive-keyframes starts a keyframe at each cut)",
            file=sys.stderr,
        )
