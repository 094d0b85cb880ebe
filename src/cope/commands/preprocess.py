"""``cope preprocess LIST --out DIR [--workers N] [--backend local|ray]``: fill a slot cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cope.commands.common import add_canonical_options
from cope.plan import DEFAULT_FUSION, MAX_GOPS


def register(commands) -> None:
    parser = commands.add_parser(
        "preprocess",
        help="transcode and extract a list of videos into a sharded training cache",
        description=(
            "Transcode every video of LIST and store the codec primitives a training recipe needs "
            "(every 1-FPS slot's RGB frame and fused Δ) in compressed shards with a manifest. "
            "A rerun skips finished videos; failed videos are named with their reason."
        ),
    )
    parser.add_argument("list", type=Path, help="text file with one video path per line")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="cache directory")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="videos processed in parallel (default: 1 locally, all CPUs of the Ray cluster)",
    )
    parser.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="local process pool or Ray"
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start a local Ray instance)"
    )
    parser.add_argument(
        "--fusion", type=int, default=DEFAULT_FUSION, help="frames between slots (default: 30 → 1 FPS)"
    )
    parser.add_argument("--max-gops", type=int, default=MAX_GOPS, help="GOP cap per video (default: 64)")
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=1024,
        help="close a shard once it holds this many MB (default: 1024)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_canonical_options(parser)
    for action in parser._actions:  # the shared option means something slightly different here
        if "--cache-dir" in action.option_strings:
            action.help = "keep the canonical transcodes here (default: temporary, deleted per video)"
        if "--no-transcode" in action.option_strings:
            action.help = "not supported: the cache always holds canonical streams"
        if "--codec" in action.option_strings:
            action.help = "canonical only: the cache always holds canonical streams"
    parser.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args) -> int:
    from cope.commands.common import canonical_settings
    from cope.data.cache import CacheSettings
    from cope.data.preprocess import MAX_FAILURES_SHOWN, PreprocessConfig, run_preprocess
    from cope.errors import CopeInputError

    if args.no_transcode:
        raise CopeInputError(
            "--no-transcode is not supported by preprocess: the cache holds canonical streams"
        )
    if args.codec != "canonical":
        raise CopeInputError(
            f"--codec {args.codec} is not supported by preprocess: the cache holds canonical streams"
        )
    config = PreprocessConfig(
        list_path=args.list,
        out=args.out,
        settings=CacheSettings(canonical_settings(args), args.fusion, args.max_gops),
        workers=args.workers,
        backend=args.backend,
        ray_address=args.ray_address,
        canonical_cache=args.cache_dir,
        shard_bytes=max(1, int(args.shard_mb * (1 << 20))),
    )
    summary = run_preprocess(config)
    if args.json:
        print(json.dumps(summary))
    else:
        for failure in summary["failures"][:MAX_FAILURES_SHOWN]:
            print(f"failed: {failure['video']}: {failure['reason']}")
        if summary["failed"] > MAX_FAILURES_SHOWN:
            print(
                f"… and {summary['failed'] - MAX_FAILURES_SHOWN} more failures (see {args.out}/manifest.jsonl)"
            )
        per_minute = summary["bytes_per_video_minute"]
        size = f", {per_minute / 1e6:.1f} MB per video-minute" if per_minute else ""
        print(
            f"{args.out}: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
            f"{size}, {summary['shards_written']} shards written in {summary['seconds']:.1f} s"
        )
    if summary["done"] == 0 and summary["skipped"] == 0 and summary["failed"] > 0:
        print(f"cope: error: {args.list}: every video failed", file=sys.stderr)
        return 2
    return 0
