"""SIGTERM, SIGHUP and SIGINT stop every command at once and leave nothing behind (issue 14).

Real ``cope`` processes, real signals. Each command runs in its own session, so a signal reaches
only the process it is sent to (as from ``timeout`` or ``kill``), not pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.clips import texture

pytestmark = pytest.mark.slow

FRAMES = 3000  # 100 s at 30 fps: long enough to be caught mid-transcode and mid-extract


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    tex = texture(96, 96 + FRAMES).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "g": "300"})
        stream.width = stream.height = 96
        stream.pix_fmt = "yuv420p"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[:, i : i + 96]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def cope(*args, env=None, sigint=signal.SIG_DFL, sighup=signal.SIG_DFL) -> subprocess.Popen:
    """Start ``cope`` with the given SIGINT/SIGHUP dispositions (default: as in a terminal)."""

    def dispositions():
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGHUP, sighup)

    return subprocess.Popen(
        [sys.executable, "-m", "cope.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=dispositions,
        env={**os.environ, **(env or {})},
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    """Wait for the exit while reading its pipes (progress bars would fill them and block it)."""
    process.output, process.errors = process.communicate(timeout=timeout)
    return process.returncode


def wait_for(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read()}"
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, float, str]:
    """Send ``signum``; return (exit code, seconds until it exited, stderr)."""
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    return process.returncode, time.monotonic() - sent, err


def leftovers(*folders: Path) -> list[Path]:
    patterns = (".cope-npz-*", "*.partial", ".tmp-*", ".work", ".shard-*")
    return [p for folder in folders for pattern in patterns for p in folder.glob(pattern)]


def extract_args(clip, out: Path, cache: Path, *extra):
    return ("extract", clip, "--out", out, "--size", "128x128", "--cache-dir", cache, *extra)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_signal_mid_extract_removes_the_spool(signum, code, long_clip, tmp_path):
    """Before: SIGTERM left the ``.cope-npz-*`` spool (24 GB on a long clip) and exited -15."""
    cache, out_dir = tmp_path / "cache", tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.npz"
    assert finish(cope("inspect", long_clip, "--size", "128x128", "--cache-dir", cache)) == 0  # warm cache
    process = cope(*extract_args(long_clip, out, cache, "--fusion", "1"))
    wait_for(lambda: any(out_dir.glob(".cope-npz-*/mv.raw")), process)
    time.sleep(0.2)  # well into the decode
    returncode, seconds, err = stop(process, signum)
    assert (returncode, leftovers(out_dir, cache)) == (code, []), err
    assert seconds < 1.5 and not out.exists()
    assert err.strip().endswith(f"cope: interrupted ({signal.Signals(signum).name})")
    rerun = cope(*extract_args(long_clip, out, cache, "--fusion", "30"))
    assert finish(rerun) == 0 and out.exists() and leftovers(out_dir, cache) == []


def test_sigterm_mid_transcode_removes_the_partial_stream(long_clip, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "x.npz"
    process = cope(*extract_args(long_clip, out, cache))
    wait_for(lambda: any(cache.glob("*.partial")), process)
    time.sleep(0.3)
    returncode, seconds, err = stop(process, signal.SIGTERM)
    assert (returncode, leftovers(cache, tmp_path)) == (143, []), err
    assert seconds < 1.0 and not list(cache.glob("*.mp4"))
    assert finish(cope(*extract_args(long_clip, out, cache))) == 0 and out.exists()


def test_a_sigkilled_runs_spool_is_removed_by_the_next_run(long_clip, tmp_path):
    """SIGKILL cannot be handled: the next writer in that folder removes the dead run's spool."""
    cache, out_dir = tmp_path / "cache", tmp_path / "out"
    out_dir.mkdir()
    assert finish(cope("inspect", long_clip, "--size", "128x128", "--cache-dir", cache)) == 0
    process = cope(*extract_args(long_clip, out_dir / "x.npz", cache, "--fusion", "1"))
    wait_for(lambda: any(out_dir.glob(".cope-npz-*/mv.raw")), process)
    stop(process, signal.SIGKILL)
    assert len(list(out_dir.glob(".cope-npz-*"))) == 1
    alive = out_dir / f".cope-npz-{os.getpid()}-live"  # a live process's spool is left alone
    alive.mkdir()
    assert finish(cope(*extract_args(long_clip, out_dir / "y.npz", cache))) == 0
    assert list(out_dir.glob(".cope-npz-*")) == [alive]


def test_a_sigkilled_transcode_is_removed_by_the_next_transcode(long_clip, sample_video, tmp_path):
    cache = tmp_path / "cache"
    process = cope("inspect", long_clip, "--size", "128x128", "--cache-dir", cache)
    wait_for(lambda: any(cache.glob("*.partial")), process)
    stop(process, signal.SIGKILL)
    assert len(list(cache.glob("*.partial"))) == 1
    assert finish(cope("inspect", sample_video, "--size", "64x64", "--cache-dir", cache)) == 0
    assert not list(cache.glob("*.partial"))


def test_sigint_stops_a_background_job_whose_shell_ignored_it(long_clip, tmp_path):
    """Before: started as a script's background job (SIGINT inherited as ignored), ``inspect``
    swallowed ``kill -INT``, finished the transcode, printed its JSON and exited 0."""
    cache = tmp_path / "cache"
    process = cope(
        "inspect", long_clip, "--size", "128x128", "--cache-dir", cache, "--json", sigint=signal.SIG_IGN
    )
    wait_for(lambda: any(cache.glob("*.partial")), process)
    returncode, seconds, err = stop(process, signal.SIGINT)
    assert (returncode, leftovers(cache)) == (130, []), err
    assert seconds < 1.0 and not list(cache.glob("*.mp4"))


def test_nohup_keeps_sighup_ignored(tmp_path, long_clip):
    process = cope("inspect", long_clip, "--size", "64x64", "--cache-dir", tmp_path, sighup=signal.SIG_IGN)
    wait_for(lambda: any(tmp_path.glob("*.partial")), process)
    process.send_signal(signal.SIGHUP)
    assert finish(process) == 0


def test_sigint_mid_transcode_and_mid_scan_always_stops_within_a_second(long_clip, tmp_path):
    """Ctrl-C at many points of ``inspect`` with an empty cache: never ignored, never slow."""
    for attempt, delay in enumerate((0.0, 0.1, 0.25, 0.4, 0.6)):
        cache = tmp_path / f"cache{attempt}"
        process = cope("inspect", long_clip, "--size", "128x128", "--cache-dir", cache, "--json")
        wait_for(lambda cache=cache: any(cache.glob("*.partial")), process)
        time.sleep(delay)
        returncode, seconds, err = stop(process, signal.SIGINT)
        assert returncode == 130 and seconds < 1.0, err
        assert leftovers(cache) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_preprocess_and_its_workers_at_once(signum, code, long_clip, tmp_path):
    """Before: SIGTERM killed the driver alone, its workers kept transcoding; on Ctrl-C the driver
    waited for each worker to finish its video (``shutdown(wait=True)``): many seconds."""
    clips = []
    for i in range(4):
        clip = tmp_path / f"clip{i}.mp4"
        clip.write_bytes(long_clip.read_bytes() + b"\0" * i)  # distinct content, same video
        clips.append(clip)
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(map(str, clips)) + "\n")
    out, cache = tmp_path / "cache-out", tmp_path / "canonical"
    args = ("preprocess", listing, "--out", out, "--workers", "2", "--size", "128x128", "--cache-dir", cache)
    process = cope(*args)
    wait_for(lambda: any(cache.glob("*.partial")), process)
    workers = _children(process.pid)
    returncode, seconds, err = stop(process, signum)
    assert returncode == code and seconds < 1.5, err
    time.sleep(0.5)
    assert [pid for pid in workers if _alive(pid)] == []
    assert leftovers(out, cache) == []
    rerun = cope(*args, "--json")
    assert finish(rerun, timeout=300) == 0
    assert json.loads(rerun.output)["done"] == 4 and leftovers(out, cache) == []


def test_workers_die_with_a_sigkilled_driver(long_clip, tmp_path):
    """Before: SIGKILL of the driver left its 2 workers running for minutes."""
    listing = tmp_path / "videos.txt"
    clips = [tmp_path / f"c{i}.mp4" for i in range(2)]
    for i, clip in enumerate(clips):
        clip.write_bytes(long_clip.read_bytes() + b"\0" * i)
    listing.write_text("\n".join(map(str, clips)) + "\n")
    process = cope("preprocess", listing, "--out", tmp_path / "out", "--workers", "2", "--size", "128x128")
    wait_for(
        lambda: len(_children(process.pid)) >= 2 and any((tmp_path / "out" / ".work").rglob("*.partial")),
        process,
    )
    workers = _children(process.pid)
    stop(process, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if _alive(pid)] == []


def _children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (Linux /proc), leaving out multiprocessing's resource tracker."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                found.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be read
