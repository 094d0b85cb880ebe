"""Load test of ``cope serve`` on loopback, as JSON on stdout.

    python benchmarks/serve_load.py [--model DIR | --tiny-random] [--requests 50] [--concurrency 16]
                                    [--queue-size 8] [--max-batch 8] [--compile] [--threads N]
                                    [--max-tokens 16] [--min-tokens 0] [--baseline N]
                                    [--request-timeout-s 300] [--long-prompts 0 --long-words 8000]

Starts the real server (uvicorn, 127.0.0.1, a free port) in this process with the given model
(default: the bundled model; ``--tiny-random`` builds a random tiny one), uploads the bundled
sample video once, asks one question to encode it (so no measured request encodes), then:

1. baseline: ``--baseline`` requests one after another (default: the same requests as the load);
2. load: ``--requests`` streamed chat requests from ``--concurrency`` client threads at once; with
   ``--long-prompts N``, N of them ask a question of ``--long-words`` words, whose prefill takes
   longer than ``--request-timeout-s`` (their timeouts, as 504s or inside their streams, are deliberate).

Every request is a new one-question conversation about the same video (the encoded video is
cached after the first; the answer is generated anew each time). ``--min-tokens N`` (vLLM's
``min_tokens``) holds the end tokens back, so every answer is ``--max-tokens`` long when they are
equal. Reported: HTTP status counts (429 = the queue was full, deliberate), failures (anything
else, or a stream that ended without ``[DONE]``), client-side latency (send → ``[DONE]``) and TTFT
(send → first content chunk) p50/p95, the server's own ``usage.ttft_s``, throughput (requests and
tokens per second), and the load/baseline ratios: ``throughput_ratio_load_vs_sequential`` is what
continuous batching buys. A monitor thread samples the worker every 5 ms and reports how long each
job held a place (its prefill and its time in the batch): the longest, and the most any job ran
past its deadline. That overrun is compared with one decode step (the slowest measured per-token time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from cope.codec.canonical import sample_video_path
from cope.errors import CopeInputError
from cope.serve.app import create_app
from cope.serve.config import ServeSettings
from cope.serve.server import BackgroundServer

QUESTIONS = ("what is moving ?", "which direction ?", "how many objects ?", "what color is the ball ?")


def load_model(args, work: Path):
    from cope.model.videolm import CopeVideoLM, resolve_model, tiny_random

    if args.tiny_random:
        path = work / "tiny-random"
        tiny_random(seed=0).save_pretrained(path)
        return CopeVideoLM.from_pretrained(path), "tiny-random (seed 0)"
    path = resolve_model(args.model)
    return CopeVideoLM.from_pretrained(path, device=args.device), Path(path).name


class WorkerMonitor:
    """Samples ``worker.running`` in a thread: how long each job ran, and past its deadline."""

    def __init__(self, worker, period_s: float = 0.005):
        self.worker = worker
        self.period_s = period_s
        self.jobs: dict = {}  # job → [first seen, last seen, deadline] (the key keeps ids unique)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for job in self.worker.running:
                self.jobs.setdefault(job, [now, now, job.deadline])[1] = now
            time.sleep(self.period_s)

    def __enter__(self) -> WorkerMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        spans = list(self.jobs.values())
        return {
            "jobs_seen": len(spans),
            "longest_job_s": round(max((last - first for first, last, _ in spans), default=0.0), 4),
            "max_past_deadline_s": round(max((last - end for _, last, end in spans), default=0.0), 4),
        }


def one_request(
    http: httpx.Client, url: str, file_id: str, question: str, max_tokens: int, min_tokens: int = 0
) -> dict:
    """One streamed chat completion; what the client saw."""
    body = {
        "model": "bench",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": f"cope-file://{file_id}"}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = usage = error = None
    done = False
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"status": response.status_code, "latency_s": time.perf_counter() - start, "ok": False}
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:  # e.g. the deadline passed mid-answer (or mid-prefill)
                error = chunk["error"]["code"]
                break
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
    latency = time.perf_counter() - start
    return {
        "status": 200,
        "ok": done and usage is not None,
        "error": error,
        "latency_s": latency,
        "ttft_s": first if first is not None else latency,
        "server_ttft_s": usage["ttft_s"] if usage else None,
        "tokens": usage["completion_tokens"] if usage else 0,
        # The slowest decode step is at most this: the answer's time after its first token per token.
        "step_s": (
            (usage["e2e_s"] - usage["ttft_s"]) / (usage["completion_tokens"] - 1)
            if usage and usage["completion_tokens"] > 1
            else None
        ),
    }


def run_batch(
    url: str,
    file_id: str,
    count: int,
    concurrency: int,
    max_tokens: int,
    min_tokens: int = 0,
    long_prompts: int = 0,
    long_question: str = "",
) -> tuple[list[dict], float]:
    """``count`` requests from ``concurrency`` threads; ``long_prompts`` of them, spread evenly, are long."""
    local = threading.local()
    every = count // long_prompts if long_prompts else 0

    def task(i: int) -> dict:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=600)
        long = bool(every) and i % every == 0 and i // every < long_prompts
        question = long_question if long else QUESTIONS[i % len(QUESTIONS)]
        try:
            return one_request(local.http, url, file_id, question, max_tokens, min_tokens) | {"long": long}
        except httpx.HTTPError as exc:
            return {
                "status": f"transport error: {type(exc).__name__}",
                "ok": False,
                "latency_s": 0.0,
                "long": long,
            }

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(task, range(count)))
    return results, time.perf_counter() - start


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 4),
        "p95": round(float(np.percentile(array, 95)), 4),
        "max": round(float(array.max()), 4),
    }


def timed_out(result: dict) -> bool:
    """A 504, or a stream whose deadline passed after its headers (a streamed prefill can time out)."""
    return result["status"] == 504 or result.get("error") == "request_timeout"


def summarize(results: list[dict], wall_s: float) -> dict:
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    served = [r for r in results if r["status"] == 200 and r["ok"]]
    # Deliberate: 429 (queue full) for anyone, 504 (timeout) for the long prompts.
    failed = [
        r
        for r in results
        if not (r["status"] == 429 or (r["status"] == 200 and r["ok"]) or (r["long"] and timed_out(r)))
    ]
    steps = [r["step_s"] for r in served if r.get("step_s") is not None]
    return {
        "requests": len(results),
        "status_counts": statuses,
        "rejected_429": statuses.get("429", 0),
        "timed_out": {
            "long_prompts": sum(timed_out(r) for r in results if r.get("long")),
            "others": sum(timed_out(r) for r in results if not r.get("long")),
        },
        "failed": len(failed),
        "latency_s": percentiles([r["latency_s"] for r in served]),
        "ttft_s": percentiles([r["ttft_s"] for r in served]),
        "server_ttft_s": percentiles([r["server_ttft_s"] for r in served if r["server_ttft_s"] is not None]),
        "generated_tokens": sum(r["tokens"] for r in served),
        "slowest_decode_step_s": round(max(steps), 4) if steps else None,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(served) / wall_s, 3) if wall_s else None,
        "tokens_per_s": round(sum(r["tokens"] for r in served) / wall_s, 1) if wall_s else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default=None, help="model directory or hub id (default: the bundled model)"
    )
    source.add_argument("--tiny-random", action="store_true", help="a random tiny model built on the spot")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's); 1 is steadiest on a busy machine"
    )
    parser.add_argument("--video", type=Path, default=sample_video_path())
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--queue-size", type=int, default=8, help="server queue; < concurrency − 1 forces 429s"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="server: answers decoded together")
    parser.add_argument(
        "--compile", action="store_true", help="server: compiled batch step (CUDA; eager elsewhere)"
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--min-tokens", type=int, default=0, help="end tokens held back this long")
    parser.add_argument(
        "--baseline", type=int, help="sequential requests measured first (default: as many as --requests)"
    )
    parser.add_argument("--request-timeout-s", type=float, default=300)
    parser.add_argument("--long-prompts", type=int, default=0, help="requests with an over-long question")
    parser.add_argument("--long-words", type=int, default=8000, help="words in an over-long question")
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="cope-serve-load-") as tmp:
        work = Path(tmp)
        try:
            model, model_label = load_model(args, work)
        except CopeInputError as exc:
            print(f"serve_load: error: {exc}", file=sys.stderr)
            return 2
        settings = ServeSettings(
            model_name="bench",
            queue_size=args.queue_size,
            work_root=work,
            request_timeout_s=args.request_timeout_s,
            max_batch=args.max_batch,
            compile=args.compile,
        )
        app = create_app(model, settings)
        with BackgroundServer(app) as server, httpx.Client(timeout=600) as http:
            with open(args.video, "rb") as f:
                upload = http.post(
                    server.url + "/v1/files", files={"file": (args.video.name, f, "video/mp4")}
                )
            upload.raise_for_status()
            file_id = upload.json()["id"]
            warm = one_request(http, server.url, file_id, QUESTIONS[0], args.max_tokens)  # encodes the video
            if not warm["ok"]:
                print(json.dumps({"error": f"warm-up request failed: {warm}"}))
                return 1
            sequential = args.requests if args.baseline is None else args.baseline
            baseline, baseline_wall = run_batch(
                server.url, file_id, sequential, 1, args.max_tokens, args.min_tokens
            )
            with WorkerMonitor(app.state.worker) as monitor:
                loaded, loaded_wall = run_batch(
                    server.url,
                    file_id,
                    args.requests,
                    args.concurrency,
                    args.max_tokens,
                    args.min_tokens,
                    args.long_prompts,
                    " ".join(["moving"] * args.long_words),
                )
            encode_calls = app.state.engine.encode_calls
    base, load = summarize(baseline, baseline_wall), summarize(loaded, loaded_wall)
    report = {
        "model": model_label,
        "video": args.video.name,
        "max_tokens": args.max_tokens,
        "min_tokens": args.min_tokens,
        "concurrency": args.concurrency,
        "queue_size": args.queue_size,
        "max_batch": args.max_batch,
        "compile": args.compile,
        "device": args.device,
        "threads": _torch_threads(),
        "request_timeout_s": args.request_timeout_s,
        "long_prompts": args.long_prompts,
        "encode_calls": encode_calls,
        "baseline_sequential": base,
        "load": load,
        "p50_latency_ratio_load_vs_baseline": (
            round(load["latency_s"]["p50"] / base["latency_s"]["p50"], 3)
            if load["latency_s"]["p50"] and base["latency_s"]["p50"]
            else None
        ),
        "throughput_ratio_load_vs_sequential": (
            round(load["requests_per_s"] / base["requests_per_s"], 3)
            if load["requests_per_s"] and base["requests_per_s"]
            else None
        ),
    }
    worker = monitor.report()
    step = load["slowest_decode_step_s"] or base["slowest_decode_step_s"] or 0.0
    worker["bound_s"] = round(args.request_timeout_s + step, 4)  # the timeout plus one decode step
    worker["within_bound"] = worker["longest_job_s"] <= worker["bound_s"]
    report["worker"] = worker
    print(json.dumps(report, indent=2))
    return 0 if load["failed"] == 0 and base["failed"] == 0 else 1


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
