"""Does a model know *when* a motion happens? MotionQA's time-bound questions, scored by forced choice.

    python benchmarks/motionqa_when.py --model build/tiny/stage2/final [--model NAME=DIR …] \\
        [--motionqa build/tiny/motionqa] [--cache build/tiny/cache] [--split test] [--limit 100] \\
        [--threads 1] [--out FILE.json]

Two kinds of question need the time of a motion, not only its direction:
* the split's ``first_half`` / ``second_half`` questions, from every clip that has them (the halves
  are planned independently, so the two answers agree in a quarter of the clips);
* per-second questions, "Which way does the {subject} move between second t and second t + 1?"
  (``cope.motionqa.records.step_question``), for every subject visible at t = 0 and every second
  of the first ``--limit`` clips (``clip_steps``, from the split's scene meta): left / right / up /
  down / still. Training asks two of these per clip; the test split never does.

Each model reads each clip once (K = 1 from the slot cache, as ``motionqa_table.py``) and every
question is scored by ``cope.eval.choice.pick_option``. Reported per model: halves accuracy, how
often the second-half pick equals the *first* half's answer when the two differ, per-second
accuracy on moving seconds (overall and per second) and on still ones, and
``same_pick_when_truth_differs``: over pairs of seconds of one subject whose (moving) answers
differ, the % where the model picks the same option for both. A model that reads only "which way
overall" scores near 100 there; one that reads time scores near 0. Prints one JSON object
(``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import torch
from tqdm import tqdm

from cope.data.cache import SlotCache, visual_input_from_cache
from cope.eval.choice import pick_option
from cope.model.videolm import CopeVideoLM
from cope.motionqa import Scene
from cope.motionqa.records import clip_steps, step_question

STEP_OPTIONS = ["left", "right", "up", "down", "still"]
HALVES = ("first_half", "second_half")


def load_clips(motionqa: Path, split: str, limit: int) -> list[dict]:
    """Every clip with halves questions (about one in ten), and the first ``limit`` clips with every
    per-second question: video path, halves questions, per-second questions."""
    halves: dict[str, list[dict]] = {}
    for line in (motionqa / f"{split}.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q["type"] in HALVES:
            halves.setdefault(q["video"], []).append(q)
    clips = []
    for i, line in enumerate((motionqa / f"{split}-meta.jsonl").read_text().splitlines()):
        meta = json.loads(line)
        steps = []
        if i < limit:
            steps = [
                {"subject": name, "t": t, "answer": label, "question": step_question(name, t)}
                for name, t, label in clip_steps(Scene.from_dict(meta["scene"]))
            ]
        if steps or meta["video"] in halves:
            video = str((motionqa / meta["video"]).resolve())
            clips.append({"video": video, "halves": halves.get(meta["video"], []), "steps": steps})
    return clips


def pick(model, embeds: torch.Tensor, question: str, options: list[str]) -> str:
    prompt = model.build_prompt(embeds, question)
    index, _ = pick_option(model, prompt.inputs_embeds, options)
    return options[index]


def evaluate(model, cache: SlotCache, clips: list[dict]) -> dict:
    halves_ok: dict[str, list[bool]] = {name: [] for name in HALVES}
    second_is_first: list[bool] = []  # second-half pick == first-half answer, where they differ
    by_second: dict[int, list[bool]] = {}  # moving seconds only
    still_ok: list[bool] = []
    same_pick: list[bool] = []
    for clip in tqdm(clips, desc="clips", leave=False, file=sys.stderr):
        visual = visual_input_from_cache(cache.entry(clip["video"]), 1)
        with torch.inference_mode():
            embeds = model.embed_visual(visual)
            answers = {q["type"]: q["answer"] for q in clip["halves"]}
            for q in clip["halves"]:
                picked = pick(model, embeds, q["question"], q["options"])
                halves_ok[q["type"]].append(picked == q["answer"])
                if q["type"] == "second_half" and answers["first_half"] != q["answer"]:
                    second_is_first.append(picked == answers["first_half"])
            picks: dict[str, list[tuple[str, str]]] = {}
            for step in clip["steps"]:
                picked = pick(model, embeds, step["question"], STEP_OPTIONS)
                if step["answer"] == "still":
                    still_ok.append(picked == "still")
                    continue
                by_second.setdefault(step["t"], []).append(picked == step["answer"])
                picks.setdefault(step["subject"], []).append((step["answer"], picked))
        for pairs in picks.values():
            for (truth_a, pick_a), (truth_b, pick_b) in combinations(pairs, 2):
                if truth_a != truth_b:
                    same_pick.append(pick_a == pick_b)
    moving = [ok for oks in by_second.values() for ok in oks]
    return {
        "halves_accuracy": {name: percent(oks) for name, oks in halves_ok.items()},
        "second_half_pick_is_first_half_answer": percent(second_is_first),
        "step_accuracy_moving": percent(moving),
        "step_accuracy_moving_by_second": {t: percent(by_second[t]) for t in sorted(by_second)},
        "step_accuracy_still": percent(still_ok),
        "same_pick_when_truth_differs": percent(same_pick),
        "questions": {
            "halves": sum(len(v) for v in halves_ok.values()),
            "steps_moving": len(moving),
            "steps_still": len(still_ok),
            "second_half_differs": len(second_is_first),
            "step_pairs_differ": len(same_pick),
        },
    }


def percent(values: list[bool]) -> float:
    return round(100.0 * sum(values) / len(values), 1) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="DIR or NAME=DIR (repeatable)")
    parser.add_argument("--motionqa", type=Path, default=Path("build/tiny/motionqa"))
    parser.add_argument("--cache", type=Path, default=Path("build/tiny/cache"))
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--limit", type=int, default=100, help="clips asked per-second questions (default 100)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = load_clips(args.motionqa, args.split, args.limit)
    cache = SlotCache(args.cache)
    report: dict = {
        "split": args.split,
        "clips": len(clips),
        "step_clips": sum(bool(clip["steps"]) for clip in clips),
        "chance": {"halves": 25.0, "steps": 20.0},
    }
    for spec in args.model:
        name, _, directory = spec.rpartition("=")
        model = CopeVideoLM.from_pretrained(directory)
        report[name or directory] = evaluate(model, cache, clips)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
