"""`cope bench`: visual tokens, TTFT and end-to-end latency of each sampling config, in one process.

Protocol (paper §4.4: TTFT and E2EL for 64 generated tokens against LLaVA-Video's 64 frames):

* the model is loaded once and the video opened once (transcoded and cached before any clock);
* each config runs once to warm up, then ``repeats`` times, the configs taking turns (round
  robin, so a slow phase of a shared machine hits every config alike); medians are reported;
* every run encodes the video (``CopeVideoLM.encode_video``), builds the prompt and generates
  exactly ``new_tokens`` tokens greedily, through EOS (``GenerationConfig.ignore_eos``), so every
  config decodes the same count;
* timings are the model's own (``Timings``; the device is synchronised before every clock read):
  vision_s + delta_s + prefill_s = ttft_s; ttft_s + decode_s = e2e_s. Codec decoding
  (``extract_s``) is reported beside them and, as in the paper, is not part of TTFT;
* ``decode_ms_per_token`` = decode_s / (new_tokens − 1): one cached forward per token after the
  first (which the prefill chooses);
* with ``compile``, every run also generates the same answer a second time with
  ``GenerationConfig(compile=True)`` (static KV cache; a torch.compile'd step on CUDA, the eager
  step elsewhere: the report's ``compiled_step``) and the row gains ``static_decode_s``,
  ``static_e2e_s``, ``static_decode_ms_per_token`` and ``compile_s``: the compilation, paid in
  the warm-up run (once per static-cache length);
* peak memory is measured in one extra, untimed run per config: on CUDA the allocator's
  ``max_memory_allocated`` after a reset; on CPU the highest resident set size of the process
  sampled every 2 ms during that run (it includes the loaded weights, so compare configs by the
  difference to ``baseline_rss_mb``).
"""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import dataclass, replace
from pathlib import Path

BENCH_QUESTION = "Describe what happens in the video."
TIMING_KEYS = ("extract_s", "vision_s", "delta_s", "prefill_s", "ttft_s", "decode_s", "e2e_s")
# ``--cold``: the codec work TTFT leaves out, and what a user waits for on a video seen for the first time.
COLD_KEYS = ("codec_s", "cold_ttft_s")
# ``--compile``: the same answer decoded with the static cache (and the compiled step on CUDA).
STATIC_KEYS = ("static_decode_s", "static_e2e_s", "static_decode_ms_per_token")


@dataclass(frozen=True)
class BenchConfig:
    """One sampling config: an encoding mode and its sampling knob."""

    name: str
    mode: str  # "dense" | "cope" | "iframes-only"
    keyframes_per_gop: int | None = None
    dense_frames: int | None = None


BENCH_CONFIGS = (
    BenchConfig("dense64", "dense", dense_frames=64),
    BenchConfig("cope_k1", "cope", keyframes_per_gop=1),
    BenchConfig("cope_k2", "cope", keyframes_per_gop=2),
    BenchConfig("cope_k4", "cope", keyframes_per_gop=4),
    BenchConfig("iframes_k1", "iframes-only", keyframes_per_gop=1),
)
CONFIGS_BY_NAME = {config.name: config for config in BENCH_CONFIGS}


def run_once(
    model,
    video,
    config: BenchConfig,
    new_tokens: int,
    cold_source: Path | None = None,
    compile: bool = False,
) -> dict:
    """Encode + prompt + generate ``new_tokens`` tokens; the counts and timings of that one run.

    ``cold_source``: read that file as if for the first time (``encode_cold``) and add ``codec_s``
    and ``cold_ttft_s``; otherwise ``video`` is the already opened ``CodecVideo``. ``compile``:
    decode the same prompt again with ``GenerationConfig(compile=True)`` (``STATIC_KEYS`` and
    ``compile_s``).
    """
    from cope.model.videolm import GenerationConfig

    encoded = (
        encode_cold(model, cold_source, config) if cold_source is not None else encode(model, video, config)
    )
    prompt = model.build_prompt(encoded, BENCH_QUESTION)
    generation = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    answer = model.generate(prompt, generation)
    timings = answer.timings
    row = {
        "visual_tokens": answer.visual_tokens,
        "prompt_tokens": answer.prompt_tokens,
        "rgb_frames": encoded.plan.rgb_frames,
        "delta_frames": encoded.plan.delta_frames,
        "new_tokens": answer.new_tokens,
        **{key: getattr(timings, key) for key in TIMING_KEYS},
        "decode_ms_per_token": ms_per_decode_step(timings.decode_s, answer.new_tokens),
    }
    if cold_source is not None:
        row["codec_s"] = encoded.transcode_s + encoded.extract_s
        row["cold_ttft_s"] = row["codec_s"] + timings.ttft_s
    if compile:
        static = model.generate(prompt, replace(generation, compile=True)).timings
        row["static_decode_s"] = static.decode_s
        row["static_e2e_s"] = static.e2e_s
        row["static_decode_ms_per_token"] = ms_per_decode_step(static.decode_s, answer.new_tokens)
        row["compile_s"] = static.compile_s
    return row


def ms_per_decode_step(decode_s: float, new_tokens: int) -> float:
    """Milliseconds per decoded token after the first (the prefill chooses the first)."""
    return 1000 * decode_s / max(new_tokens - 1, 1)


def encode(model, video, config: BenchConfig, **options):
    """``video`` (a path or an opened ``CodecVideo``) encoded under ``config``; ``options`` go to
    ``encode_video`` (e.g. ``cache_dir``)."""
    return model.encode_video(
        video,
        config.mode,
        keyframes_per_gop=config.keyframes_per_gop,
        dense_frames=config.dense_frames,
        **options,
    )


def encode_cold(model, path: Path, config: BenchConfig):
    """Encode ``path`` as a first-time video: the CoPE configs transcode it into an empty cache
    (a fresh temporary directory each run) and extract; dense64 seeks and decodes its frames from
    the file itself (``encode_source_frames``: a dense baseline needs no canonical stream)."""
    import tempfile

    from cope.model.videolm.encoding import encode_source_frames

    if config.mode == "dense":
        return encode_source_frames(model, path, config.dense_frames)
    with tempfile.TemporaryDirectory(prefix="cope-cold-") as cache:
        return encode(model, path, config, cache_dir=cache)


class PeakMemory:
    """Peak memory of the code run inside ``with``: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif rss_mb() is not None:
            self.peak_mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float | None:
    """The process's current resident set size in MiB (Linux /proc, else psutil, else None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def median_run(runs: list[dict]) -> dict:
    """Each timing's median over the repeats; counts must agree between repeats."""
    first = runs[0]
    for run in runs[1:]:
        for key in ("visual_tokens", "prompt_tokens", "new_tokens"):
            if run[key] != first[key]:
                raise RuntimeError(f"{key} changed between repeats: {first[key]} → {run[key]}")
    timed = [key for key in (*TIMING_KEYS, "decode_ms_per_token", *COLD_KEYS, *STATIC_KEYS) if key in first]
    merged = {key: value for key, value in first.items() if key not in timed}
    for key in timed:
        merged[key] = statistics.median(run[key] for run in runs)
    merged["ttft_runs_s"] = [run["ttft_s"] for run in runs]
    merged["e2e_runs_s"] = [run["e2e_s"] for run in runs]
    return merged


def reduction_pct(value: float, baseline: float) -> float:
    return 100.0 * (1.0 - value / baseline) if baseline > 0 else 0.0


def run_bench(
    model,
    video_path: str | Path,
    configs: tuple[BenchConfig, ...] = BENCH_CONFIGS,
    repeats: int = 3,
    new_tokens: int = 64,
    measure_memory: bool = True,
    progress: bool = False,
    cold: bool = False,
    compile: bool = False,
) -> dict:
    """Benchmark ``configs`` on one video; the JSON object ``cope bench --json`` prints.

    ``cold``: every run reads the file as if for the first time (``encode_cold``), and the rows
    gain ``codec_s`` and ``cold_ttft_s``. ``compile``: every run also decodes with the static cache
    (and the compiled step on CUDA; ``run_once``).
    """
    from tqdm import tqdm

    from cope.codec.extract import open_video
    from cope.model.videolm.generation import compiled_steps_available

    if repeats < 1 or new_tokens < 1:
        raise ValueError("repeats and new_tokens must be at least 1")
    video = open_video(video_path, model.config.canonical, progress=progress)  # transcode outside clocks
    total = len(configs) * (repeats + 1 + int(measure_memory))
    bar = tqdm(total=total, desc="bench", unit="run", disable=not progress, leave=False)
    source = Path(video_path) if cold else None
    warm_up = {}
    for config in configs:  # warm-up: first calls allocate, build kernels, compile, fill caches
        warm_up[config.name] = run_once(model, video, config, new_tokens, source, compile)
        bar.update(1)
    measured: dict[str, list[dict]] = {config.name: [] for config in configs}
    for _ in range(repeats):
        for config in configs:
            measured[config.name].append(run_once(model, video, config, new_tokens, source, compile))
            bar.update(1)
    baseline_rss = rss_mb()
    rows = []
    for config in configs:
        row = {"config": config.name, "mode": config.mode, **median_run(measured[config.name])}
        row["keyframes_per_gop"] = config.keyframes_per_gop
        if compile:  # paid once, in the warm-up run; the timed runs reuse the compiled step
            row["compile_s"] = warm_up[config.name]["compile_s"]
        if measure_memory:
            with PeakMemory(model.device) as memory:
                run_once(model, video, config, new_tokens, source, compile)
            row["peak_memory_mb"] = memory.peak_mb
            bar.update(1)
        rows.append(row)
    bar.close()
    add_reductions(rows)
    return {
        **report_header(model, video_path, video),
        "repeats": repeats,
        "new_tokens": new_tokens,
        "cold": cold,
        "compile": compile,
        "compiled_step": compile and compiled_steps_available(model.device),
        "threads": _torch_threads(),
        "memory": "cuda max_memory_allocated" if model.device.type == "cuda" else "cpu peak rss (sampled)",
        "baseline_rss_mb": baseline_rss,
        "runs": rows,
    }


def report_header(model, video_path, video) -> dict:
    """What was measured: the model, where it ran, the video and its canonical stream."""
    return {
        "model": model.name,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "video": str(video_path),
        "stream": video.info.to_dict(),
    }


def add_reductions(rows: list[dict]) -> None:
    """Per config: visual tokens, TTFT and E2EL as % reductions against dense64 (when present)."""
    dense = next((row for row in rows if row["config"] == "dense64"), None)
    if dense is None:
        return
    reductions = {
        "visual_tokens": "visual_tokens",
        "ttft_s": "ttft",
        "e2e_s": "e2e",
        "cold_ttft_s": "cold_ttft",
    }
    for row in rows:
        for key, name in reductions.items():
            if key in row:  # a dry run has no timings
                row[f"{name}_reduction_pct"] = reduction_pct(row[key], dense[key])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def flop_estimates(report: dict, model, seconds: int = 64) -> dict:
    """Analytic prefill FLOPs (``cope.eval.flops``): per measured run, and paper-7b on a 64-s clip.

    Adds ``prefill_gflops`` and ``flop_reduction_pct`` to every run of ``report`` (the benchmarked
    model on the benchmarked video, so they sit beside the measured TTFT), and returns the 7B
    tables for the paper's Δ-encoder dims and for the compact config.
    """
    from cope.eval.flops import clip_plans, paper_7b_flop_model, prefill_flop_table, videolm_flop_model

    flops = videolm_flop_model(model)
    for row in report["runs"]:
        row["prefill_gflops"] = (
            flops.prefill_counts(row["rgb_frames"], row["delta_frames"], row["prompt_tokens"])["total"] / 1e9
        )
    dense = next((row for row in report["runs"] if row["config"] == "dense64"), None)
    if dense is not None:
        for row in report["runs"]:
            row["flop_reduction_pct"] = reduction_pct(row["prefill_gflops"], dense["prefill_gflops"])
    plans = clip_plans(seconds)
    return {
        "clip_seconds": seconds,
        "paper-7b": prefill_flop_table(paper_7b_flop_model(delta_config="paper"), plans),
        "paper-7b-compact-delta": prefill_flop_table(paper_7b_flop_model(delta_config="compact"), plans),
    }


def format_markdown(report: dict) -> str:
    """The runs as a markdown table (medians), with the reductions against dense64."""
    flops = "prefill_gflops" in report["runs"][0]
    cold = "cold_ttft_s" in report["runs"][0]
    static = "static_decode_ms_per_token" in report["runs"][0]
    lines = [
        f"`cope bench` — model `{report['model']}` on {report['device']} ({report['dtype']}, "
        f"{report['threads']} threads), video `{Path(report['video']).name}`, "
        f"median of {report['repeats']} runs after warm-up, {report['new_tokens']} new tokens",
        "",
        "| config | visual tokens | prompt tokens | vision s | Δ s | prefill s | **TTFT s** | decode s "
        "| **E2EL s** | peak MB | TTFT vs dense64 | E2EL vs dense64 |"
        + (" prefill GFLOP | FLOPs vs dense64 |" if flops else "")
        + (" codec s | **cold TTFT s** | cold TTFT vs dense64 |" if cold else "")
        + (" decode ms/token | static decode ms/token | static E2EL s | compile s |" if static else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if flops else "")
        + ("---:|---:|---:|" if cold else "")
        + ("---:|---:|---:|---:|" if static else ""),
    ]
    for row in report["runs"]:
        peak = row.get("peak_memory_mb")
        line = (
            f"| {row['config']} | {row['visual_tokens']} | {row['prompt_tokens']} | {row['vision_s']:.4f} "
            f"| {row['delta_s']:.4f} | {row['prefill_s']:.4f} | **{row['ttft_s']:.4f}** | {row['decode_s']:.4f} "
            f"| **{row['e2e_s']:.4f}** | {'–' if peak is None else f'{peak:.0f}'} "
            f"| {_pct(row, 'ttft_reduction_pct')} | {_pct(row, 'e2e_reduction_pct')} |"
        )
        if flops:
            line += f" {row['prefill_gflops']:.3f} | {_pct(row, 'flop_reduction_pct')} |"
        if cold:
            line += f" {row['codec_s']:.4f} | **{row['cold_ttft_s']:.4f}** | {_pct(row, 'cold_ttft_reduction_pct')} |"
        if static:
            line += (
                f" {row['decode_ms_per_token']:.2f} | {row['static_decode_ms_per_token']:.2f} "
                f"| {row['static_e2e_s']:.4f} | {row['compile_s']:.1f} |"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def _pct(row: dict, key: str) -> str:
    return "–" if key not in row else f"{row[key]:.1f}%"


def format_summary(report: dict) -> str:
    """Human-readable output: the table, then each config's changes against dense64."""
    lines = [format_markdown(report).rstrip()]
    for row in report["runs"]:
        if row["config"] != "dense64" and "ttft_reduction_pct" in row:
            cold = (
                f", cold TTFT {-row['cold_ttft_reduction_pct']:+.1f}%"
                if "cold_ttft_reduction_pct" in row
                else ""
            )
            lines.append(
                f"{row['config']}: TTFT {-row['ttft_reduction_pct']:+.1f}%, E2EL {-row['e2e_reduction_pct']:+.1f}%"
                f"{cold}, visual tokens {-row['visual_tokens_reduction_pct']:+.1f}% vs dense64"
            )
    step = "compiled step" if report.get("compiled_step") else "eager step: compiled on CUDA only"
    for row in report["runs"]:
        if "static_decode_ms_per_token" in row:
            lines.append(
                f"{row['config']}: decode {row['decode_ms_per_token']:.2f} ms/token (dynamic cache) → "
                f"{row['static_decode_ms_per_token']:.2f} ms/token (static cache, {step}), "
                f"compilation {row['compile_s']:.1f} s once"
            )
    if "flops" in report:
        seconds = report["flops"]["clip_seconds"]
        for key in ("paper-7b", "paper-7b-compact-delta"):
            bound = report["flops"][key]["cope_k1"]["reduction_vs_dense64"]
            lines.append(
                f"{key} FLOP model, {seconds}-s clip: cope_k1 prefill FLOPs {-100 * bound:+.1f}% vs dense64 "
                "(paper, measured on a GPU: TTFT −86.2%)"
            )
    return "\n".join(lines)


def plot_report(report: dict, out_path) -> None:
    """Bar chart: TTFT split into vision / Δ / prefill, then decode (bar height = E2EL); and tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["runs"]
    names = [row["config"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bottom = [0.0] * len(rows)
    for key, label in (
        ("vision_s", "vision"),
        ("delta_s", "Δ-encoder"),
        ("prefill_s", "prefill"),
        ("decode_s", "decode"),
    ):
        values = [row[key] for row in rows]
        left.bar(names, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, row in enumerate(rows):
        left.annotate(f"TTFT {row['ttft_s']:.3f}s", (i, row["e2e_s"]), ha="center", va="bottom", fontsize=8)
    left.set_ylabel("seconds (median)")
    left.set_title(f"latency, {report['new_tokens']} new tokens ({report['device']})")
    left.legend(fontsize=8)
    bars = right.bar(names, [row["visual_tokens"] for row in rows], color="tab:gray")
    right.bar_label(bars, fontsize=8)
    right.set_ylabel("visual tokens")
    right.set_title("visual tokens")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=20)
    fig.suptitle(f"cope bench — {report['model']}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def dry_run(model, video_path: str | Path, configs: tuple[BenchConfig, ...] = BENCH_CONFIGS) -> dict:
    """Shapes and sizes without timing: for ``cope bench --dry-run`` (any device, ``meta`` included).

    Per config: the video encoded under the config's plan, the prompt built, and one prefill
    through the LM head on the last position — the embeddings must hold exactly the plan's visual
    positions under the model's layout, and the logits one row of the vocabulary. On the ``meta``
    device every tensor is a shape without storage, so the 7B architecture is checked with no
    memory and no weights. Reports the parameter count per part, the weights' size at the model's
    dtype, and each config's KV cache for its prompt.
    """
    import torch

    from cope.codec.extract import open_video

    video = open_video(video_path, model.config.canonical)
    rows = []
    for config in configs:
        encoded = encode(model, video, config)
        expected = encoded.plan.tokens(model.config.layout)
        if encoded.embeds.shape[0] != expected:
            raise RuntimeError(
                f"{config.name}: {encoded.embeds.shape[0]} visual positions, the plan has {expected}"
            )
        prompt = model.build_prompt(encoded, BENCH_QUESTION)
        with torch.inference_mode():
            hidden = model.language_model(inputs_embeds=prompt.inputs_embeds).last_hidden_state
            logits = model.lm_head(hidden[:, -1:])  # (1, 1, V)
        rows.append(
            {
                "config": config.name,
                "mode": config.mode,
                "visual_tokens": prompt.visual_tokens,
                "prompt_tokens": prompt.prompt_tokens,
                "rgb_frames": encoded.plan.rgb_frames,
                "delta_frames": encoded.plan.delta_frames,
                "visual_embeds_shape": list(encoded.embeds.shape),
                "logits_shape": list(logits.shape),
                "kv_cache_mb": kv_cache_bytes(model, prompt.prompt_tokens) / 2**20,
            }
        )
    add_reductions(rows)
    return {
        **report_header(model, video_path, video),
        "dry_run": True,
        "parameters": parameter_counts(model),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "runs": rows,
    }


def parameter_counts(model) -> dict:
    """Parameters per part (exact on any device, ``meta`` included) and in total."""
    parts = {
        "vision_tower": model.vision_tower,
        "projector": model.projector,
        "language_model": model.language_model,
        "lm_head": model.lm_head,
        "delta_encoder": model.delta_encoder,
    }
    counts = {
        name: sum(p.numel() for p in part.parameters()) if part is not None else 0
        for name, part in parts.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def kv_cache_bytes(model, positions: int) -> int:
    """Bytes of the LLM's key/value cache for ``positions`` tokens at the model's dtype."""
    text = model.base.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_position = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim
    return per_position * positions * model.dtype.itemsize


def format_dry_run(report: dict) -> str:
    """Human-readable dry run: the parts' sizes, then one line per config."""
    params = report["parameters"]
    lines = [
        f"{report['model']} on {report['device']} ({report['dtype']}): {params['total'] / 1e9:.2f}B parameters, "
        f"{report['weights_mb'] / 1024:.1f} GiB of weights "
        f"(vision {params['vision_tower'] / 1e6:.0f}M, projector {params['projector'] / 1e6:.0f}M, "
        f"LLM {(params['language_model'] + params['lm_head']) / 1e9:.2f}B, Δ-encoder {params['delta_encoder'] / 1e6:.0f}M)",
        "| config | visual tokens | prompt tokens | RGB frames | Δ-frames | KV cache MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        lines.append(
            f"| {row['config']} | {row['visual_tokens']:,} | {row['prompt_tokens']:,} | {row['rgb_frames']} | "
            f"{row['delta_frames']} | {row['kv_cache_mb']:.0f} |"
        )
    return "\n".join(lines)
