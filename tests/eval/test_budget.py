"""`cope budget`: the project page's table cell by cell, and the fast count against whole plans."""

from __future__ import annotations

import json

import pytest

from cope.cli import main
from cope.eval.budget import (
    ACCOUNTINGS,
    BUDGET_CONFIGS,
    BUDGETS,
    GopCosts,
    budget_table,
    parse_budget,
    plan_tokens,
)

# The paper's project page: minutes of video that fit each context budget at 1 FPS.
PROJECT_PAGE = {
    "dense": [2, 5, 10, 20, 41, 83],
    "cope_k4": [4, 9, 19, 39, 79, 159],
    "cope_k2": [9, 18, 36, 73, 147, 294],
    "cope_k1": [16, 32, 64, 128, 256, 512],
}


def minutes(table: dict) -> dict[str, list[int]]:
    return {row["config"]: [cell["minutes"] for cell in row["cells"]] for row in table["rows"]}


def test_project_page_table_is_reproduced_cell_by_cell():
    table = budget_table(BUDGETS, accounting="project-page")
    assert table["budgets"] == [32768, 65536, 131072, 262144, 524288, 1048576]
    assert minutes(table) == PROJECT_PAGE


def test_paper_layout_gives_fewer_minutes_to_cope_rows_only():
    table = budget_table(BUDGETS, accounting="paper")
    assert minutes(table) == {
        "dense": [2, 5, 10, 20, 41, 83],
        "cope_k4": [4, 9, 19, 39, 79, 158],
        "cope_k2": [9, 18, 36, 72, 145, 291],
        "cope_k1": [15, 31, 62, 124, 249, 499],
    }
    per_gop = {row["config"]: row["tokens_per_gop"] for row in table["rows"]}
    assert per_gop == {"dense": 1680, "cope_k4": 880, "cope_k2": 480, "cope_k1": 280}


@pytest.mark.parametrize("accounting", sorted(ACCOUNTINGS))
@pytest.mark.parametrize("config", BUDGET_CONFIGS, ids=lambda c: c.name)
def test_gop_decomposition_equals_the_whole_plan(config, accounting):
    layout = ACCOUNTINGS[accounting]
    costs = GopCosts(config, layout)
    for seconds in [*range(0, 26), 239, 240, 241, 3599, 3601]:
        assert costs.tokens(seconds) == plan_tokens(seconds, config, layout), seconds


@pytest.mark.parametrize("config", BUDGET_CONFIGS, ids=lambda c: c.name)
def test_longest_fit_is_maximal(config):
    costs = GopCosts(config, ACCOUNTINGS["paper"])
    for budget in (209, 210, 211, 1000, 32768, 1048576):
        fit = costs.longest_fit(budget)
        assert costs.tokens(fit) <= budget < costs.tokens(fit + 1)


def test_parse_budget():
    assert parse_budget("32K") == 32768
    assert parse_budget("1m") == 1048576
    assert parse_budget("50000") == 50000
    for bad in ("", "K", "-5", "1.5M", "abc"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_cli_json_plot_and_bad_input(tmp_path, capsys):
    plot = tmp_path / "budget.png"
    assert main(["budget", "--accounting", "project-page", "--json", "--plot", str(plot)]) == 0
    table = json.loads(capsys.readouterr().out)
    assert minutes(table) == PROJECT_PAGE
    assert plot.stat().st_size > 10_000

    before = plot.read_bytes()
    assert main(["budget", "--plot", str(plot)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err
    assert plot.read_bytes() == before

    assert main(["budget", "--budgets", "32K,lots"]) == 2
    assert "--budgets" in capsys.readouterr().err
    assert main(["budget", "--fusion", "7"]) == 2

    assert main(["budget", "--budgets", "64K"]) == 0
    text = capsys.readouterr().out
    assert "64K" in text and "ours 1I+7P" in text
