"""``cope bench``: visual tokens, TTFT and E2EL per sampling config against dense64, in one process;
with ``--train-step``, the time and peak memory of a stage-2 training step per config instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cope.commands.common import add_codec_option, add_compile_option, add_model_options, compile_on_cuda
from cope.errors import CopeInputError

OUTPUT_FILES = ("bench.json", "bench.md", "bench.png")


def register(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="TTFT / E2EL / tokens of dense64 vs cope_k1/k2/k4 (+ iframes_k1), one process; "
        "--train-step: a stage-2 training step's time and peak memory",
    )
    add_model_options(parser.add_argument_group("model (--device meta: shapes only, with --dry-run)"))
    parser.add_argument(
        "--arch",
        choices=("paper-7b",),
        help="benchmark a named architecture instead of --model: paper-7b = LLaVA-Video-7B-Qwen2 + Δ-encoder "
        "(its hub weights, or random ones with --random-weights)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="with --arch: random weights built directly on the device, no download (timings and memory only)",
    )
    parser.add_argument(
        "--delta",
        choices=("paper", "compact"),
        default="paper",
        help="Δ-encoder preset of --arch --random-weights (default: paper)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="no timing: encode, prompt and one prefill per config to check shapes, token counts, "
        "parameters, weight and KV-cache sizes (with --device meta nothing is allocated)",
    )
    parser.add_argument("--video", help="video to read (default: the bundled sample)")
    add_codec_option(parser, None)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="every run reads the video as if for the first time (CoPE: transcode into an empty cache; "
        "dense64: frames sought in the file) and reports codec_s and cold_ttft_s = codec_s + ttft_s",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per config, after one warm-up (3)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per run, EOS ignored (64)")
    add_compile_option(
        parser,
        "on for CUDA. Each run then decodes its answer twice, with the dynamic cache and with the "
        "static cache (+ the compiled step on CUDA), and reports both decode ms/token",
    )
    parser.add_argument(
        "--configs",
        help="comma-separated configs to run (default: all five; with --train-step: cope_k1,cope_k4,dense64)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's); 1 is steadiest on a busy machine"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the untimed peak-memory run per config"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the analytic FLOP estimates")
    parser.add_argument("--out", metavar="DIR", help="write bench.json, bench.md and bench.png into DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    train = parser.add_argument_group("training step (--train-step)")
    train.add_argument(
        "--train-step",
        action="store_true",
        help="instead of TTFT/E2EL: time stage-2 training steps (forward + backward + AdamW, vision tower "
        "frozen) and their peak memory, per config",
    )
    train.add_argument("--batch", type=int, help="with --train-step: samples per step (default: 1)")
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="with --train-step: recompute activations in backward (as finetune's model.gradient_checkpointing)",
    )
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from cope.eval.bench import (
        CONFIGS_BY_NAME,
        dry_run,
        flop_estimates,
        format_dry_run,
        format_markdown,
        format_summary,
        plot_report,
        run_bench,
    )

    _check_train_step_options(args)
    names = [name.strip() for name in _configs(args).split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS_BY_NAME]
    if unknown or not names:
        raise CopeInputError(
            f"--configs: unknown config(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(CONFIGS_BY_NAME)}"
        )
    if args.repeats < 1 or args.new_tokens < 1 or (args.threads is not None and args.threads < 1):
        raise CopeInputError("--repeats, --new-tokens and --threads must be at least 1")
    _check_model_options(args)
    out = _check_out(args)
    video = Path(args.video) if args.video else _sample_video()
    if not video.is_file():
        raise CopeInputError(f"{video}: no such video file")

    import torch

    model = _load_model(args)
    if args.codec:  # every run opens the video through the model config's codec setting
        from dataclasses import replace

        model.config.canonical = replace(model.config.canonical, codec=args.codec)
    if args.train_step:
        return _train_step(args, model, video, tuple(CONFIGS_BY_NAME[name] for name in names))
    if args.dry_run:
        report = dry_run(model, video, tuple(CONFIGS_BY_NAME[name] for name in names))
        print(json.dumps(report) if args.json else format_dry_run(report))
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        report = run_bench(
            model,
            video,
            tuple(CONFIGS_BY_NAME[name] for name in names),
            repeats=args.repeats,
            new_tokens=args.new_tokens,
            measure_memory=not args.no_memory,
            progress=True,
            cold=args.cold,
            compile=compile_on_cuda(args, model.device),
        )
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)
    if not args.no_flops:
        report["flops"] = flop_estimates(report, model)
    if out is not None:
        (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "bench.md").write_text(format_markdown(report))
        plot_report(report, out / "bench.png")
        print(f"wrote {', '.join(str(out / name) for name in OUTPUT_FILES)}", file=sys.stderr)
    print(json.dumps(report) if args.json else format_summary(report))
    return 0


def _configs(args) -> str:
    """--configs as given, else every config (TTFT runs) or TRAIN_STEP_CONFIGS (--train-step)."""
    from cope.eval.bench import CONFIGS_BY_NAME
    from cope.eval.train_step import TRAIN_STEP_CONFIGS

    if args.configs is not None:
        return args.configs
    return ",".join(TRAIN_STEP_CONFIGS if args.train_step else CONFIGS_BY_NAME)


def _check_train_step_options(args) -> None:
    """--train-step times real steps and prints its own report: the inference-run options do not apply."""
    if not args.train_step:
        if args.batch is not None or args.gradient_checkpointing:
            raise CopeInputError("--batch and --gradient-checkpointing need --train-step")
        return
    given = {
        "--dry-run": args.dry_run,
        "--cold": args.cold,
        "--compile": args.compile,
        "--out": args.out is not None,
        "--device meta": args.device == "meta",
    }
    refused = [name for name, on in given.items() if on]
    if refused:
        raise CopeInputError(
            f"--train-step times real training steps and prints its report: drop {refused[0]}"
        )
    if args.batch is not None and args.batch < 1:
        raise CopeInputError("--batch must be at least 1")


def _train_step(args, model, video: Path, configs) -> int:
    """``cope bench --train-step``: stage-2 step time and peak memory per config."""
    import torch

    from cope.eval.train_step import format_train_step, run_train_step

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        report = run_train_step(
            model,
            video,
            configs,
            batch=args.batch or 1,
            repeats=args.repeats,
            gradient_checkpointing=args.gradient_checkpointing,
            measure_memory=not args.no_memory,
            progress=True,
        )
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)
    print(json.dumps(report) if args.json else format_train_step(report))
    return 0


def _check_model_options(args) -> None:
    if args.arch and args.model:
        raise CopeInputError("give --model or --arch, not both")
    if args.random_weights and not args.arch:
        raise CopeInputError("--random-weights needs --arch (e.g. --arch paper-7b)")
    if args.device == "meta" and not args.dry_run:
        raise CopeInputError("--device meta holds shapes, not numbers: add --dry-run")
    if args.dry_run and args.out:
        raise CopeInputError("--dry-run writes no files: drop --out")


def _load_model(args):
    from cope.model.videolm import CopeVideoLM, resolve_model
    from cope.model.videolm.builders import paper_7b, paper_7b_random

    if args.arch and args.random_weights:
        if args.device != "meta":  # 8B random weights: refuse up front rather than die of OOM
            shapes = paper_7b_random("meta", args.dtype, delta=args.delta)
            _check_memory(sum(p.numel() for p in shapes.parameters()), args.device, args.dtype)
        return paper_7b_random(args.device, args.dtype, delta=args.delta)
    if args.arch:
        return paper_7b(args.device, args.dtype)
    return CopeVideoLM.from_pretrained(resolve_model(args.model), device=args.device, dtype=args.dtype)


def _check_memory(parameters: int, device: str, dtype: str) -> None:
    """Exit 2 when the weights alone exceed the device's free memory."""
    import torch

    from cope.model.videolm.modeling_cope import resolve_device, resolve_dtype

    target = resolve_device(device)
    needed = parameters * resolve_dtype(dtype, target).itemsize
    if target.type == "cuda":
        free = torch.cuda.mem_get_info(target)[0]
    elif target.type == "cpu":
        free = _available_ram()
    else:
        return
    if free is not None and needed > free:
        raise CopeInputError(
            f"--device {device}: the weights need {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free "
            "(try --dtype bfloat16, a larger device, or --device meta --dry-run)"
        )


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _check_out(args) -> Path | None:
    if args.out is None:
        return None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CopeInputError(f"{out}: exists and is not a directory")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise CopeInputError(f"{out}: already holds {', '.join(existing)} (pass --overwrite to replace them)")
    if not out.parent.is_dir():
        raise CopeInputError(f"{out.parent}: output directory does not exist")
    out.mkdir(exist_ok=True)
    return out


def _sample_video() -> Path:
    from cope.codec.canonical import sample_video_path

    return Path(sample_video_path())
