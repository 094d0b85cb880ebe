"""`cope bench --dry-run`: shapes, token counts and sizes without timing, the 7B architecture on `meta`."""

from __future__ import annotations

import json

import pytest

from cope.cli import main
from tests.eval.test_bench import CONFIGS, expected_tokens

# Qwen2-7B's published parameter count (embeddings + 28 layers + final norm, and the untied LM head).
QWEN2_7B_PARAMETERS = 7_615_616_512


def test_dry_run_on_a_tiny_model_matches_the_plan(eval_checkpoint, sample_video, eval_env, capsys):
    args = ["bench", "--model", str(eval_checkpoint), "--video", str(sample_video), "--device", "cpu"]
    assert main([*args, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    runs = {row["config"]: row for row in report["runs"]}
    assert list(runs) == CONFIGS and report["dry_run"] is True
    tokens = expected_tokens(eval_checkpoint, sample_video)
    vocabulary = report["parameters"]["lm_head"] // runs["cope_k1"]["visual_embeds_shape"][1]
    for name, row in runs.items():
        assert row["visual_tokens"] == tokens[name]
        assert row["visual_embeds_shape"][0] == tokens[name]
        assert row["logits_shape"] == [1, 1, vocabulary]
        assert "ttft_s" not in row  # nothing is timed
    parts = sum(v for k, v in report["parameters"].items() if k != "total")
    assert report["parameters"]["total"] - parts == runs["cope_k1"]["visual_embeds_shape"][1]  # the newline
    assert runs["cope_k1"]["kv_cache_mb"] < runs["dense64"]["kv_cache_mb"]


def test_bench_option_rules(eval_checkpoint, capsys):
    assert main(["bench", "--arch", "paper-7b", "--model", str(eval_checkpoint)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bench", "--random-weights", "--model", str(eval_checkpoint)]) == 2
    assert "needs --arch" in capsys.readouterr().err
    assert main(["bench", "--model", str(eval_checkpoint), "--device", "meta"]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_7b_architecture_on_meta_needs_no_memory(sample_video, eval_env, capsys):
    """The exact LLaVA-Video-7B-Qwen2 + paper Δ-encoder, random weights on `meta`: the paper's token
    counts on the 8-s sample (one GOP: 210 per RGB frame, 10 per Δ-frame), Qwen2-7B's parameter
    count, bfloat16 sizes."""
    args = ["bench", "--arch", "paper-7b", "--random-weights", "--device", "meta", "--dry-run"]
    assert main([*args, "--video", str(sample_video), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    runs = {row["config"]: row for row in report["runs"]}
    assert {name: row["visual_tokens"] for name, row in runs.items()} == {
        "dense64": 64 * 210,
        "cope_k1": 210 + 7 * 10,
        "cope_k2": 2 * 210 + 6 * 10,
        "cope_k4": 4 * 210 + 4 * 10,
        "iframes_k1": 210,
    }
    assert all(
        row["visual_embeds_shape"][1] == 3584 and row["logits_shape"] == [1, 1, 152064]
        for row in runs.values()
    )
    params = report["parameters"]
    assert params["language_model"] + params["lm_head"] == QWEN2_7B_PARAMETERS
    assert params["total"] - sum(v for k, v in params.items() if k != "total") == 3584  # image_newline
    assert report["dtype"] == "bfloat16" and report["device"] == "meta"
    assert report["weights_mb"] == pytest.approx(params["total"] * 2 / 2**20)
    # KV cache per position: 2 (K, V) × 28 layers × 4 KV heads × 128 dims × 2 bytes = 56 KiB.
    assert runs["dense64"]["kv_cache_mb"] == pytest.approx(runs["dense64"]["prompt_tokens"] * 56 / 1024)
