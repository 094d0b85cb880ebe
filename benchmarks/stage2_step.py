"""Time of one stage-2 training step (forward + backward) on a fixed batch, as JSON on stdout.

    python benchmarks/stage2_step.py --model src/cope/assets/cope-tiny --motionqa DIR --cache DIR

The batch: the first question of each of the first ``--batch`` clips of a MotionQA split, read
through the ``cope preprocess`` slot cache at K keyframes per GOP (I + Δ entries), each as one
chat turn with its answer. The vision tower is frozen (LLaVA-Video), everything else trains, as in
``cope finetune``. Every step runs ``CopeVideoLM.forward`` on the same inputs; the median of
``--repeats`` steps after one warm-up is reported, so two versions of the code can be compared on
the same batch (run the script from each checkout). The same steps are then timed again with the
frozen tower's features memoised (``TowerFeatureMemo``, what ``cope finetune`` uses): the warm-up
step fills the memo, as the first epoch does in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cope.data.cache import SlotCache, visual_input_from_cache
from cope.model.videolm import CopeVideoLM
from cope.model.videolm.prompting import render_chat, tokenize, video_turn
from cope.model.videolm.tower_memo import TowerFeatureMemo


def fixed_batch(model, motionqa: Path, cache: SlotCache, size: int, keyframes: int | str):
    """(input_ids, labels, visual inputs) of ``size`` clips, one question each."""
    questions: dict[str, dict] = {}
    for line in (motionqa / "test.jsonl").read_text().splitlines():
        question = json.loads(line)
        questions.setdefault(str((motionqa / question["video"]).resolve()), question)
    input_ids, labels, visuals = [], [], []
    for video, question in list(questions.items())[:size]:
        text = render_chat(
            model,
            [video_turn(model, question["question"]), {"role": "assistant", "content": question["answer"]}],
            add_generation_prompt=False,
        )
        ids = tokenize(model, text)
        input_ids.append(ids)
        labels.append(ids.clone())
        visuals.append(visual_input_from_cache(cache.entry(video), keyframes))
    return input_ids, labels, visuals


def step_times(model, batch, repeats: int) -> list[float]:
    """Seconds of 1 + ``repeats`` forward + backward passes on ``batch`` (the first is a warm-up)."""
    times = []
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(*batch).loss.backward()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="src/cope/assets/cope-tiny")
    parser.add_argument(
        "--motionqa", type=Path, required=True, help="a `cope motionqa generate` folder (test split)"
    )
    parser.add_argument("--cache", type=Path, required=True, help="its `cope preprocess` slot cache")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--keyframes-per-gop",
        type=lambda value: value if value == "dense" else int(value),
        default=1,
        help="K, or dense (every 1-FPS slot as RGB: stage 0 of CoPE-Tiny)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = CopeVideoLM.from_pretrained(args.model)
    model.train()
    model.vision_tower.requires_grad_(False)
    batch = fixed_batch(model, args.motionqa, SlotCache(args.cache), args.batch, args.keyframes_per_gop)
    times = step_times(model, batch, args.repeats)
    model.tower_memo = TowerFeatureMemo()
    memo_times = step_times(model, batch, args.repeats)
    report = {
        "benchmark": "stage2_step",
        "model": args.model,
        "batch": len(batch[0]),
        "rgb_frames": sum(v.num_rgb for v in batch[2]),
        "delta_frames": sum(v.num_delta for v in batch[2]),
        "threads": args.threads,
        "step_s_median": round(statistics.median(times[1:]), 4),
        "step_s_runs": [round(t, 4) for t in times[1:]],
        "memo_step_s_median": round(statistics.median(memo_times[1:]), 4),
        "memo_speedup": round(statistics.median(times[1:]) / statistics.median(memo_times[1:]), 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
