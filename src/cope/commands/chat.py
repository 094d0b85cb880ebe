"""``cope chat VIDEO``: many questions about one video, reusing the KV cache across turns.

Questions come from stdin, one per line (the prompt ``you>`` goes to stderr); answers stream to
stdout. ``/quit`` or end of input ends the session. The video is encoded once; each later turn
prefills only its own new tokens. With ``--json`` nothing streams: one object with every turn is
printed at the end.
"""

from __future__ import annotations

import json
import sys

from cope.commands.ask import add_ask_options, load_and_encode, summary_line
from cope.errors import CopeInputError

QUIT_COMMANDS = ("/quit", "/exit")


def cmd_chat(args) -> int:
    model, encoded, generation = load_and_encode(args)
    session = model.chat(encoded, generation)
    print(
        f"{args.video}: {encoded.visual_tokens} visual tokens ({encoded.mode}). "
        f"Ask a question; /quit or end of input to leave.",
        file=sys.stderr,
    )
    turns = []
    while True:
        print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            print(file=sys.stderr)
            break
        question = line.strip()
        if not question:
            continue
        if question in QUIT_COMMANDS:
            break
        try:
            stream = session.stream(question)
        except CopeInputError as exc:  # a bad question ends the turn, not the session
            print(f"cope: error: {exc}", file=sys.stderr)
            continue
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        answer = stream.answer
        if not args.json:
            sys.stdout.write("\n")
            sys.stdout.flush()
        print(summary_line(encoded, answer), file=sys.stderr)
        turns.append({"question": question, **answer.to_dict()})
    if args.json:
        print(
            json.dumps(
                {
                    "model": model.name,
                    "mode": encoded.mode,
                    "visual_tokens": encoded.visual_tokens,
                    "turns": turns,
                }
            )
        )
    return 0


def register(commands) -> None:
    parser = commands.add_parser("chat", help="multi-turn questions about a video (stdin → stdout)")
    parser.add_argument("video", help="any video file PyAV/FFmpeg can read")
    parser.add_argument("--json", action="store_true", help="print one JSON object with all turns at the end")
    add_ask_options(parser)
    parser.set_defaults(func=cmd_chat)
