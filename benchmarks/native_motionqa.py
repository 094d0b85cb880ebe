"""MotionQA with native input: does reading H.264 in its own codec cost accuracy?

    python benchmarks/native_motionqa.py [--model DIR] [--motionqa build/tiny/motionqa] [--split test] \\
        [--limit 200] [--bframes 2] [--threads 1] [--out DIR]

The requirement: MotionQA accuracy of the model with native input within 2 points of canonical
input, on the same questions. MotionQA's clips are already the canonical MPEG-4 stream, so reading
them "natively" would test nothing; a real upload is H.264 with B-frames. So each of the first
``--limit`` clips of the split is decoded (PyAV) and re-encoded as H.264 (libx264 through
``cope.motionqa.render.encode_mp4``, yuv420p, same size and frame rate, x264's defaults except at
most ``--bframes`` consecutive B-frames; keyint 250 ≥ the 240-frame clip, so a GOP per clip unless
x264's scene-cut detection adds I-frames). Each H.264 clip is then read twice by the model, in mode
``cope`` at 1 keyframe per GOP (the model's plan):
* ``canonical``: transcoded to the canonical MPEG-4 stream first (the cache lives under the output
  folder, so reruns skip it), exactly what the model was trained on;
* ``native``: the H.264's own motion vectors (``cope.codec.native``): its I-frames start the GOPs,
  B-frames are skipped and the plan's slots snap to the last I/P-frame at or before them.
Every question of the clip is scored by forced choice (``cope.eval.choice.pick_option``, the
option with the highest summed log-probability), the same questions under both codecs.

Reported per codec: accuracy overall, on needs-motion and appearance questions (and motionqa_table's
other groups), per question type, questions, mean visual tokens, RGB and Δ-frames per clip; then
native − canonical in points (all, motion), the % of questions where both codecs pick the same
option, the uniform guess per group (mean of 1 / len(options)) and the H.264 frame-type counts
(B-frames present or not, from the native reader's packet scan). Prints one JSON object (with every
clip's record); ``--out DIR`` also writes native_motionqa.json, native_motionqa.md and keeps the
clips under DIR/clips.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import torch

from cope.codec.extract import open_video
from cope.errors import CopeInputError
from cope.eval.choice import pick_option
from cope.motionqa.render import FPS, encode_mp4

# benchmarks/ is not a package: reuse motionqa_table's question loading and grouping from beside us.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from motionqa_table import GROUP_KEYS, _mean, accuracies, chance, load_questions, question_groups  # noqa: E402

CODECS = ("canonical", "native")
MODE = "cope"
KEYFRAMES_PER_GOP = 1


# ---------------------------------------------------------------- clips


def read_frames(path: Path) -> tuple[list, int, int]:
    """The clip's frames as RGB arrays, with its width and height. Its frame rate must be FPS,
    encode_mp4's rate, so that the re-encoded clip keeps the timing the questions are about."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.average_rate is None or float(stream.average_rate) != FPS:
            raise CopeInputError(f"{path}: {stream.average_rate} fps, expected the MotionQA rate {FPS}")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.width, stream.height


def reencode(source: Path, dest: Path, b_frames: int) -> None:
    """Write ``source`` as H.264 with at most ``b_frames`` consecutive B-frames (kept if present:
    the encoder is deterministic with one thread, so a rerun would write the same bytes)."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    frames, width, height = read_frames(source)
    partial = dest.with_suffix(".partial.mp4")  # a killed run leaves no clip that looks complete
    encode_mp4(frames, partial, "libx264", {"bf": str(b_frames)}, width, height)
    partial.rename(dest)


# ---------------------------------------------------------------- scoring


def read_clip(model, path: Path, codec: str, cache_dir: Path, items: list[dict]) -> dict:
    """Encode one clip under ``codec`` and pick an option for each of its questions."""
    started = time.perf_counter()
    settings = replace(model.config.canonical, codec=codec)
    video = open_video(path, settings, cache_dir=cache_dir, workers=1)
    encoded = model.encode_video(video, MODE, keyframes_per_gop=KEYFRAMES_PER_GOP)
    picks = []
    for q in items:
        prompt = model.build_prompt(encoded, q["question"])
        picked, _ = pick_option(model, prompt.inputs_embeds, q["options"])
        picks.append(q["options"][picked])
    return {
        "picks": picks,
        "visual_tokens": encoded.visual_tokens,
        "rgb_frames": encoded.plan.rgb_frames,
        "delta_frames": encoded.plan.delta_frames,
        "gops": video.info.gops,
        "source_frame_types": dict(video.source.frame_types),
        "seconds": round(time.perf_counter() - started, 3),
    }


def summarise(clips: list[dict], items_by_clip: list[list[dict]], codec: str) -> dict:
    """One codec's accuracies (percent) over every question, with its token and frame counts."""
    chosen: dict[str, list[bool]] = {group: [] for group in GROUP_KEYS}
    by_type: dict[str, list[bool]] = {}
    for clip, items in zip(clips, items_by_clip, strict=True):
        for q, pick in zip(items, clip[codec]["picks"], strict=True):
            ok = pick == q["answer"]
            for group in question_groups(q):
                chosen[group].append(ok)
            by_type.setdefault(q["type"], []).append(ok)
    return {
        **accuracies(chosen),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "questions": len(chosen["all"]),
        "motion_questions": len(chosen["motion"]),
        "appearance_questions": len(chosen["appearance"]),
        "visual_tokens": _average(clip[codec]["visual_tokens"] for clip in clips),
        "rgb_frames": _average(clip[codec]["rgb_frames"] for clip in clips),
        "delta_frames": _average(clip[codec]["delta_frames"] for clip in clips),
    }


def agreement(clips: list[dict]) -> float:
    """% of questions where both codecs pick the same option, right or wrong."""
    same = [
        a == b
        for clip in clips
        for a, b in zip(clip["canonical"]["picks"], clip["native"]["picks"], strict=True)
    ]
    return _mean(same)


def _average(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ---------------------------------------------------------------- report


def frame_type_summary(clips: list[dict]) -> dict:
    """The H.264 clips' frame types (the native reader's packet scan): totals, clips with any
    B-frame, and clips x264 gave more than one I-frame (scene cuts: more native GOPs)."""
    totals = {"I": 0, "P": 0, "B": 0}
    for clip in clips:
        for kind, count in clip["native"]["source_frame_types"].items():
            totals[kind] = totals.get(kind, 0) + count
    return {
        "totals": totals,
        "clips_with_b_frames": sum(clip["native"]["source_frame_types"].get("B", 0) > 0 for clip in clips),
        "clips_with_several_i_frames": sum(
            clip["native"]["source_frame_types"].get("I", 0) > 1 for clip in clips
        ),
        "clips_with_other_delta_frames": sum(
            clip["native"]["delta_frames"] != clip["canonical"]["delta_frames"] for clip in clips
        ),
    }


COLUMNS = (
    ("accuracy", "accuracy"),
    ("needs motion", "motion_accuracy"),
    ("appearance", "appearance_accuracy"),
)


def markdown(report: dict) -> str:
    """The accuracy table (codecs, then the uniform guess), the per-type table and the differences."""
    summary, guess = report["summary"], report["chance"]
    lines = [
        "| input | questions | "
        + " | ".join(h for h, _ in COLUMNS)
        + " | visual tokens / clip | Δ-frames / clip |",
        "|---|---|" + "---|" * len(COLUMNS) + "---|---|",
    ]
    for codec in CODECS:
        s = summary[codec]
        lines.append(
            f"| {codec} | {s['questions']} | "
            + " | ".join(f"{s[key]:.1f}" for _, key in COLUMNS)
            + f" | {s['visual_tokens']:.1f} | {s['delta_frames']:.2f} |"
        )
    lines.append(
        "| uniform guess | — | " + " | ".join(f"{guess[key]:.1f}" for _, key in COLUMNS) + " | — | — |"
    )
    types = list(guess["accuracy_by_type"])
    lines += ["", "| input | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for codec in CODECS:
        by_type = summary[codec]["accuracy_by_type"]
        lines.append(f"| {codec} | " + " | ".join(f"{by_type[t]:.1f}" for t in types) + " |")
    lines.append(
        "| uniform guess | " + " | ".join(f"{guess['accuracy_by_type'][t]:.1f}" for t in types) + " |"
    )
    diff, frames = report["native_minus_canonical"], report["h264_frame_types"]
    lines += [
        "",
        f"native − canonical: {diff['accuracy']:+.1f} points overall, {diff['motion_accuracy']:+.1f} on "
        f"needs-motion questions; same option picked on {report['same_pick_pct']:.1f}% of questions.",
        f"H.264 clips ({report['clips']}, ≤ {report['b_frames']} B-frames): frame types {frames['totals']}, "
        f"{frames['clips_with_b_frames']} with B-frames, {frames['clips_with_several_i_frames']} with "
        f"more than one I-frame, {frames['clips_with_other_delta_frames']} with another Δ-frame count natively.",
    ]
    return "\n".join(lines) + "\n"


def run(args, model, model_name: str, questions: dict[str, list[dict]], work: Path) -> dict:
    """Re-encode, read under both codecs and score every clip; the report."""
    clips, items_by_clip = [], []
    for number, (source, items) in enumerate(questions.items(), 1):
        started = time.perf_counter()
        path = work / "clips" / f"bf{args.bframes}" / Path(source).name
        reencode(Path(source), path, args.bframes)
        clip = {
            "video": items[0]["video"],
            "h264": str(path),
            "reencode_s": round(time.perf_counter() - started, 3),
        }
        for codec in CODECS:
            clip[codec] = read_clip(model, path, codec, work / "transcode", items)
        clip["questions"] = [
            {
                "id": q["id"],
                "type": q["type"],
                "answer": q["answer"],
                **{c: clip[c]["picks"][i] for c in CODECS},
            }
            for i, q in enumerate(items)
        ]
        clips.append(clip)
        items_by_clip.append(items)
        print(
            f"[{number}/{len(questions)}] {clip['video']}: frame types {clip['native']['source_frame_types']}, "
            f"Δ-frames canonical {clip['canonical']['delta_frames']} / native {clip['native']['delta_frames']}, "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    summary = {codec: summarise(clips, items_by_clip, codec) for codec in CODECS}
    return {
        "model": model_name,
        "split": args.split,
        "clips": len(clips),
        "b_frames": args.bframes,
        "mode": MODE,
        "keyframes_per_gop": KEYFRAMES_PER_GOP,
        "summary": summary,
        "native_minus_canonical": {
            key: summary["native"][key] - summary["canonical"][key] for key in ("accuracy", "motion_accuracy")
        },
        "same_pick_pct": agreement(clips),
        "chance": chance(questions),
        "h264_frame_types": frame_type_summary(clips),
        "seconds_per_clip": {
            "reencode": _average(c["reencode_s"] for c in clips),
            **{codec: _average(c[codec]["seconds"] for c in clips) for codec in CODECS},
        },
        "clip_records": clips,
    }


def check_split(motionqa: Path, split: str) -> str | None:
    """Why the split cannot be read, or None."""
    if not motionqa.is_dir():
        return f"{motionqa}: no such MotionQA directory (build it with the tiny recipe or pass --motionqa)"
    if not (motionqa / f"{split}.jsonl").is_file():
        return f"{motionqa / f'{split}.jsonl'}: no such split file"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="CoPE checkpoint (default: the bundled model)")
    parser.add_argument("--motionqa", type=Path, default=Path("build/tiny/motionqa"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200, help="first N clips (default 200)")
    parser.add_argument("--bframes", type=int, default=2, help="x264's bf: consecutive B-frames at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    problem = check_split(args.motionqa, args.split)
    if problem is None and args.limit < 1:
        problem = f"--limit must be ≥ 1, got {args.limit}"
    if problem is None and args.bframes < 0:
        problem = f"--bframes must be ≥ 0 (0: a control without B-frames), got {args.bframes}"
    if problem:
        print(f"native_motionqa: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from cope.model.videolm import CopeVideoLM, resolve_model

    try:
        name = resolve_model(args.model)
        model = CopeVideoLM.from_pretrained(name)
        questions = load_questions(args.motionqa, args.split, args.limit)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            report = run(args, model, name, questions, args.out)
            (args.out / "native_motionqa.json").write_text(json.dumps(report, indent=1) + "\n")
            (args.out / "native_motionqa.md").write_text(markdown(report))
        else:
            with tempfile.TemporaryDirectory(prefix="native-motionqa-") as tmp:
                report = run(args, model, name, questions, Path(tmp))
    except CopeInputError as error:
        print(f"native_motionqa: {error}", file=sys.stderr)
        return 2
    print(markdown(report), file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
