"""`cope bench` on a tiny random model: every config, exact token counts, consistent timings."""

from __future__ import annotations

import json

import pytest

from cope.cli import main
from cope.eval.bench import median_run, reduction_pct

CONFIGS = ["dense64", "cope_k1", "cope_k2", "cope_k4", "iframes_k1"]


def expected_tokens(checkpoint, video) -> dict[str, int]:
    """Visual tokens of each config straight from the codec plan, under the model's layout."""
    from cope.codec.extract import open_video
    from cope.model.videolm import CopeConfig
    from cope.plan import TokenPlan, dense_plan

    config = CopeConfig.from_pretrained(checkpoint)
    codec = open_video(video, config.canonical)
    plans = {"dense64": dense_plan(codec.info.frames, 64, codec.scan.gop_starts)}
    for k in (1, 2, 4):
        plans[f"cope_k{k}"] = codec.plan(fusion=30, keyframes_per_gop=k)
    plans["iframes_k1"] = TokenPlan(tuple(e for e in plans["cope_k1"].entries if e.kind == "I"))
    return {name: plan.tokens(config.layout) for name, plan in plans.items()}


@pytest.mark.slow
def test_bench_json_has_every_config_with_exact_tokens(
    eval_checkpoint, sample_video, tmp_path, eval_env, capsys
):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--model",
        str(eval_checkpoint),
        "--video",
        str(sample_video),
        "--repeats",
        "1",
        "--new-tokens",
        "5",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    runs = {row["config"]: row for row in report["runs"]}
    assert list(runs) == CONFIGS
    assert report["threads"] == 1 and report["repeats"] == 1

    # The 8-s sample: 1 GOP of 8 one-second slots; a tiny RGB frame is 3×(3+1) = 12 positions.
    tokens = {name: row["visual_tokens"] for name, row in runs.items()}
    assert tokens == expected_tokens(eval_checkpoint, sample_video)
    assert tokens == {
        "dense64": 64 * 12,
        "cope_k1": 1 * 12 + 7 * 10,
        "cope_k2": 2 * 12 + 6 * 10,
        "cope_k4": 4 * 12 + 4 * 10,
        "iframes_k1": 1 * 12,
    }
    text_tokens = {row["prompt_tokens"] - row["visual_tokens"] for row in runs.values()}
    assert len(text_tokens) == 1 and text_tokens.pop() > 0  # the same question around every video

    for name, row in runs.items():
        contract = ("visual_tokens", "prompt_tokens", "ttft_s", "e2e_s", "vision_s", "delta_s", "prefill_s")
        assert all(key in row for key in contract)
        assert row["new_tokens"] == 5  # EOS ignored: every config decodes the same count
        assert row["vision_s"] > 0 and row["prefill_s"] > 0 and row["decode_s"] > 0
        assert (row["delta_s"] > 0) == (row["delta_frames"] > 0) == name.startswith("cope")
        assert row["ttft_s"] == pytest.approx(row["vision_s"] + row["delta_s"] + row["prefill_s"])
        assert row["e2e_s"] == pytest.approx(row["ttft_s"] + row["decode_s"])
        assert row["peak_memory_mb"] > 0
        assert row["ttft_reduction_pct"] == pytest.approx(
            reduction_pct(row["ttft_s"], runs["dense64"]["ttft_s"])
        )
    assert runs["dense64"]["ttft_reduction_pct"] == 0.0
    assert runs["cope_k1"]["visual_tokens_reduction_pct"] == pytest.approx(100 * (1 - 82 / 768))

    # Analytic FLOPs of every measured run, and the 7B tables for a 64-s clip.
    from cope.eval.flops import videolm_flop_model
    from cope.model.videolm import CopeVideoLM

    flops = videolm_flop_model(CopeVideoLM.from_pretrained(eval_checkpoint))
    for row in runs.values():
        counted = flops.prefill_counts(row["rgb_frames"], row["delta_frames"], row["prompt_tokens"])
        assert row["prefill_gflops"] == pytest.approx(counted["total"] / 1e9)
    assert runs["iframes_k1"]["flop_reduction_pct"] > runs["cope_k1"]["flop_reduction_pct"] > 0
    paper = report["flops"]["paper-7b"]
    assert paper["dense64"]["visual_tokens"] == 13440 and paper["cope_k1"]["visual_tokens"] == 2240
    compact = report["flops"]["paper-7b-compact-delta"]["cope_k1"]["reduction_vs_dense64"]
    assert compact > paper["cope_k1"]["reduction_vs_dense64"] > 0.5  # the compact Δ-encoder is cheaper

    assert json.loads((out / "bench.json").read_text())["runs"][0]["config"] == "dense64"
    table = (out / "bench.md").read_text()
    assert all(f"| {name} | {tokens[name]} |" in table for name in CONFIGS)
    assert (out / "bench.png").stat().st_size > 10_000

    assert main(args) == 2  # the results are not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["bench", "--configs", "dense64,warp9"]) == 2


def test_medians_are_per_timing_and_counts_must_agree():
    runs = [
        {
            "visual_tokens": 10,
            "prompt_tokens": 20,
            "new_tokens": 4,
            "extract_s": e,
            "vision_s": v,
            "delta_s": 0.0,
            "prefill_s": p,
            "ttft_s": v + p,
            "decode_s": d,
            "e2e_s": v + p + d,
        }
        for e, v, p, d in [(1.0, 0.3, 0.1, 2.0), (3.0, 0.1, 0.3, 1.0), (2.0, 0.2, 0.2, 9.0)]
    ]
    merged = median_run(runs)
    assert (merged["vision_s"], merged["prefill_s"], merged["decode_s"]) == (0.2, 0.2, 2.0)
    assert merged["ttft_s"] == pytest.approx(0.4) and merged["e2e_s"] == pytest.approx(2.4)
    assert merged["ttft_runs_s"] == [r["ttft_s"] for r in runs]
    runs[1]["visual_tokens"] = 11
    with pytest.raises(RuntimeError, match="visual_tokens changed"):
        median_run(runs)


@pytest.mark.slow
def test_cold_runs_add_the_codec_time(eval_checkpoint, sample_video, eval_env, capsys):
    """--cold: each run reads the file as if for the first time; cold TTFT = codec + model TTFT, and
    the visual tokens are those of the warm path (dense64's frames come from the file itself)."""
    args = ["bench", "--model", str(eval_checkpoint), "--video", str(sample_video), "--device", "cpu"]
    args += ["--configs", "dense64,cope_k1", "--repeats", "1", "--new-tokens", "2", "--threads", "1"]
    assert main([*args, "--cold", "--no-memory", "--no-flops", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cold"] is True
    runs = {row["config"]: row for row in report["runs"]}
    tokens = expected_tokens(eval_checkpoint, sample_video)
    for name, row in runs.items():
        assert row["visual_tokens"] == tokens[name]
        assert row["codec_s"] > 0
        assert row["cold_ttft_s"] == pytest.approx(row["codec_s"] + row["ttft_s"])  # one run: no medians
    assert "cold_ttft_reduction_pct" in runs["cope_k1"]


def test_compile_compares_both_decode_paths(eval_checkpoint, sample_video, eval_env, capsys):
    """--compile: each run decodes its answer with the dynamic cache and again with the static cache
    (the eager step on a CPU: nothing compiled), and reports both decode ms/token."""
    args = ["bench", "--model", str(eval_checkpoint), "--video", str(sample_video), "--device", "cpu"]
    args += ["--configs", "cope_k1", "--repeats", "1", "--new-tokens", "4", "--no-memory", "--no-flops"]
    assert main([*args, "--compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["runs"]
    assert report["compile"] is True and report["compiled_step"] is False and row["compile_s"] == 0.0
    assert row["decode_ms_per_token"] == pytest.approx(1000 * row["decode_s"] / 3)
    assert row["static_decode_ms_per_token"] == pytest.approx(1000 * row["static_decode_s"] / 3)
    assert row["static_decode_s"] > 0
    assert row["static_e2e_s"] > row["ttft_s"]
    assert main([*args, "--out", str(eval_checkpoint.parent / "compiled"), "--compile"]) == 0
    assert "static decode ms/token" in (eval_checkpoint.parent / "compiled" / "bench.md").read_text()
    assert "ms/token (static cache, eager step: compiled on CUDA only)" in capsys.readouterr().out
