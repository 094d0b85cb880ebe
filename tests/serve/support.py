"""Shared by the serve tests: a tiny random checkpoint on disk and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import pytest

MODEL_NAME = "cope-test"
QUESTION = "what is moving ?"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The browser tests: a real browser against a real server, where Debian's Chromium is installed.
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="Chromium / chromedriver not installed (make browser)",
    ),
]
SAMPLE = Path(__file__).resolve().parents[2] / "src" / "cope" / "assets" / "sample.mp4"


def tiny_checkpoint(directory: Path) -> Path:
    """A tiny random CoPE VideoLM saved like a real checkpoint (config.json + *.safetensors)."""
    from cope.model.videolm import tiny_random

    tiny_random(seed=0).save_pretrained(directory)
    return directory


def load(directory: Path):
    from cope.model.videolm import CopeVideoLM

    return CopeVideoLM.from_pretrained(directory)


def block_worker(worker) -> threading.Event:
    """Occupy the model worker until the returned event is set (a job that just waits)."""
    from cope.serve.worker import Job

    release, running = threading.Event(), threading.Event()

    def wait(job):
        running.set()
        release.wait(60)

    worker.submit(Job(wait, deadline=time.monotonic() + 120, loop=asyncio.new_event_loop()))
    assert running.wait(10), "the worker did not pick up the blocking job"
    return release


def fill_queue(worker, release: threading.Event) -> None:
    """Put jobs in the queue until it is full (they wait on ``release`` too)."""
    from cope.serve.worker import Job

    for _ in range(worker.queue_size):
        worker.submit(
            Job(lambda job: release.wait(60), deadline=time.monotonic() + 120, loop=asyncio.new_event_loop())
        )


def wait_idle(worker, timeout: float = 30.0) -> float:
    """Seconds until the worker has nothing running or queued."""
    start = time.monotonic()
    while worker.running or worker.waiting:
        if time.monotonic() - start > timeout:
            raise AssertionError("the worker stayed busy")
        time.sleep(0.01)
    return time.monotonic() - start


def video_message(url: str, text: str = QUESTION) -> dict:
    """A user turn with a video part and a text part, as the OpenAI client sends it."""
    return {
        "role": "user",
        "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}],
    }


def chat_body(url: str, text: str = QUESTION, max_tokens: int = 6, **extra) -> dict:
    """A /v1/chat/completions request body about the video at ``url``."""
    return {"model": MODEL_NAME, "messages": [video_message(url, text)], "max_tokens": max_tokens, **extra}


def assert_error(response, status: int, code: str | None = None, contains: str = "") -> dict:
    """An OpenAI-format error body with this status (and code, and words in the message)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert contains in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error
