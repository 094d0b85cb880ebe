"""`cope preprocess`: a crashing video fails alone; its neighbours in the pool are retried (issue 14)."""

from __future__ import annotations

import pytest

from cope.data.preprocess import VideoResult, run_local

CRASH = "__import__('os').kill(__import__('os').getpid(), 11)"  # a segfault inside the worker
SLOW = "__import__('time').sleep(0.3) or {!r}"  # in flight while the crash breaks the pool


@pytest.mark.slow
def test_a_crashing_video_does_not_fail_its_neighbours():
    """Before: every video in flight when the worker died was reported failed ("done 0, failed 2")."""
    sources = [SLOW.format(i) for i in range(3)] + [CRASH] + [SLOW.format(i) for i in range(3, 6)]
    results = list(run_local(eval, sources, (), workers=2))  # eval: a task children need not import
    failed = {r.source: r.reason for r in results if isinstance(r, VideoResult)}
    assert len(results) == len(sources)
    assert failed == {CRASH: "RuntimeError: worker process died on this video (killed by SIGSEGV)"}
    assert sorted(r for r in results if not isinstance(r, VideoResult)) == list(range(6))
