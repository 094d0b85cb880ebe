"""Files: generating a split (clips rendered and encoded, in one process or a pool, the record
files and the manifest written atomically) and reading one back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from cope.codec.canonical import CanonicalSettings
from cope.errors import CopeInputError
from cope.hub import atomic_path, atomic_write_text
from cope.motionqa.plans import schedule
from cope.motionqa.questions import make_clip
from cope.motionqa.records import chat_records, clip_records, question_stats
from cope.motionqa.render import FPS, Scene, render_frames, write_video
from cope.motionqa.spec import PAN_SPEED, PAN_SPEED_LIMITS, PLANS, SPLITS

# 2: two per-second motion turns per training conversation, not six; 3: each drawn balanced over answers
GENERATOR_VERSION = "3"


@dataclass(frozen=True)
class _Task:
    split: str
    index: int
    seed: int
    plan: str
    answer: object
    seconds: int
    width: int
    height: int
    video_path: str
    pan_speed: tuple[float, float]


def _generate_one(task: _Task) -> tuple[list[dict], list[dict], dict]:
    """Worker: build one clip, render and encode it, return its records."""
    clip = make_clip(task.split, task.index, task.seed, task.plan, task.answer, task.seconds, task.pan_speed)
    settings = CanonicalSettings()
    frames = render_frames(clip.scene, task.width, task.height)
    with atomic_path(task.video_path) as partial:
        write_video(frames, partial, task.width, task.height, settings.gop, settings.quantizer)
    return clip_records(clip)


def validate_args(
    split: str, clips: int, seed: int, size: tuple[int, int], seconds: int, workers: int
) -> None:
    if split not in SPLITS:
        raise CopeInputError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if clips < 1:
        raise CopeInputError(f"--clips must be at least 1, got {clips}")
    if seed < 0:
        raise CopeInputError(f"--seed must be ≥ 0, got {seed}")
    width, height = size
    if width < 64 or height < 64 or width % 2 or height % 2 or max(width, height) > 2048:
        raise CopeInputError(f"--size {width}x{height}: sides must be even, between 64 and 2048")
    if not 8 <= seconds <= 60:
        raise CopeInputError(f"--seconds must be between 8 and 60, got {seconds}")
    if workers < 1:
        raise CopeInputError(f"--workers must be at least 1, got {workers}")


def validate_options(pan_speed: tuple[float, float], plans: tuple[str, ...] | None) -> None:
    lo, hi = PAN_SPEED_LIMITS
    if not lo <= pan_speed[0] <= pan_speed[1] <= hi:
        raise CopeInputError(
            f"--pan-speed {pan_speed[0]},{pan_speed[1]}: need {lo} ≤ MIN ≤ MAX ≤ {hi} (frame sides per second)"
        )
    unknown = sorted(set(plans or ()) - set(PLANS))
    if unknown or plans == ():
        raise CopeInputError(f"--plans {','.join(unknown)}: choose from {', '.join(PLANS)}")


def output_paths(out_dir: Path, split: str) -> dict[str, Path]:
    return {
        "llava": out_dir / f"{split}.json",
        "chat": out_dir / f"{split}-chat.json",
        "appearance": out_dir / f"{split}-appearance.json",
        "local": out_dir / f"{split}.jsonl",
        "meta": out_dir / f"{split}-meta.jsonl",
    }


def generate_split(
    out_dir: str | Path,
    split: str,
    clips: int,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    seconds: int = 8,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    pan_speed: tuple[float, float] = PAN_SPEED,
    plans: tuple[str, ...] | None = None,
) -> dict:
    """Generate one split into ``out_dir`` (videos, LLaVA json, local jsonl, meta, manifest).

    Deterministic: the same arguments give byte-identical JSON and identical frames, whatever
    ``workers`` is. Returns a summary with the measured generation speed. With ``workers`` > 1
    clips render in a spawn-based process pool: call this under ``if __name__ == "__main__":``.

    ``pan_speed`` is the range camera pans draw their speed from (frame sides per second); only pan
    clips change with it. ``plans`` keeps only the clips of the ``clips``-long schedule whose plan is
    listed, each exactly as in the full split (same index, file name and records).
    """
    validate_args(split, clips, seed, size, seconds, workers)
    validate_options(pan_speed, plans)
    chosen = [
        (i, p, a) for i, (p, a) in enumerate(schedule(split, seed, clips)) if plans is None or p in plans
    ]
    if not chosen:
        raise CopeInputError(f"--plans {','.join(plans or ())}: no such clip among the first {clips}")
    out_dir = Path(out_dir)
    videos = _prepare_output(out_dir, split, overwrite)
    tasks = [
        _Task(split, i, seed, plan, answer, seconds, *size, str(videos / f"{split}-{i:06d}.mp4"), pan_speed)
        for i, plan, answer in chosen
    ]
    started = time.perf_counter()
    results = _run(tasks, workers, progress)
    elapsed = time.perf_counter() - started

    paths = output_paths(out_dir, split)
    llava = [r for result in results for r in result[0]]
    local = [r for result in results for r in result[1]]
    atomic_write_text(paths["llava"], json.dumps(llava, indent=1) + "\n")
    scenes = {meta["video"]: Scene.from_dict(meta["scene"]) for _, _, meta in results}
    atomic_write_text(paths["chat"], json.dumps(chat_records(llava, scenes, seed), indent=1) + "\n")
    appearance = [r for r, q in zip(llava, local, strict=True) if not q["needs_motion"]]
    atomic_write_text(paths["appearance"], json.dumps(appearance, indent=1) + "\n")
    atomic_write_text(paths["local"], "".join(json.dumps(r) + "\n" for r in local))
    atomic_write_text(paths["meta"], "".join(json.dumps(result[2]) + "\n" for result in results))
    entry = {
        "seed": seed,
        "clips": len(tasks),
        "questions": len(local),
        "seconds": seconds,
        "size": list(size),
        "fps": FPS,
        "codec": "mpeg4",
        "needs_motion_fraction": question_stats(local)["needs_motion_fraction"],
    }
    # Only non-default options are written, so a default split's manifest keeps its bytes.
    if tuple(pan_speed) != PAN_SPEED:
        entry["pan_speed"] = list(pan_speed)
    if plans is not None:
        entry |= {"plans": list(plans), "schedule_clips": clips}
    _update_manifest(out_dir / "manifest.json", split, entry)
    return {
        "out": str(out_dir),
        "split": split,
        **entry,
        "elapsed_s": round(elapsed, 3),
        "clips_per_s": round(clips / elapsed, 3) if elapsed > 0 else None,
        "workers": workers,
    }


def _prepare_output(out_dir: Path, split: str, overwrite: bool) -> Path:
    """Refuse to replace an existing split unless told to; return the videos directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CopeInputError(f"{out_dir}: exists and is not a directory")
    videos = out_dir / "videos"
    existing = [p for p in output_paths(out_dir, split).values() if p.exists()]
    existing += sorted(videos.glob(f"{split}-*.mp4"))
    if existing and not overwrite:
        raise CopeInputError(f"{existing[0]}: already exists (pass --overwrite to replace the {split} split)")
    videos.mkdir(parents=True, exist_ok=True)
    for old in videos.glob(f"{split}-*.mp4"):
        old.unlink()  # only reached with --overwrite: a shorter split leaves no stale clips behind
    return videos


def _run(tasks: list[_Task], workers: int, progress: bool) -> list[tuple[list[dict], list[dict], dict]]:
    """Every task's records, in task order, from one process or a pool."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), unit="clip", desc="motionqa", disable=not progress, leave=False) as bar:
        if workers == 1:
            results = []
            for task in tasks:
                results.append(_generate_one(task))
                bar.update(1)
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may hold threads (torch, tqdm) that fork would copy half-way.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = []
            for result in pool.map(_generate_one, tasks, chunksize=4):
                results.append(result)
                bar.update(1)
            return results


def _update_manifest(path: Path, split: str, entry: dict) -> None:
    # "generator" is a label the files carry, not an import path: it keeps the name it had before
    # the package moved, so the files stay byte-identical (merging checks only "version").
    manifest = {"generator": "cope.data.motionqa", "version": GENERATOR_VERSION, "splits": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("version") == GENERATOR_VERSION:
                manifest["splits"] = dict(old.get("splits", {}))
        except (ValueError, AttributeError):
            pass  # a damaged manifest is rebuilt from this split
    manifest["splits"][split] = entry
    manifest["splits"] = dict(sorted(manifest["splits"].items()))
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


def load_split(out_dir: str | Path, split: str) -> list[dict]:
    """The local evaluation records of a generated split (``DIR/<split>.jsonl``)."""
    path = Path(out_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise CopeInputError(f"{path}: no such file (generate the {split} split first)")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as exc:
        raise CopeInputError(f"{path}: not valid JSON lines ({exc})") from exc
