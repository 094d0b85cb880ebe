"""``cope budget``: the longest video each sampling config fits in a context budget (paper Fig. 4b)."""

from __future__ import annotations

import json
import sys

from cope.commands.common import check_output
from cope.errors import CopeInputError
from cope.plan import DEFAULT_FUSION


def register(commands) -> None:
    parser = commands.add_parser(
        "budget", help="longest video each config fits in a context budget (paper Fig. 4b)"
    )
    parser.add_argument(
        "--accounting",
        choices=("paper", "project-page"),
        default="paper",
        help="token accounting: 'paper' = RGB 210 / P-frame 10 as the models use (default); "
        "'project-page' = RGB 210 / P-frame 9, which reproduces the project page's table",
    )
    parser.add_argument(
        "--budgets",
        default="32K,64K,128K,256K,512K,1M",
        help="comma-separated context budgets; K = 1024, M = 1024² tokens (default: 32K…1M)",
    )
    parser.add_argument(
        "--fusion",
        type=int,
        default=DEFAULT_FUSION,
        help="frames per sampling slot; 30 = 1 FPS (default: 30)",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="draw the table as Fig. 4b")
    parser.add_argument("--overwrite", action="store_true", help="replace --plot if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=cmd_budget)


def cmd_budget(args) -> int:
    from cope.eval.budget import budget_table, format_table, parse_budget, plot_table

    try:
        budgets = tuple(parse_budget(b) for b in args.budgets.split(",") if b.strip())
    except ValueError as exc:
        raise CopeInputError(f"--budgets: {exc}") from exc
    if not budgets:
        raise CopeInputError("--budgets: give at least one budget")
    try:
        table = budget_table(budgets, args.accounting, args.fusion)
    except ValueError as exc:
        raise CopeInputError(f"--fusion: {exc}") from exc
    if args.plot:
        out = check_output(args.plot, args.overwrite)
        plot_table(table, out)
        print(f"plot written to {out}", file=sys.stderr)
    print(json.dumps(table) if args.json else format_table(table))
    return 0
