"""SIGINT, SIGTERM and SIGHUP all stop a command the same way: as a ``KeyboardInterrupt``.

Every cleanup path in ``cope`` (``finally`` blocks, ``except BaseException`` that removes a partial
file, ``NpzStreamWriter.__exit__``) already runs on Ctrl-C, so ``timeout``, ``kill`` and a closed
terminal get the same cleanup for free, and the exit code says which signal it was (128 + signum).

A ``KeyboardInterrupt`` raised while Python runs code that cannot pass exceptions on (a C
callback such as PyAV's log handler, a finalizer, a helper thread) is printed and dropped. So the
handler also records the signal, and the long loops (transcode, decode, generation) call
``check()``, which raises it again: an interrupt can be delayed by one frame, never lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_pending: int | None = None


class Interrupted(KeyboardInterrupt):
    """A stop signal, delivered as ``KeyboardInterrupt`` so ``except Exception`` cannot eat it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def _handler(signum, frame) -> None:
    global _pending
    _pending = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise the stop signal received earlier, if any (call it once per frame or token)."""
    if _pending is not None:
        raise Interrupted(_pending)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into ``Interrupted`` for the duration (main thread only).

    An inherited "ignore" is overridden for SIGINT and SIGTERM: a shell script starts background
    jobs with SIGINT ignored, and ``cope … & kill -INT $!`` then ran to the end and exited 0 (as
    the ``ffmpeg`` command line does, we stop). SIGHUP stays ignored when it was: that is what
    ``nohup cope …`` asks for.
    """
    global _pending
    _pending = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in HANDLED:
        if signum != getattr(signal, "SIGHUP", None) or signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _pending = None
