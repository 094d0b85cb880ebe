"""One model, one thread: every piece of codec and model work runs on a single worker thread.

Requests become ``Job``s in a bounded queue (``queue_size`` waiting). A request takes its place in
the queue (an ``Admission``) when it arrives, before its body is read or its video stored, and
keeps it until its job starts; with every place taken it gets an immediate 429, having cost
nothing. So at most ``queue_size`` bodies are being received at any moment.

The worker starts jobs one at a time, so the model instance and its caches are only ever touched
by one thread and need no locks. A job's ``run`` either returns its result or, for a chat answer
still being generated, hands the job to the ``Batch`` (it returns ``IN_BATCH``): continuous
batching. Between jobs the worker runs one batch step, a decode step for every answer in the
batch, which finishes the answers that are done; while the batch decodes, a waiting job starts as
soon as the batch has room, and its prefill runs between two steps. A job streams its events (text
deltas, then a result or an error) back to the request's asyncio loop through a thread-safe
hand-off; the request side cancels a job (client gone, timeout) by setting a flag the job checks
between prefill chunks and tokens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

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
        self.admission: Admission | None = None
        self.next_disconnect_check = 0.0  # the request side's: when to look at the connection next

    def emit(self, kind: str, value: Any) -> None:
        """Hand an event to the request's loop (safe to call from the worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def cancel(self) -> None:
        """Stop the job (at its next check) and, if it is still queued, free its place at once: it
        will be skipped, and a client that gave up must not keep the next one out."""
        self.cancelled.set()
        if self.admission is not None:
            self.admission.release()


class Admission:
    """A place in the worker's queue, held from a request's arrival until its job starts running.

    with worker.admit() as admission:   # 429 here when every place is taken
        ...read the body, store the video...
        worker.submit(job, admission)   # the job now holds the place; the worker frees it
    """

    def __init__(self, worker: ModelWorker):
        self._worker = worker
        self._held = True
        self.job: Job | None = None

    def release(self) -> None:
        """Give the place back (once, whichever thread asks first)."""
        self._worker._release(self)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc) -> None:
        if self.job is None:  # never submitted (refused, failed, timed out): give the place back
            self.release()


def queue_full(queue_size: int) -> APIError:
    return APIError(
        429,
        f"server busy: {queue_size} requests already waiting for the model; retry later",
        code="queue_full",
    )


def timeout_error(seconds: float) -> APIError:
    return APIError(504, f"request timed out after {seconds:g} s", code="request_timeout")


def internal_error(exc: Exception) -> APIError:
    """A 500 for an unexpected exception (logged by the caller). The type only: exception messages
    can carry server paths (the work directory)."""
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", code="internal")


IN_BATCH = object()  # what a job's ``run`` returns when the batch will finish the job


class Batch(Protocol):
    """Jobs whose ``run`` returned ``IN_BATCH``, advanced together by the worker between jobs."""

    @property
    def active(self) -> int:
        """Jobs in the batch."""
        ...

    @property
    def has_room(self) -> bool:
        """Whether another job may join."""
        ...

    def step(self) -> list[tuple[Job, tuple[str, Any]]]:
        """One step for every job in the batch; the jobs it finished, each with its outcome
        (``("result", value)`` or ``("error", APIError)``). Never raises."""
        ...


class ModelWorker:
    """The single thread that owns the model: a bounded FIFO of jobs, started one at a time, and
    the batch of answers being decoded (when given)."""

    def __init__(self, queue_size: int, request_timeout_s: float, batch: Batch | None = None):
        self.queue_size = queue_size
        self.request_timeout_s = request_timeout_s
        self.batch = batch
        # Unbounded itself: admissions (at most ``queue_size``) bound what is in it.
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._admitted = 0  # places taken: requests admitted whose jobs have not started
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="cope-model-worker", daemon=True)
        # Jobs started and not finished: the one running its ``run`` and those in the batch. A tuple,
        # replaced (never mutated) by the worker thread, so other threads read a consistent one.
        self.running: tuple[Job, ...] = ()
        self.completed = 0
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting and running jobs, then let the thread finish its current step and exit."""
        self._stopping.set()
        for job in self.running:
            job.cancel()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.admission.release()
                job.emit("error", APIError(503, "server shutting down", code="shutting_down"))
        self._jobs.put(None)  # wakes the thread if it waits for a job
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        """Requests admitted whose jobs have not started (receiving their body, or queued)."""
        return self._admitted

    def admit(self) -> Admission:
        """Take a place in the queue, or refuse at once with 429 when all ``queue_size`` are taken."""
        with self._lock:
            if self._admitted >= self.queue_size:
                raise queue_full(self.queue_size)
            self._admitted += 1
        return Admission(self)

    def _release(self, admission: Admission) -> None:
        with self._lock:
            if admission._held:
                admission._held = False
                self._admitted -= 1

    def submit(self, job: Job, admission: Admission | None = None) -> None:
        """Queue a job in the place its request was admitted to (or in a new one: 429 when full)."""
        admission = admission or self.admit()
        admission.job, job.admission = job, admission
        self._jobs.put(job)

    @property
    def decoding(self) -> bool:
        return self.batch is not None and self.batch.active > 0

    def _serve(self) -> None:
        # After stop(), the cancelled answers in the batch leave at the next step, then the thread ends.
        while not (self._stopping.is_set() and not self.decoding):
            job = self._next_job()
            if job is not None:
                self._start(job)
            if self.decoding:
                for finished, outcome in self.batch.step():
                    self._finish(finished, outcome)

    def _next_job(self) -> Job | None:
        """The next queued job. While nothing decodes it waits for one; while the batch decodes it
        never waits (None: no job queued, or no room in the batch). None after stop()."""
        if self._stopping.is_set() or (self.decoding and not self.batch.has_room):
            return None
        try:
            return self._jobs.get(block=not self.decoding)
        except queue.Empty:
            return None

    def _start(self, job: Job) -> None:
        job.admission.release()  # out of the queue: the place is free for the next request
        if job.should_stop():  # cancelled or timed out while waiting: its client is gone
            job.emit("error", timeout_error(self.request_timeout_s))
            return
        self.running = (*self.running, job)
        job.started.set()
        try:
            outcome = ("result", job.run(job))
        except APIError as exc:
            outcome = ("error", exc)
        except Exception as exc:  # an internal error must not kill the worker
            log.exception("job failed")
            outcome = ("error", internal_error(exc))
        if outcome[1] is not IN_BATCH:
            self._finish(job, outcome)

    def _finish(self, job: Job, outcome: tuple[str, Any]) -> None:
        self.running = tuple(j for j in self.running if j is not job)
        self.completed += 1
        # Published only now: a client that has its answer finds the job counted and no longer
        # running (``/health``), never a moment before.
        job.emit(*outcome)
