"""One model, one thread: every piece of codec and model work runs on a single worker thread.

Requests become ``Job``s in a bounded queue (``queue_size`` waiting, one running). A full queue is
an immediate 429. The worker runs jobs one at a time, so the model instance and its caches are only
ever touched by one thread and need no locks. A job streams its events (text deltas, then a result
or an error) back to the request's asyncio loop through a thread-safe hand-off; the request side
cancels a job (client gone, timeout) by setting a flag the job checks between tokens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cope.serve.errors import APIError

log = logging.getLogger("cope.serve")


class Job:
    """A unit of work for the worker thread, created on the request's event loop."""

    def __init__(
        self, run: Callable[[Job], Any], deadline: float, loop: asyncio.AbstractEventLoop | None = None
    ):
        self.run = run  # called on the worker thread with the job; its return value is the result
        self.deadline = deadline  # time.monotonic() after which the job is abandoned
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.events: asyncio.Queue = (
            asyncio.Queue()
        )  # ("delta", str) … then ("result", x) | ("error", APIError)
        self._loop = loop or asyncio.get_running_loop()

    def emit(self, kind: str, value: Any) -> None:
        """Hand an event to the request's loop (safe to call from the worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def cancel(self) -> None:
        self.cancelled.set()


def timeout_error(seconds: float) -> APIError:
    return APIError(504, f"request timed out after {seconds:g} s", code="request_timeout")


class ModelWorker:
    """The single thread that owns the model: a bounded FIFO of jobs, run one at a time."""

    def __init__(self, queue_size: int, request_timeout_s: float):
        self.queue_size = queue_size
        self.request_timeout_s = request_timeout_s
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._serve, name="cope-model-worker", daemon=True)
        self.running: Job | None = None
        self.completed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting and running jobs, then let the thread finish its current token and exit."""
        if self.running is not None:
            self.running.cancel()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit("error", APIError(503, "server shutting down", code="shutting_down"))
        self._jobs.put(None)
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it at once with 429 when ``queue_size`` jobs already wait."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise APIError(
                429,
                f"server busy: {self.queue_size} requests already waiting for the model; retry later",
                code="queue_full",
            ) from None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.should_stop():  # cancelled or timed out while waiting: its client is gone
                job.emit("error", timeout_error(self.request_timeout_s))
                continue
            self.running = job
            job.started.set()
            try:
                job.emit("result", job.run(job))
            except APIError as exc:
                job.emit("error", exc)
            except Exception as exc:  # an internal error must not kill the worker
                log.exception("job failed")
                job.emit(
                    "error", APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal")
                )
            finally:
                self.running = None
                self.completed += 1
