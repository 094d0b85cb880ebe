"""Run independent per-GOP jobs on worker threads, and hand their outputs on in the jobs' order.

GOPs are independent (each starts with an I-frame; the motion accumulator and the reference frame
restart there), so extraction decodes and fuses several at once. Threads suffice: PyAV releases
the GIL while FFmpeg decodes and converts frames, and the numba kernels run without it.

Memory stays bounded: at most ``workers`` jobs run at a time, and each may run at most ``depth``
outputs ahead of the consumer before it waits. The output order, and every output, is the same
for any number of workers: each job's outputs depend on its GOP alone.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

DEPTH = 16  # outputs a job may hold ahead of the consumer (16 Δ-frames at 384×384: about 32 MB)
_DONE = object()  # a job's end-of-output marker


class _Failed:
    """A job's exception, on its way to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def available_cores() -> int:
    """The CPUs this process may run on (the default number of extraction workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ordered_outputs(
    jobs: Iterable[Callable[[], Iterator[T]]], workers: int, depth: int = DEPTH
) -> Iterator[T]:
    """Every job's outputs, job after job, with up to ``workers`` jobs running at once.

    With one worker the jobs run one after the other in the calling thread (no thread at all).
    An exception in a job is raised here, when the consumer reaches that job; closing this
    generator early stops the running jobs at their next output.
    """
    if workers <= 1:
        for job in jobs:
            yield from job()
        return
    stop = threading.Event()
    running: deque[queue.Queue] = deque()
    pending = iter(jobs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cope-gop") as pool:
        try:
            for job in pending:
                running.append(_start(pool, job, depth, stop))
                if len(running) == workers:
                    break
            while running:
                yield from _drain(running.popleft())
                following = next(pending, None)
                if following is not None:
                    running.append(_start(pool, following, depth, stop))
        finally:
            stop.set()  # jobs waiting on a full queue give up; running ones stop at their next output
            pool.shutdown(wait=True, cancel_futures=True)


def _start(pool: ThreadPoolExecutor, job, depth: int, stop: threading.Event) -> queue.Queue:
    outputs: queue.Queue = queue.Queue(maxsize=depth)
    pool.submit(_run, job, outputs, stop)
    return outputs


def _run(job, outputs: queue.Queue, stop: threading.Event) -> None:
    """Run one job on a worker thread, passing its outputs (then _DONE, or its exception) on."""
    try:
        for output in job():
            if not _put(outputs, output, stop):
                return
        _put(outputs, _DONE, stop)
    except BaseException as exc:  # handed to the consumer, which raises it (Ctrl-C included)
        _put(outputs, _Failed(exc), stop)


def _put(outputs: queue.Queue, item, stop: threading.Event) -> bool:
    """Wait for room in the queue; False once the consumer has gone."""
    while not stop.is_set():
        try:
            outputs.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(outputs: queue.Queue) -> Iterator:
    while True:
        item = outputs.get()
        if item is _DONE:
            return
        if isinstance(item, _Failed):
            raise item.error
        yield item
