"""``cope eval``: accuracy on a local JSONL task, or on lmms-eval tasks through its evaluator."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

from cope.commands.common import (
    add_model_options,
    add_sampling_options,
    check_model_plan_args,
    check_output,
    sampling_options,
)
from cope.errors import CopeInputError
from cope.hub import atomic_write_text

LMMS_INSTALL = "pip install --no-deps lmms-eval==0.7.3 && pip install -e '.[eval]'"


def register(commands) -> None:
    parser = commands.add_parser(
        "eval", help="accuracy on a local JSONL task or on lmms-eval tasks (--lmms-tasks)"
    )
    parser.add_argument(
        "task",
        nargs="?",
        metavar="TASK.jsonl",
        help='local task: one {"video", "question", "options"?, "answer", ...} object per line',
    )
    parser.add_argument(
        "--lmms-tasks",
        metavar="T1,T2",
        help="run these lmms-eval tasks instead (cope_local / cope_local_mcppl read TASK.jsonl)",
    )
    add_model_options(parser.add_argument_group("model"))
    add_sampling_options(parser.add_argument_group("sampling (defaults: the model's config)"))
    parser.add_argument(
        "--prompt",
        choices=("bare", "options"),
        default="bare",
        help="bare: the question as written (default; how MotionQA trains); options: + lettered options",
    )
    parser.add_argument(
        "--scoring",
        choices=("choice", "generate"),
        default="choice",
        help="choice: multiple-choice questions take the option with the highest log-probability "
        "(default; open questions are generated); generate: every answer generated and matched",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (default: 32)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples (per task)")
    parser.add_argument("--out", metavar="PRED.jsonl", help="write one scored JSON line per sample")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if args.task is None and args.lmms_tasks is None:
        raise CopeInputError("give a TASK.jsonl, --lmms-tasks, or both")
    if args.limit is not None and args.limit < 1:
        raise CopeInputError(f"--limit must be at least 1, got {args.limit}")
    out = check_output(args.out, args.overwrite)
    _check_plan(args)
    samples = None
    if args.task is not None:
        from cope.eval.local import load_local_task

        samples = load_local_task(args.task)[: args.limit]
    if args.lmms_tasks is not None:
        plan = _plan_lmms(args, samples)  # check the task names before loading the model
        report = _run_lmms(args, _load_model(args), samples, out, *plan)
        print(json.dumps(report) if args.json else _format_lmms(report))
        return 0
    model = _load_model(args)
    report = _run_local(args, model, samples, out)
    print(json.dumps(report) if args.json else _format_local(report))
    return 0


def _check_plan(args) -> None:
    """Fusion / K / GOP cap against the model's GOP, by the rules every command uses, before the
    weights load (the model's config.json alone is read)."""
    from cope.model.videolm import CopeConfig, resolve_model

    if args.max_gops is not None and args.max_gops < 1:
        raise CopeInputError(f"max GOPs must be ≥ 1, got {args.max_gops}")
    check_model_plan_args(CopeConfig.from_pretrained(resolve_model(args.model)), args)


def _load_model(args):
    from cope.model.videolm import CopeVideoLM, resolve_model

    return CopeVideoLM.from_pretrained(resolve_model(args.model), device=args.device, dtype=args.dtype)


def _run_local(args, model, samples, out: Path | None) -> dict:
    from cope.eval.local import evaluate_local, summarize

    records = list(
        evaluate_local(
            model,
            samples,
            args.mode,
            sampling_options(args),
            args.max_new_tokens,
            args.prompt,
            scoring=args.scoring,
            progress=True,
        )
    )
    if out:  # the predictions appear only once complete: an interrupted run leaves nothing
        atomic_write_text(out, "".join(json.dumps(record) + "\n" for record in records))
    for record in records:
        if "error" in record:
            print(f"cope: warning: {record['error']} (scored wrong)", file=sys.stderr)
    return {
        "task": str(args.task),
        "model": model.name,
        "mode": args.mode or model.config.mode,
        **sampling_options(args),
        "prompt": args.prompt,
        "scoring": args.scoring,
        **summarize(records),
        "out": str(out) if out else None,
    }


def _format_local(report: dict) -> str:
    lines = [
        f"{report['task']}: accuracy {report['accuracy']:.3f} "
        f"({report['correct']}/{report['samples']}, chance {report['chance']:.3f}) — "
        f"model {report['model']}, mode {report['mode']}, scoring {report['scoring']}"
    ]
    for key in ("by_type", "by_needs_motion"):
        for value, score in report.get(key, {}).items():
            lines.append(
                f"  {key[3:]}={value}: {score['accuracy']:.3f} ({score['correct']}/{score['samples']}, "
                f"chance {score['chance']:.3f})"
            )
    if report["errors"]:
        lines.append(f"  {report['errors']} samples failed (unreadable video)")
    if report["out"]:
        lines.append(f"predictions written to {report['out']}")
    return "\n".join(lines)


def _plan_lmms(args, samples) -> tuple[list[str], list[str], object]:
    """(task names, the local ones among them, a TaskManager that knows them) — or a usage error."""
    try:
        import lmms_eval.evaluator  # noqa: F401
    except ImportError as exc:
        raise CopeInputError(
            f"--lmms-tasks needs lmms-eval ({exc}); install it with: {LMMS_INSTALL}"
        ) from exc
    from loguru import logger

    from cope.eval.lmms_registry import LOCAL_TASKS, local_task_manager

    logger.remove()  # lmms-eval logs to stdout; keep stdout for our output
    logger.add(sys.stderr, level="WARNING")
    names = [name.strip() for name in args.lmms_tasks.split(",") if name.strip()]
    local = [name for name in names if name in LOCAL_TASKS]
    if local and samples is None:
        raise CopeInputError(f"--lmms-tasks {','.join(local)}: give the TASK.jsonl they should read")
    if samples is not None and len(local) != len(names):
        raise CopeInputError(f"{args.task}: a TASK.jsonl only feeds the local tasks {', '.join(LOCAL_TASKS)}")
    manager = local_task_manager(include_defaults=len(local) != len(names))
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown or not names:
        raise CopeInputError(
            f"--lmms-tasks: unknown lmms-eval task(s) {', '.join(unknown) or '(none given)'}"
        )
    return names, local, manager


def _run_lmms(args, model, samples, out: Path | None, names, local, manager) -> dict:
    from lmms_eval.evaluator import simple_evaluate

    from cope.eval.lmms_plugin import CopeLmms
    from cope.eval.lmms_registry import local_task_configs, write_lmms_jsonl

    plugin = CopeLmms(
        model=model, mode=args.mode, max_new_tokens=args.max_new_tokens, **sampling_options(args)
    )
    # lmms-eval logs and prints to stdout; stdout is for our one JSON object.
    with tempfile.TemporaryDirectory(prefix="cope-eval-") as scratch, contextlib.redirect_stdout(sys.stderr):
        tasks = names
        if local:
            tasks = local_task_configs(write_lmms_jsonl(samples, scratch, args.prompt), local)
        results = simple_evaluate(
            model=plugin, tasks=tasks, task_manager=manager, limit=args.limit, log_samples=out is not None
        )
    if out is not None:
        _write_lmms_samples(results["samples"], out)
    return {
        "tasks": results["results"],
        "model": model.name,
        "mode": args.mode or model.config.mode,
        **sampling_options(args),
        "out": str(out) if out else None,
    }


def _write_lmms_samples(samples_by_task: dict, out: Path) -> None:
    lines = (
        json.dumps({"task": task, **sample}, default=str) + "\n"
        for task, samples in samples_by_task.items()
        for sample in samples
    )
    atomic_write_text(out, "".join(lines))


def _format_lmms(report: dict) -> str:
    lines = [f"lmms-eval — model {report['model']}, mode {report['mode']}"]
    for task, metrics in report["tasks"].items():
        shown = ", ".join(
            f"{key.split(',')[0]} {value:.4f}"
            for key, value in metrics.items()
            if isinstance(value, float) and "stderr" not in key
        )
        lines.append(f"  {task}: {shown}")
    if report["out"]:
        lines.append(f"samples written to {report['out']}")
    return "\n".join(lines)
