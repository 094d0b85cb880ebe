"""MotionQA results table: the paper's Table 1 / H.2 / H.3 / H.4 shape at CoPE-Tiny scale.

For every configuration: accuracy on the MotionQA test split (overall, on "needs motion" questions
and on appearance questions) and visual tokens per clip (and % of dense). Prints one JSON object;
``--out DIR`` also writes table.json, table.md and table.png (accuracy vs visual tokens).

    python benchmarks/motionqa_table.py --base build/tiny/stage0/final --cope build/tiny/stage2/final \\
        --no-stage1 build/tiny/stage2-no-stage1/final --out build/tiny/table

Rows (each model reads the test clips through the ``cope preprocess`` slot cache, which holds
exactly what ``open_video`` + ``CodecVideo.entries`` give for the same canonical settings):
* base model (stage 0, dense RGB training): dense (all 8 one-second slots as RGB) and
  keyframes-only at 1/2/4 keyframes per GOP — the LLaVA-Video rows of Table 1;
* CoPE (stages 0 → 1 → 2): 1/2/4 keyframes + Δ-frames (Table 1), the same keyframes without
  Δ-tokens (H.4), Δ-tokens zeroed at 1 keyframe (H.3), and dense RGB;
* CoPE without stage 1 (H.2): 1 keyframe + Δ-frames.
Scoring: the primary columns are forced choice (``cope.eval.choice``: the option with the highest
summed log-probability, so every figure sits on top of a known chance level); the free-form
column generates greedily and scores with ``cope.eval.scoring.score_prediction`` (an answer that
names no option is wrong). ``--scoring choice`` skips the generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cope.data.cache import SlotCache, visual_input_from_cache
from cope.eval.choice import pick_option
from cope.eval.scoring import score_prediction
from cope.model.videolm import CopeVideoLM, GenerationConfig

# (row name, model key, plan: K or "dense", Δ handling: "delta" | "none" | "zero")
ROWS = [
    ("dense (base)", "base", "dense", "none"),
    ("keyframes-only k1 (base)", "base", 1, "none"),
    ("keyframes-only k2 (base)", "base", 2, "none"),
    ("keyframes-only k4 (base)", "base", 4, "none"),
    ("CoPE k1 + Δ", "cope", 1, "delta"),
    ("CoPE k2 + Δ", "cope", 2, "delta"),
    ("CoPE k4 + Δ", "cope", 4, "delta"),
    ("CoPE k1, Δ zeroed (H.3)", "cope", 1, "zero"),
    ("CoPE k1, I-frames only (H.4)", "cope", 1, "none"),
    ("CoPE k2, I-frames only (H.4)", "cope", 2, "none"),
    ("CoPE k4, I-frames only (H.4)", "cope", 4, "none"),
    ("CoPE dense RGB", "cope", "dense", "none"),
    ("CoPE k1 + Δ, no stage 1 (H.2)", "no_stage1", 1, "delta"),
]


def load_questions(motionqa: Path, split: str, limit: int | None) -> dict[str, list[dict]]:
    """Test questions grouped by clip video path (absolute), in file order."""
    by_video: dict[str, list[dict]] = {}
    for line in (motionqa / f"{split}.jsonl").read_text().splitlines():
        q = json.loads(line)
        by_video.setdefault(str((motionqa / q["video"]).resolve()), []).append(q)
    videos = list(by_video)[:limit] if limit else list(by_video)
    return {v: by_video[v] for v in videos}


def evaluate_row(model, cache, questions, plan_k, deltas: str, max_new_tokens: int, generate: bool) -> dict:
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    chosen = {"all": [], "motion": [], "appearance": []}
    free = {"all": [], "motion": [], "appearance": []}
    by_type: dict[str, list[bool]] = {}
    tokens = []
    for video, items in tqdm(questions.items(), desc="clips", leave=False, file=sys.stderr):
        visual = visual_input_from_cache(cache.entry(video), plan_k)
        if deltas == "none":
            visual = visual.without_deltas()
        with torch.inference_mode():
            embeds = model.embed_visual(visual, zero_deltas=deltas == "zero")
        tokens.append(embeds.shape[0])
        for q in items:
            group = "motion" if q["needs_motion"] else "appearance"
            prompt = model.build_prompt(embeds, q["question"])
            picked, _ = pick_option(model, prompt.inputs_embeds, q["options"])
            ok = q["options"][picked] == q["answer"]
            for key in ("all", group):
                chosen[key].append(ok)
            by_type.setdefault(q["type"], []).append(ok)
            if generate:
                answer = model.generate(prompt, generation)
                for key in ("all", group):
                    free[key].append(score_prediction(answer.text, q["answer"], q["options"]))
    return {
        **accuracies(chosen),
        **{f"freeform_{key}": value for key, value in accuracies(free).items()},
        "questions": len(chosen["all"]),
        "motion_questions": len(chosen["motion"]),
        "visual_tokens": sum(tokens) / len(tokens),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
    }


def chance(questions: dict[str, list[dict]]) -> dict:
    """Expected accuracy of a uniform guess among each question's options (the floor to beat),
    overall, per group and per question type."""
    odds = {"all": [], "motion": [], "appearance": []}
    by_type: dict[str, list[float]] = {}
    for items in questions.values():
        for q in items:
            odds["all"].append(1 / len(q["options"]))
            odds["motion" if q["needs_motion"] else "appearance"].append(1 / len(q["options"]))
            by_type.setdefault(q["type"], []).append(1 / len(q["options"]))
    return {**accuracies(odds), "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())}}


def accuracies(groups: dict[str, list]) -> dict:
    """{"all", "motion", "appearance"} → the table's accuracy keys, in percent."""
    return {
        "accuracy": _mean(groups["all"]),
        "motion_accuracy": _mean(groups["motion"]),
        "appearance_accuracy": _mean(groups["appearance"]),
    }


def _mean(values: list) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


def markdown(rows: list[dict], guess: dict) -> str:
    """The accuracy table (forced choice, with the free-form motion column) and the per-type table,
    each with the uniform guess as its last row."""
    lines = [
        "| configuration | visual tokens / clip | % of dense | accuracy | needs motion | appearance "
        "| needs motion, free-form |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['visual_tokens']:.0f} | {r['tokens_pct_of_dense']:.1f} | "
            f"{r['accuracy']:.1f} | {r['motion_accuracy']:.1f} | {r['appearance_accuracy']:.1f} | "
            f"{r['freeform_motion_accuracy']:.1f} |"
        )
    lines.append(
        f"| uniform guess among the options | — | — | {guess['accuracy']:.1f} | "
        f"{guess['motion_accuracy']:.1f} | {guess['appearance_accuracy']:.1f} | — |"
    )
    types = list(guess["accuracy_by_type"])
    lines += ["", "| configuration | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for r in rows:
        lines.append(
            f"| {r['config']} | " + " | ".join(f"{r['accuracy_by_type'][t]:.1f}" for t in types) + " |"
        )
    lines.append(
        "| uniform guess | " + " | ".join(f"{guess['accuracy_by_type'][t]:.1f}" for t in types) + " |"
    )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], guess: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"base": ("s", "tab:gray"), "cope": ("o", "tab:blue"), "no_stage1": ("^", "tab:orange")}
    for r in rows:
        marker, colour = styles[r["model"]]
        if r["deltas"] == "zero":
            colour = "tab:red"
        ax.scatter(r["tokens_pct_of_dense"], r["motion_accuracy"], marker=marker, color=colour, s=40)
        ax.annotate(
            r["config"],
            (r["tokens_pct_of_dense"], r["motion_accuracy"]),
            fontsize=7,
            xytext=(4, 2),
            textcoords="offset points",
        )
    ax.axhline(guess["motion_accuracy"], color="tab:gray", linestyle="--", linewidth=1)
    ax.text(
        0.01,
        guess["motion_accuracy"],
        " uniform guess",
        transform=ax.get_yaxis_transform(),
        fontsize=7,
        va="bottom",
    )
    ax.set_xlabel("visual tokens (% of dense 1-FPS RGB)")
    ax.set_ylabel("accuracy on needs-motion questions (%)")
    ax.set_title("MotionQA test split, CoPE-Tiny (CPU)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--motionqa", type=Path, default=Path("build/tiny/motionqa"))
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("build/tiny/cache"),
        help="slot cache of the split (the recipe caches every split)",
    )
    parser.add_argument("--base", help="the stage-0 (dense) model")
    parser.add_argument("--cope", help="the stage-2 CoPE model")
    parser.add_argument("--no-stage1", dest="no_stage1", help="stage 2 trained without stage 1")
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    parser.add_argument(
        "--scoring",
        choices=("both", "choice"),
        default="both",
        help="both: forced choice and the free-form column (default); choice: forced choice only",
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    questions = load_questions(args.motionqa, args.split, args.limit)
    cache = SlotCache(args.cache)
    paths = {"base": args.base, "cope": args.cope, "no_stage1": args.no_stage1}
    models = {key: CopeVideoLM.from_pretrained(path) for key, path in paths.items() if path}
    rows = []
    for name, key, plan_k, deltas in ROWS:
        if key not in models:
            continue
        started = time.perf_counter()
        result = evaluate_row(
            models[key], cache, questions, plan_k, deltas, args.max_new_tokens, args.scoring == "both"
        )
        rows.append(
            {
                "config": name,
                "model": key,
                "plan": plan_k,
                "deltas": deltas,
                **result,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"{name}: {result['accuracy']:.1f} (motion {result['motion_accuracy']:.1f})", file=sys.stderr)
    dense_tokens = next(r["visual_tokens"] for r in rows if r["plan"] == "dense")
    for r in rows:
        r["tokens_pct_of_dense"] = 100.0 * r["visual_tokens"] / dense_tokens
    guess = chance(questions)
    report = {"split": args.split, "clips": len(questions), "models": paths, "rows": rows, "chance": guess}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "table.md").write_text(markdown(rows, guess))
        plot(rows, guess, args.out / "table.png")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
