"""``cope ask VIDEO "QUESTION"``: one answer about one video, streamed to stdout.

With ``--json`` stdout holds one object: ``{"answer", "model", "visual_tokens", "prompt_tokens",
"ttft_s", "e2e_s", …}``. The options shared with ``cope chat`` and ``cope infer`` live here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cope.commands.common import (
    add_adaptive_keyframes_option,
    add_codec_option,
    add_compile_option,
    add_model_options,
    add_sampling_options,
    add_workers_option,
    check_codec_args,
    check_model_plan_args,
    sampling_options,
    warn_decode_errors,
    warn_scene_cuts,
    warn_without_deltas,
)


def add_ask_options(parser) -> None:
    """--model, sampling and generation options (ask, chat, infer)."""
    add_model_options(parser.add_argument_group("model"))
    sampling = parser.add_argument_group("sampling (defaults: the model's config)")
    add_sampling_options(sampling)
    sampling.add_argument("--cache-dir", type=Path, help="transcode cache (default: ~/.cache/cope)")
    add_adaptive_keyframes_option(sampling)
    add_codec_option(sampling, None)
    add_workers_option(sampling)
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max-new-tokens", type=int, help="answer length cap (default: the model config's max_new_tokens)"
    )
    generation.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    generation.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0)")
    generation.add_argument("--seed", type=int, help="sampling seed")
    add_compile_option(generation, "off: a one-off answer seldom earns back the compilation")


def generation_config(args, config):
    """The generation settings of ask / chat / infer; the answer cap falls back to ``config``'s."""
    from cope.model.videolm import GenerationConfig

    check_positive(args)
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens or config.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        compile=bool(args.compile),
    )


def check_positive(args) -> None:
    from cope.errors import CopeInputError

    for name in ("keyframes_per_gop", "fusion", "max_gops", "dense_frames", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CopeInputError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")


def model_config(args):
    """(model name, CopeConfig) — read before any weights, so bad options and videos fail fast."""
    from cope.model.videolm import CopeConfig, resolve_model

    check_positive(args)
    name = resolve_model(args.model)
    config = CopeConfig.from_pretrained(name)
    check_model_plan_args(config, args)
    return name, config


def load_model(args, name: str):
    from cope.model.videolm import CopeVideoLM

    return CopeVideoLM.from_pretrained(name, device=args.device, dtype=args.dtype)


def open_model_video(config, path, args):
    """Open a video as the model expects it: transcoded (cached) to its canonical stream, or read
    in its own codec (``--codec``, else the model config's ``canonical.codec``)."""
    from dataclasses import replace

    from cope.codec.extract import open_video

    check_codec_args(args)
    settings = replace(config.canonical, codec=args.codec) if args.codec else config.canonical
    return open_video(
        path,
        settings,
        cache_dir=args.cache_dir,
        progress=True,
        workers=args.workers,
        adaptive_keyframes=args.adaptive_keyframes,
    )


def check_mode(config, args) -> str:
    """The mode to run; "cope" needs a model with a Δ-encoder."""
    from cope.errors import CopeInputError

    mode = args.mode or config.mode
    if mode == "cope" and config.delta_encoder is None:
        raise CopeInputError(
            f"{args.model or 'the model'}: has no Δ-encoder; use --mode dense, iframes-only or delta-zero"
        )
    return mode


def check_sampling(config, video, args, name=None) -> None:
    """Plan the video under the options (no decoding): bad K / fusion fail before weights load.

    Also warns (on stderr) about damaged data, a plan without Δ-frames and scene cuts inside fused
    windows; ``name`` is the video as the user gave it."""
    from cope.model.videolm.encoding import mode_plan

    mode = check_mode(config, args)
    options = sampling_options(args)
    fusion = options.get("fusion", config.fusion)
    keyframes = options.get("keyframes_per_gop", config.keyframes_per_gop)
    plan, _ = mode_plan(
        video,
        mode,
        fusion,
        keyframes,
        options.get("max_gops", config.max_gops),
        options.get("dense_frames", config.dense_frames),
    )
    name = name or getattr(args, "video", None) or video.reader.path
    warn_decode_errors(name, video)
    if mode in ("cope", "delta-zero"):
        gop = video.plan_gop(fusion)
        warn_without_deltas(name, plan, video.info.frames, gop, fusion, keyframes)
        warn_scene_cuts(name, plan, video.scan.scene_cuts)


def load_and_encode(args):
    """(model, encoded video, generation config) for ask and chat.

    The options, the video and the plan are checked before any weights load, so bad input fails
    at once.
    """
    name, config = model_config(args)
    generation = generation_config(args, config)
    opened = time.perf_counter()
    video = open_model_video(config, args.video, args)
    transcode_s = time.perf_counter() - opened
    check_sampling(config, video, args)
    model = load_model(args, name)
    encoded = model.encode_video(video, args.mode, progress=True, **sampling_options(args))
    encoded.transcode_s = transcode_s  # encode_video was handed an open video
    return model, encoded, generation


def cmd_ask(args) -> int:
    from cope.errors import CopeInputError

    started = getattr(args, "started", None) or time.perf_counter()  # set by cli.main
    if not args.question.strip():
        raise CopeInputError("the question is empty")
    model, encoded, generation = load_and_encode(args)
    stream = model.stream(model.build_prompt(encoded, args.question), generation)
    if args.json:
        answer = stream.finish()
        print(json.dumps(answer_record(model, encoded, answer, started)))
        return 0
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(summary_line(encoded, stream.answer, started), file=sys.stderr)
    return 0


def answer_record(model, encoded, answer, started: float | None = None) -> dict:
    """The ``--json`` object: the design.md keys first, then the details.

    ``ttft_s``/``e2e_s`` are the model's (the paper's definition, codec excluded); ``codec_s`` is
    transcoding + extraction, and ``wall_s`` the whole wait since the command started (``started``,
    a ``time.perf_counter()``), model loading included."""
    details = answer.to_dict()
    timing = {"codec_s": round(encoded.transcode_s + encoded.extract_s, 6)}
    if started is not None:
        timing["wall_s"] = round(time.perf_counter() - started, 6)
    return {
        "answer": answer.text,
        "model": model.name,
        "visual_tokens": answer.visual_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "ttft_s": details["ttft_s"],
        "e2e_s": details["e2e_s"],
        **timing,
        "mode": encoded.mode,
        "rgb_frames": encoded.plan.rgb_frames,
        "delta_frames": encoded.plan.delta_frames,
        **{k: v for k, v in details.items() if k not in ("answer", "visual_tokens", "prompt_tokens")},
    }


def summary_line(encoded, answer, started: float | None = None) -> str:
    t = answer.timings
    wall = f", wall {time.perf_counter() - started:.3f} s" if started is not None else ""
    compiled = f", compile {t.compile_s:.1f} s (once per cache size)" if t.compile_s else ""
    return (
        f"[{encoded.mode}: {encoded.plan.rgb_frames} RGB + {encoded.plan.delta_frames} Δ frames, "
        f"{answer.visual_tokens} visual / {answer.prompt_tokens} prompt tokens, {answer.new_tokens} new; "
        f"TTFT {t.ttft_s:.3f} s (vision {t.vision_s:.3f}, Δ {t.delta_s:.3f}, prefill {t.prefill_s:.3f}), "
        f"E2E {t.e2e_s:.3f} s, codec {encoded.transcode_s + t.extract_s:.3f} s{compiled}{wall}]"
    )


def register(commands) -> None:
    parser = commands.add_parser("ask", help="answer one question about a video")
    parser.add_argument("video", help="any video file PyAV/FFmpeg can read")
    parser.add_argument("question", help="the question (quote it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_ask_options(parser)
    parser.set_defaults(func=cmd_ask)
