"""Token-budget scaling: the longest video each sampling config fits in a context budget (Fig. 4b).

Every number comes from ``cope.plan``: a config's token cost for a video of ``t`` seconds is the
visual-token count of its ``TokenPlan`` (no GOP cap, since the point is how far the budget
reaches). Plans treat GOPs independently, so the cost of ``t`` seconds is
``(t // gop_s) · cost(one full GOP) + cost(a GOP cut to t % gop_s seconds)``; both terms are
computed with ``cope_plan`` on a one-GOP stream, which keeps the search exact and instant.

Accounting (``ACCOUNTINGS``):

* ``paper`` — the layout the models use (``PAPER_LAYOUT``): RGB frame 196 + 14 newlines = 210,
  P-frame 2 rows of 4 Δ-tokens + 2 newlines = 10 (``cope inspect`` counts the same way).
* ``project-page`` — the accounting that reproduces the paper's project-page table cell by
  cell: RGB frame 210, P-frame 8 Δ-tokens + 1 newline = 9.

Both count visual tokens only (no text prompt), budgets are binary (32K = 32,768 tokens,
1M = 2^20 = 1,048,576), and a video fits when all its visual tokens fit; minutes are floored.
The dense row samples one RGB frame per sampling slot (1 FPS at the default fusion of 30).
"""

from __future__ import annotations

from dataclasses import dataclass

from cope.codec.canonical import CanonicalSettings
from cope.plan import DEFAULT_FUSION, PAPER_LAYOUT, TokenLayout, cope_plan, regular_gop_starts

CANONICAL_FPS = CanonicalSettings.fps  # the paper's canonical stream: 30 fps, GOP 240
CANONICAL_GOP = CanonicalSettings.gop
BUDGETS = tuple(2**k for k in range(15, 21))  # 32K, 64K, 128K, 256K, 512K, 1M tokens
ACCOUNTINGS = {
    "paper": PAPER_LAYOUT,
    "project-page": TokenLayout(image_side=14, delta_rows=1, delta_cols=8),  # 210 / 9
}


@dataclass(frozen=True)
class BudgetConfig:
    """A sampling config of the budget table. ``keyframes_per_gop == 0`` means dense RGB sampling."""

    name: str
    label: str
    keyframes_per_gop: int


BUDGET_CONFIGS = (
    BudgetConfig("dense", "dense VideoLM at 1 FPS", 0),
    BudgetConfig("cope_k4", "ours 4I+4P", 4),
    BudgetConfig("cope_k2", "ours 2I+6P", 2),
    BudgetConfig("cope_k1", "ours 1I+7P", 1),
)


def budget_label(tokens: int) -> str:
    """32768 → "32K", 1048576 → "1M"."""
    if tokens % 2**20 == 0:
        return f"{tokens // 2**20}M"
    if tokens % 2**10 == 0:
        return f"{tokens // 2**10}K"
    return str(tokens)


def parse_budget(text: str) -> int:
    """ "32K" → 32768, "1M" → 1048576, "50000" → 50000 (binary K and M, as the paper's table)."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError(f"expected a positive token count like 32K, 1M or 50000, got {text!r}")
    return int(digits) * scale


class GopCosts:
    """Token cost of a GOP cut after each number of sampling slots, for one config and layout.

    ``costs[n]`` is the cost of the first ``n`` slots of a GOP (``n`` = 0 … slots per GOP); one
    slot is ``fusion`` canonical frames, i.e. one second at the default fusion of 30.
    """

    def __init__(
        self,
        config: BudgetConfig,
        layout: TokenLayout,
        fusion: int = DEFAULT_FUSION,
        fps: int = CANONICAL_FPS,
        gop: int = CANONICAL_GOP,
    ):
        if fusion < 1 or gop % fusion:
            raise ValueError(f"fusion must be a positive divisor of the GOP size {gop}, got {fusion}")
        self.config = config
        self.slots_per_gop = gop // fusion
        self.slot_s = fusion / fps
        if config.keyframes_per_gop == 0:  # dense: every slot is an RGB frame
            self.costs = [n * layout.iframe_tokens for n in range(self.slots_per_gop + 1)]
        else:
            self.costs = [0] + [
                cope_plan(n * fusion, [0], gop, fusion, config.keyframes_per_gop).tokens(layout)
                for n in range(1, self.slots_per_gop + 1)
            ]

    def tokens(self, slots: int) -> int:
        """Visual tokens of a video of ``slots`` sampling slots (seconds at 1 FPS)."""
        full, rest = divmod(slots, self.slots_per_gop)
        return full * self.costs[-1] + self.costs[rest]

    def longest_fit(self, budget: int) -> int:
        """The largest number of slots whose tokens fit in ``budget`` (costs grow with slots)."""
        full = budget // self.costs[-1]
        left = budget - full * self.costs[-1]
        rest = max(n for n in range(self.slots_per_gop) if self.costs[n] <= left)
        return full * self.slots_per_gop + rest


def plan_tokens(seconds: int, config: BudgetConfig, layout: TokenLayout, fusion: int = DEFAULT_FUSION) -> int:
    """Tokens of a ``seconds``-long canonical video by building its whole plan (the slow, direct way).

    ``GopCosts.tokens`` must equal this; the tests check it.
    """
    frames = seconds * CANONICAL_FPS
    if frames == 0:
        return 0
    if config.keyframes_per_gop == 0:
        return len(range(0, frames, fusion)) * layout.iframe_tokens
    starts = regular_gop_starts(frames, CANONICAL_GOP)
    plan = cope_plan(frames, starts, CANONICAL_GOP, fusion, config.keyframes_per_gop, max_gops=len(starts))
    return plan.tokens(layout)


def budget_table(
    budgets: tuple[int, ...] = BUDGETS,
    accounting: str = "paper",
    fusion: int = DEFAULT_FUSION,
    configs: tuple[BudgetConfig, ...] = BUDGET_CONFIGS,
) -> dict:
    """The longest video per config and budget, as the JSON object ``cope budget --json`` prints."""
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    layout = ACCOUNTINGS[accounting]
    rows = []
    for config in configs:
        costs = GopCosts(config, layout, fusion)
        cells = []
        for budget in budgets:
            slots = costs.longest_fit(budget)
            seconds = slots * costs.slot_s
            cells.append(
                {
                    "budget": budget,
                    "seconds": seconds,
                    "minutes": int(seconds // 60),
                    "hours": round(seconds / 3600, 2),
                    "tokens": costs.tokens(slots),
                }
            )
        rows.append(
            {
                "config": config.name,
                "label": config.label,
                "keyframes_per_gop": config.keyframes_per_gop,
                "tokens_per_gop": costs.costs[-1],
                "cells": cells,
            }
        )
    return {
        "accounting": accounting,
        "iframe_tokens": layout.iframe_tokens,
        "pframe_tokens": layout.pframe_tokens,
        "fusion": fusion,
        "effective_fps": CANONICAL_FPS / fusion,
        "gop_frames": CANONICAL_GOP,
        "budgets": list(budgets),
        "rows": rows,
    }


def format_table(table: dict) -> str:
    """The table as aligned text, minutes per cell (the project page's unit)."""
    names = [budget_label(b) for b in table["budgets"]]
    head = f"{'config':<24}" + "".join(f"{n:>8}" for n in names)
    lines = [
        f"longest video (minutes) that fits a context budget at {table['effective_fps']:g} FPS — "
        f"accounting {table['accounting']!r}: RGB frame {table['iframe_tokens']}, "
        f"P-frame {table['pframe_tokens']} tokens",
        head,
    ]
    for row in table["rows"]:
        lines.append(f"{row['label']:<24}" + "".join(f"{c['minutes']:>8}" for c in row["cells"]))
    return "\n".join(lines)


def plot_table(table: dict, out_path) -> None:
    """Fig. 4b: video length that fits against the context budget, one line per config (log–log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets = table["budgets"]
    for row in table["rows"]:
        minutes = [c["seconds"] / 60 for c in row["cells"]]
        ax.plot(budgets, minutes, marker="o", label=row["label"])
        ax.annotate(
            f"{row['cells'][-1]['minutes']} min",
            (budgets[-1], minutes[-1]),
            fontsize=8,
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlim(budgets[0] / 1.3, budgets[-1] * 1.6)  # room for the end labels
    ax.set_yscale("log")
    ax.set_xticks(budgets, [budget_label(b) for b in budgets])
    ax.set_xlabel("context budget (visual tokens)")
    ax.set_ylabel("longest video (minutes)")
    ax.set_title(f"Video length per context budget ({table['accounting']} accounting)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
