"""MotionQA results table: the paper's Table 1 / H.2 / H.3 / H.4 shape at CoPE-Tiny scale.

For every configuration: accuracy on the MotionQA test split and visual tokens per clip (and % of
dense). Accuracy is reported overall, per question type and per group, each beside the uniform
guess among the options (the mean of 1 / len(options) over the group's questions):
* needs motion (``needs_motion``: every question the frame at t = 0 cannot answer), and within it
  single-subject motion (direction, first_half, second_half, pan, reverse: one object's or the
  camera's path) and object-choice (most_moved, fastest, order_first, disappear: the answer is one of
  the clip's objects); direction_changes, appear_colour and appear_shape are in neither;
* appearance (colour / shape of an object visible at t = 0), overall and by how many objects are
  visible at t = 0 (from the split's ``{split}-meta.jsonl`` scenes; absent file: NaN).
Prints one JSON object; ``--out DIR`` also writes table.json, table.md and table.png (accuracy vs
visual tokens).

    python benchmarks/motionqa_table.py --base build/tiny/stage0/final --cope build/tiny/stage2/final \\
        --dense build/tiny/stage2-dense/final --with-stage1 build/tiny/stage2-with-stage1/final \\
        [--free-queries DIR] --out build/tiny/table

Rows (each model reads the test clips through the ``cope preprocess`` slot cache, which holds
exactly what ``open_video`` + ``CodecVideo.entries`` give for the same canonical settings):
* base model (stage 0, dense RGB training): dense (all 8 one-second slots as RGB) and
  keyframes-only at 1/2/4 keyframes per GOP — the LLaVA-Video rows of Table 1;
* the equal-steps dense baseline (``--dense``: stage 2's run with dense RGB input instead of CoPE's,
  configs/tiny/stage2-dense.yaml): dense — the same LLM and training as CoPE's, only the input differs;
* CoPE (stages 0 → 2; CoPE-Tiny skips stage 1): 1/2/4 keyframes + Δ-frames (Table 1), the same
  keyframes without Δ-tokens (H.4), Δ-tokens zeroed at 1 keyframe (H.3), and dense RGB;
* CoPE with stage 1 (stages 0 → 1 → 2, the paper's recipe; H.2): 1 keyframe + Δ-frames;
* CoPE with the paper's free-query Δ-encoder, trained by the paper's recipe (stage 1, then stage 2
  from it: configs/tiny/stage2-free-queries.yaml; ``--free-queries``): 1 keyframe + Δ-frames, Δ
  zeroed and I-frames only.
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
from cope.motionqa import Scene

# (row name, model key, plan: K or "dense", Δ handling: "delta" | "none" | "zero")
ROWS = [
    ("dense (base)", "base", "dense", "none"),
    ("dense, equal steps", "dense", "dense", "none"),
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
    ("CoPE k1 + Δ, with stage 1 (H.2)", "with_stage1", 1, "delta"),
    ("CoPE k1 + Δ, free queries", "free_queries", 1, "delta"),
    ("CoPE k1, Δ zeroed, free queries", "free_queries", 1, "zero"),
    ("CoPE k1, I-frames only, free queries", "free_queries", 1, "none"),
]

SINGLE_SUBJECT_TYPES = ("direction", "first_half", "second_half", "pan", "reverse")
OBJECT_CHOICE_TYPES = ("most_moved", "fastest", "order_first", "disappear")
# Question group → its accuracy key in a row (free-form: "freeform_" + key). The first three are
# the table's original keys.
GROUP_KEYS = {
    "all": "accuracy",
    "motion": "motion_accuracy",
    "appearance": "appearance_accuracy",
    "single_subject": "single_subject_accuracy",
    "object_choice": "object_choice_accuracy",
    "appearance_1_object": "appearance_1_object_accuracy",
}


def load_questions(motionqa: Path, split: str, limit: int | None) -> dict[str, list[dict]]:
    """Test questions grouped by clip video path (absolute), in file order. Each question gets
    "objects_at_start": how many objects its clip shows at t = 0 (None without the meta file)."""
    objects_at_start = count_objects_at_start(motionqa / f"{split}-meta.jsonl")
    by_video: dict[str, list[dict]] = {}
    for line in (motionqa / f"{split}.jsonl").read_text().splitlines():
        q = json.loads(line)
        q["objects_at_start"] = objects_at_start.get(q["video"])
        by_video.setdefault(str((motionqa / q["video"]).resolve()), []).append(q)
    videos = list(by_video)[:limit] if limit else list(by_video)
    return {v: by_video[v] for v in videos}


def count_objects_at_start(meta_path: Path) -> dict[str, int]:
    """Clip video (as the split's records name it) → objects visible at t = 0; {} without the file."""
    if not meta_path.is_file():
        return {}
    counts = {}
    for line in meta_path.read_text().splitlines():
        meta = json.loads(line)
        scene = Scene.from_dict(meta["scene"])
        counts[meta["video"]] = sum(obj.visible_at(0) for obj in scene.objects)
    return counts


def question_groups(q: dict) -> list[str]:
    """The groups of ``GROUP_KEYS`` a question counts in."""
    groups = ["all", "motion" if q["needs_motion"] else "appearance"]
    if q["type"] in SINGLE_SUBJECT_TYPES:
        groups.append("single_subject")
    if q["type"] in OBJECT_CHOICE_TYPES:
        groups.append("object_choice")
    if not q["needs_motion"] and q["objects_at_start"] == 1:
        groups.append("appearance_1_object")
    return groups


def evaluate_row(model, cache, questions, plan_k, deltas: str, max_new_tokens: int, generate: bool) -> dict:
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    chosen: dict[str, list[bool]] = {group: [] for group in GROUP_KEYS}
    free: dict[str, list[bool]] = {group: [] for group in GROUP_KEYS}
    by_type: dict[str, list[bool]] = {}
    by_objects: dict[str, list[bool]] = {}  # appearance questions by objects visible at t = 0
    tokens = []
    for video, items in tqdm(questions.items(), desc="clips", leave=False, file=sys.stderr):
        visual = visual_input_from_cache(cache.entry(video), plan_k)
        if deltas == "none":
            visual = visual.without_deltas()
        with torch.inference_mode():
            embeds = model.embed_visual(visual, zero_deltas=deltas == "zero")
        tokens.append(embeds.shape[0])
        for q in items:
            groups = question_groups(q)
            prompt = model.build_prompt(embeds, q["question"])
            picked, _ = pick_option(model, prompt.inputs_embeds, q["options"])
            ok = q["options"][picked] == q["answer"]
            for group in groups:
                chosen[group].append(ok)
            by_type.setdefault(q["type"], []).append(ok)
            if not q["needs_motion"] and q["objects_at_start"] is not None:
                by_objects.setdefault(str(q["objects_at_start"]), []).append(ok)
            if generate:
                answer = model.generate(prompt, generation)
                for group in groups:
                    free[group].append(score_prediction(answer.text, q["answer"], q["options"]))
    return {
        **accuracies(chosen),
        **{f"freeform_{key}": value for key, value in accuracies(free).items()},
        "questions": len(chosen["all"]),
        "motion_questions": len(chosen["motion"]),
        "questions_by_group": {group: len(chosen[group]) for group in GROUP_KEYS},
        "visual_tokens": sum(tokens) / len(tokens),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "appearance_accuracy_by_objects": {n: _mean(v) for n, v in sorted(by_objects.items())},
    }


def chance(questions: dict[str, list[dict]]) -> dict:
    """Expected accuracy of a uniform guess among each question's options (the floor to beat),
    overall, per group, per question type and for appearance per objects visible at t = 0."""
    odds: dict[str, list[float]] = {group: [] for group in GROUP_KEYS}
    by_type: dict[str, list[float]] = {}
    by_objects: dict[str, list[float]] = {}
    for items in questions.values():
        for q in items:
            odd = 1 / len(q["options"])
            for group in question_groups(q):
                odds[group].append(odd)
            by_type.setdefault(q["type"], []).append(odd)
            if not q["needs_motion"] and q["objects_at_start"] is not None:
                by_objects.setdefault(str(q["objects_at_start"]), []).append(odd)
    return {
        **accuracies(odds),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "appearance_accuracy_by_objects": {n: _mean(v) for n, v in sorted(by_objects.items())},
    }


def accuracies(groups: dict[str, list]) -> dict:
    """Question group → the table's accuracy keys (``GROUP_KEYS``), in percent."""
    return {key: _mean(groups[group]) for group, key in GROUP_KEYS.items()}


def _mean(values: list) -> float:
    return 100.0 * sum(values) / len(values) if values else float("nan")


# The main table's accuracy columns: (header, row key), forced choice unless it says free-form.
COLUMNS = (
    ("accuracy", "accuracy"),
    ("needs motion", "motion_accuracy"),
    ("single-subject motion", "single_subject_accuracy"),
    ("object-choice", "object_choice_accuracy"),
    ("appearance", "appearance_accuracy"),
    ("appearance, 1 object", "appearance_1_object_accuracy"),
    ("needs motion, free-form", "freeform_motion_accuracy"),
)


def markdown(rows: list[dict], guess: dict) -> str:
    """The accuracy table (forced choice, with the free-form motion column), the per-type table and
    appearance by objects at t = 0, each with the uniform guess as its last row."""
    lines = [
        "| configuration | visual tokens / clip | % of dense | " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['visual_tokens']:.0f} | {r['tokens_pct_of_dense']:.1f} | "
            + " | ".join(f"{r[key]:.1f}" for _, key in COLUMNS)
            + " |"
        )
    guessed = [f"{guess[key]:.1f}" if key in guess else "—" for _, key in COLUMNS]
    lines.append("| uniform guess among the options | — | — | " + " | ".join(guessed) + " |")
    lines += _by_key_table(rows, guess, "accuracy_by_type", "configuration")
    lines += _by_key_table(rows, guess, "appearance_accuracy_by_objects", "appearance, by objects at t = 0")
    return "\n".join(lines) + "\n"


def _by_key_table(rows: list[dict], guess: dict, field: str, title: str) -> list[str]:
    """A table of one dict-valued field (columns: its keys), the uniform guess last; none if empty."""
    columns = list(guess[field])
    if not columns:
        return []
    lines = ["", f"| {title} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(
            f"| {r['config']} | " + " | ".join(f"{r[field].get(c, float('nan')):.1f}" for c in columns) + " |"
        )
    lines.append("| uniform guess | " + " | ".join(f"{guess[field][c]:.1f}" for c in columns) + " |")
    return lines


def plot(rows: list[dict], guess: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "base": ("s", "tab:gray"),
        "cope": ("o", "tab:blue"),
        "with_stage1": ("^", "tab:orange"),
        "free_queries": ("D", "tab:green"),
    }
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
    parser.add_argument("--dense", help="the equal-steps dense baseline (stage 2 on dense RGB)")
    parser.add_argument(
        "--with-stage1", dest="with_stage1", help="stage 2 trained from the stage-1 Δ-encoder"
    )
    parser.add_argument(
        "--free-queries",
        dest="free_queries",
        help="the stage-2 CoPE model with the paper's free-query Δ-encoder (trained with stage 1)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    parser.add_argument(
        "--row",
        action="append",
        choices=[name for name, *_ in ROWS],
        help="evaluate only this row (repeatable; default: every row whose model is given)",
    )
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
    paths = {
        "base": args.base,
        "cope": args.cope,
        "dense": args.dense,
        "with_stage1": args.with_stage1,
        "free_queries": args.free_queries,
    }
    models = {key: CopeVideoLM.from_pretrained(path) for key, path in paths.items() if path}
    rows = []
    for name, key, plan_k, deltas in ROWS:
        if key not in models or (args.row and name not in args.row):
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
        print(
            f"{name}: {result['accuracy']:.1f} (motion {result['motion_accuracy']:.1f}, "
            f"single-subject {result['single_subject_accuracy']:.1f})",
            file=sys.stderr,
        )
    # Without a dense row (no --base, --cope or --dense) there is no 100% to compare with.
    dense_tokens = next((r["visual_tokens"] for r in rows if r["plan"] == "dense"), float("nan"))
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
