"""``cope infer LIST --out FILE.jsonl``: answers for many videos, one JSON line each, resumable.

LIST is either a text file with one video path per line (``--question`` asks the same question of
each; blank lines and ``#`` comments are skipped) or a JSONL file of objects with ``"video"`` and
``"question"`` (``--question`` fills in a missing one; other keys are copied to the output).
Relative video paths are relative to LIST's directory.

Every output line is the input object plus either the answer fields of ``cope ask --json`` or
``"error"``. A rerun skips every (video, question) already in the output, so an interrupted run
continues where it stopped; ``--retry-errors`` first drops the failed lines so they run again. A
bad video is recorded with its error and the run goes on. Consecutive questions about the same
video share one encoding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cope.commands.ask import (
    add_ask_options,
    answer_record,
    check_mode,
    check_sampling,
    generation_config,
    load_model,
    model_config,
    open_model_video,
)
from cope.commands.common import sampling_options
from cope.errors import CopeInputError
from cope.hub import atomic_write_text


def read_requests(path: Path, question: str | None) -> list[dict]:
    """The list file → [{"video", "question", …}] in order."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise CopeInputError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CopeInputError(f"{path}: cannot read the list ({exc})") from exc
    requests = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CopeInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(item.get("video"), str):
                raise CopeInputError(f'{path}:{number}: a JSON line needs a "video" string')
        else:
            item = {"video": line}
        item.setdefault("question", question)
        if not isinstance(item["question"], str) or not item["question"].strip():
            raise CopeInputError(f'{path}:{number}: no question (give --question or a "question" key)')
        requests.append(item)
    if not requests:
        raise CopeInputError(f"{path}: the list has no videos")
    return requests


def request_key(item: dict) -> tuple[str, str]:
    return item["video"], item["question"]


def read_done(out: Path, retry_errors: bool) -> set[tuple[str, str]]:
    """Keys already answered (or failed) in ``out``. Drops a torn last line left by a killed run;
    with ``retry_errors`` rewrites the file without its error lines."""
    if not out.exists():
        return set()
    if not out.is_file():
        raise CopeInputError(f"{out}: not a file")
    text = out.read_text()
    records, kept = [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "video" not in record or "question" not in record:
                raise ValueError
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # the last line of a run killed mid-write
            raise CopeInputError(
                f"{out}:{number}: not a `cope infer` output line; refusing to append to it"
            ) from exc
        records.append(record)
        if not (retry_errors and "error" in record):
            kept.append(line)
    if len(kept) != len(records) or not text.endswith("\n"):
        _rewrite(out, kept)
    return {request_key(r) for r in records if not (retry_errors and "error" in r)}


def _rewrite(out: Path, lines: list[str]) -> None:
    atomic_write_text(out, "".join(line + "\n" for line in lines))


def cmd_infer(args) -> int:
    from tqdm import tqdm

    list_path = Path(args.list)
    requests = read_requests(list_path, args.question)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CopeInputError(f"{out.parent}: output directory does not exist")
    done = read_done(out, args.retry_errors)
    todo = [item for item in requests if request_key(item) not in done]
    name, config = model_config(args)
    generation = generation_config(args, config)
    check_mode(config, args)
    model = load_model(args, name) if todo else None
    answered = failed = 0
    # Consecutive questions about one video share its encoding (or its error).
    last_video, encoded, video_error = None, None, None
    with out.open("a") as sink, tqdm(total=len(todo), desc="infer", unit="question", file=sys.stderr) as bar:
        for item in todo:
            video_path = _video_path(list_path, item["video"])
            try:
                if video_path != last_video:
                    last_video, encoded, video_error = video_path, None, None
                    try:
                        video = open_model_video(config, video_path, args)
                        check_sampling(config, video, args, video_path)
                        encoded = model.encode_video(video, args.mode, **sampling_options(args))
                    except CopeInputError as exc:
                        video_error = exc
                if video_error is not None:
                    raise video_error
                answer = model.generate(model.build_prompt(encoded, item["question"]), generation)
                record = {**item, **answer_record(model, encoded, answer)}
                answered += 1
            except CopeInputError as exc:
                record = {**item, "error": str(exc)}
                failed += 1
            except Exception as exc:  # one broken video must not end a long batch
                record = {**item, "error": f"internal error: {type(exc).__name__}: {exc}"}
                failed += 1
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(1)
    summary = {
        "out": str(out),
        "answered": answered,
        "failed": failed,
        "skipped": len(requests) - len(todo),
        "total": len(requests),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{out}: {answered} answered, {failed} failed, {summary['skipped']} already done "
            f"({len(requests)} in {list_path})",
            file=sys.stderr,
        )
    return 0


def _video_path(list_path: Path, video: str) -> Path:
    path = Path(video).expanduser()
    return path if path.is_absolute() else list_path.parent / path


def register(commands) -> None:
    parser = commands.add_parser("infer", help="answer questions about many videos → JSONL (resumable)")
    parser.add_argument("list", help='text file of video paths, or JSONL of {"video", "question"}')
    parser.add_argument("--question", help="the question to ask of every video without its own")
    parser.add_argument(
        "--out", required=True, metavar="FILE.jsonl", help="appended to; finished entries are skipped"
    )
    parser.add_argument(
        "--retry-errors", action="store_true", help="run the entries that failed before again"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_ask_options(parser)
    parser.set_defaults(func=cmd_infer)
