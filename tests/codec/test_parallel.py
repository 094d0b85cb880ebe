"""Parallel GOPs: any number of workers gives the same entries, in the same order, bit for bit."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cope.codec import CanonicalSettings, IFrame, PFrame, open_video
from cope.codec.parallel import ordered_outputs


def assert_same_entries(a: list, b: list) -> None:
    assert [(type(e).__name__, e.index, e.gop) for e in a] == [(type(e).__name__, e.index, e.gop) for e in b]
    for x, y in zip(a, b, strict=True):
        if isinstance(x, IFrame):
            assert np.array_equal(x.rgb, y.rgb)
        else:
            assert x.ref_index == y.ref_index
            assert np.array_equal(x.mv, y.mv) and np.array_equal(x.residual, y.residual)
            assert (x.intra is None) == (y.intra is None)


@pytest.mark.parametrize("fusion", [1, 5])
def test_canonical_entries_do_not_depend_on_the_workers(integer_clip, cache_dir, fusion):
    settings = CanonicalSettings(width=128, height=128, gop=10)  # 7 GOPs: workers seek to each
    one, three = (open_video(integer_clip, settings, cache_dir=cache_dir, workers=w) for w in (1, 3))
    plan = one.plan(fusion=fusion)
    entries = list(one.entries(plan))
    assert len(one.scan.gop_starts) == 7 and sum(isinstance(e, PFrame) for e in entries) >= 6
    assert_same_entries(entries, list(three.entries(plan)))


def test_native_entries_do_not_depend_on_the_workers(h264_diagonal_clip):
    settings = CanonicalSettings(width=128, height=128, codec="native")
    one, three = (open_video(h264_diagonal_clip, settings, workers=w) for w in (1, 3))
    plan = one.plan(fusion=3)
    entries = list(one.entries(plan))
    assert len(entries) == 3 + 18  # 3 GOPs; 9 + 9 Δ-frames in the two full ones
    assert_same_entries(entries, list(three.entries(plan)))


def test_outputs_come_in_job_order_whatever_finishes_first():
    def job(number: int):
        def run():
            for step in range(3):
                time.sleep(0.01 * ((number * 7) % 4))  # later jobs often finish first
                yield number, step

        return run

    outputs = list(ordered_outputs([job(n) for n in range(8)], workers=3))
    assert outputs == [(n, step) for n in range(8) for step in range(3)]


def test_at_most_workers_jobs_run_and_each_waits_when_depth_ahead():
    running, most, lock = [0], [0], threading.Lock()

    def job():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            yield from range(10)
        finally:
            with lock:
                running[0] -= 1

    consumed = ordered_outputs([job] * 6, workers=2, depth=2)
    assert next(consumed) == 0
    time.sleep(0.05)  # the second job fills its 2 places, then waits
    assert list(consumed) == list(range(1, 10)) + list(range(10)) * 5
    assert most[0] == 2


def test_a_failing_job_raises_at_its_turn_and_closing_stops_the_rest():
    started = []

    def good(n):
        def run():
            started.append(n)
            yield from range(100)

        return run

    def bad():
        raise ValueError("damaged GOP")
        yield  # pragma: no cover - makes this a generator

    outputs = ordered_outputs([good(0), bad, good(2)], workers=2)
    assert len([next(outputs) for _ in range(100)]) == 100
    with pytest.raises(ValueError, match="damaged GOP"):
        next(outputs)
    outputs = ordered_outputs([good(n) for n in range(50)], workers=2)
    next(outputs)
    outputs.close()  # the consumer stops early: no further job starts
    assert len(started) <= 4
