"""Load test of ``cope serve`` on loopback, as JSON on stdout.

    python benchmarks/serve_load.py [--model DIR | --tiny-random] [--requests 50] [--concurrency 8]
                                    [--queue-size 8] [--max-tokens 16]

Starts the real server (uvicorn, 127.0.0.1, a free port) in this process with the given model
(default: the bundled model; ``--tiny-random`` builds a random tiny one), uploads the bundled
sample video once, then:

1. baseline: ``--baseline`` requests one after another (no contention);
2. load: ``--requests`` streamed chat requests from ``--concurrency`` client threads at once.

Every request is a new one-question conversation about the same video (the encoded video is
cached after the first; the answer is generated anew each time). Reported: HTTP status counts
(429 = the queue was full, deliberate), failures (anything else, or a stream that ended without
``[DONE]``), client-side latency (send → ``[DONE]``) and TTFT (send → first content chunk) p50/p95,
the server's own ``usage.ttft_s``, throughput, and the loaded/baseline p50 ratios.
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


def one_request(http: httpx.Client, url: str, file_id: str, question: str, max_tokens: int) -> dict:
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
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = usage = None
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
            if "error" in chunk:
                break
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
    latency = time.perf_counter() - start
    return {
        "status": 200,
        "ok": done and usage is not None,
        "latency_s": latency,
        "ttft_s": first if first is not None else latency,
        "server_ttft_s": usage["ttft_s"] if usage else None,
        "tokens": usage["completion_tokens"] if usage else 0,
    }


def run_batch(
    url: str, file_id: str, count: int, concurrency: int, max_tokens: int
) -> tuple[list[dict], float]:
    local = threading.local()

    def task(i: int) -> dict:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=600)
        try:
            return one_request(local.http, url, file_id, QUESTIONS[i % len(QUESTIONS)], max_tokens)
        except httpx.HTTPError as exc:
            return {"status": f"transport error: {type(exc).__name__}", "ok": False, "latency_s": 0.0}

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


def summarize(results: list[dict], wall_s: float) -> dict:
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    served = [r for r in results if r["status"] == 200 and r["ok"]]
    failed = [r for r in results if not (r["status"] == 429 or (r["status"] == 200 and r["ok"]))]
    return {
        "requests": len(results),
        "status_counts": statuses,
        "rejected_429": statuses.get("429", 0),
        "failed": len(failed),
        "latency_s": percentiles([r["latency_s"] for r in served]),
        "ttft_s": percentiles([r["ttft_s"] for r in served]),
        "server_ttft_s": percentiles([r["server_ttft_s"] for r in served if r["server_ttft_s"] is not None]),
        "generated_tokens": sum(r["tokens"] for r in served),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(served) / wall_s, 3) if wall_s else None,
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
    parser.add_argument("--video", type=Path, default=sample_video_path())
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--queue-size", type=int, default=8, help="server queue; < concurrency − 1 forces 429s"
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--baseline", type=int, default=5, help="sequential requests measured first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cope-serve-load-") as tmp:
        work = Path(tmp)
        try:
            model, model_label = load_model(args, work)
        except CopeInputError as exc:
            print(f"serve_load: error: {exc}", file=sys.stderr)
            return 2
        settings = ServeSettings(model_name="bench", queue_size=args.queue_size, work_root=work)
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
            baseline, baseline_wall = run_batch(server.url, file_id, args.baseline, 1, args.max_tokens)
            loaded, loaded_wall = run_batch(
                server.url, file_id, args.requests, args.concurrency, args.max_tokens
            )
            encode_calls = app.state.engine.encode_calls
    base, load = summarize(baseline, baseline_wall), summarize(loaded, loaded_wall)
    report = {
        "model": model_label,
        "video": args.video.name,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "queue_size": args.queue_size,
        "encode_calls": encode_calls,
        "baseline_sequential": base,
        "load": load,
        "p50_latency_ratio_load_vs_baseline": (
            round(load["latency_s"]["p50"] / base["latency_s"]["p50"], 3)
            if load["latency_s"]["p50"] and base["latency_s"]["p50"]
            else None
        ),
    }
    print(json.dumps(report, indent=2))
    return 0 if load["failed"] == 0 and base["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
