"""``cope preprocess``: fill a slot cache (``cope.data.cache``) from a list of videos, in parallel.

Who does what:

* **workers** (a local process pool, or Ray tasks) run ``cache_video`` on one video each: transcode
  to the canonical stream, extract every slot, write a compressed entry file under ``DIR/.work``,
  and return a small ``VideoResult`` (never the arrays, so nothing large crosses a pipe or Ray's
  object store). Any error becomes a failed result with its one-line reason: one bad video never
  stops the run.
* **the driver** alone packs entry files into shards and appends to the manifest. A shard is
  renamed into place before its manifest lines are written, and a video counts as done only once
  its line is in the manifest, so a run killed at any point loses at most the shard in progress.

Resume: a rerun skips every source whose latest manifest line is "ok" (its shard still present);
failed videos are retried. At start the driver (holding ``DIR/.lock``) removes what a killed run
left behind: the ``.work`` directory, ``.partial`` shards, and shards no manifest line points to.

On a multi-node Ray cluster ``DIR`` must be on a file system every node sees (as it must be for
training to read the cache anyway): workers write their entry files there.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from cope.data.cache import (
    SHARD_PATTERN,
    CacheSettings,
    ManifestWriter,
    ShardWriter,
    latest_records,
    read_cache_info,
    read_manifest,
    source_key,
    video_id,
    write_cache_info,
    write_entry,
)
from cope.errors import CopeInputError
from cope.npz import remove_orphans

WORK_DIR = ".work"
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB: few files on a cluster FS, yet little lost to a crash
MAX_FAILURES_SHOWN = 20  # human output lists this many failures, then a count (--json lists all)


@dataclass
class PreprocessConfig:
    """One ``cope preprocess`` run."""

    list_path: Path  # text file, one video path per line (relative paths: to the list's folder)
    out: Path  # the cache directory
    settings: CacheSettings  # canonical stream, fusion, GOP cap: recorded in DIR/cache.json
    workers: int | None = None  # parallel videos; None: 1 locally, every CPU of the Ray cluster
    backend: str = "local"  # "local" (process pool) or "ray"
    ray_address: str | None = None  # an existing Ray cluster; None starts a local Ray instance
    canonical_cache: Path | None = None  # keep transcodes here; None: per-worker temp, deleted
    shard_bytes: int = DEFAULT_SHARD_BYTES  # a shard is closed once its entries reach this size
    progress: bool = True  # tqdm bar on stderr


@dataclass
class VideoResult:
    """What a worker sends back for one video: metadata and the path of its entry file."""

    source: str
    id: str
    status: str  # "ok" or "failed"
    reason: str | None = None
    entry_path: str | None = None
    sha256: str | None = None
    frames: int = 0
    duration_s: float = 0.0
    slots: int = 0
    gops: int = 0
    width: int = 0
    height: int = 0
    decode_errors: int = 0  # FFmpeg errors while decoding the source (damaged data concealed)
    seconds: float = 0.0

    def manifest_record(self, settings: CacheSettings) -> dict:
        if self.status != "ok":
            fields = ("source", "id", "status", "reason")
            return {**{k: getattr(self, k) for k in fields}, "settings": settings.to_dict()}
        record = {k: v for k, v in asdict(self).items() if k not in ("entry_path", "reason")}
        return {**record, "settings": settings.to_dict()}


def cache_video(
    source: str, settings: CacheSettings, work_dir: str, canonical_cache: str | None = None
) -> VideoResult:
    """Worker: transcode one video and write its slot-cache entry to ``work_dir/<id>.npz``."""
    from cope.codec.canonical import file_sha256
    from cope.codec.extract import open_video

    start = time.perf_counter()
    vid = video_id(source)
    own_transcodes = canonical_cache is None
    transcodes = Path(work_dir) / f"canonical-{os.getpid()}" if own_transcodes else Path(canonical_cache)
    try:
        video = open_video(source, settings.canonical, cache_dir=transcodes)
        try:
            entry_path = Path(work_dir) / f"{vid}.npz"
            meta = write_entry(video, settings, entry_path)
        finally:
            if own_transcodes:  # one canonical stream per worker at a time, not one per video
                video.canonical.path.unlink(missing_ok=True)
                video.canonical.path.with_suffix(".json").unlink(missing_ok=True)
        return VideoResult(
            source=source,
            id=vid,
            status="ok",
            entry_path=str(entry_path),
            sha256=file_sha256(Path(source)),
            decode_errors=video.canonical.decode_errors,
            seconds=round(time.perf_counter() - start, 3),
            **meta,
        )
    except Exception as exc:  # any failure is this video's, reported with its reason; the run goes on
        return failed_result(source, exc)


def failed_result(source: str, exc: BaseException) -> VideoResult:
    return VideoResult(
        source=source, id=video_id(source), status="failed", reason=one_line_reason(source, exc)
    )


def one_line_reason(source: str, exc: BaseException) -> str:
    """The error's first line without the leading ``PATH: `` (the result names the video already)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if text.startswith(f"{source}: "):
        text = text[len(source) + 2 :]
    if not isinstance(exc, CopeInputError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def read_video_list(path: Path) -> list[str]:
    """Absolute video paths from a list file, in order, without duplicates; blank lines and
    ``#`` comments are skipped. ``CopeInputError`` if the list itself is unusable."""
    if not path.exists():
        raise CopeInputError(f"{path}: no such file")
    if path.is_dir():
        raise CopeInputError(f"{path}: is a directory, not a list of videos")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CopeInputError(f"{path}: not a UTF-8 text file (expected one video path per line)") from exc
    except OSError as exc:
        raise CopeInputError(f"{path}: cannot read ({exc.strerror})") from exc
    sources: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            candidate = Path(os.path.expanduser(line))
            sources[source_key(candidate if candidate.is_absolute() else path.parent / candidate)] = None
    if not sources:
        raise CopeInputError(f"{path}: lists no videos (one path per line)")
    return list(sources)


# --- backends: run ``cache_video`` over the sources, yield results as they complete ------------


def run_local(task: Callable, sources: list[str], args: tuple, workers: int) -> Iterator[VideoResult]:
    """In this process (1 worker) or a spawn-started process pool, at most 2×workers in flight.

    A worker that dies (a crash inside FFmpeg, the OOM killer) breaks the pool and every video in
    flight with it. Those videos are retried one by one, each alone in its own process, so only
    the one that crashes is reported failed; a fresh pool takes the rest. Workers die with the
    driver, and an interrupted driver kills them at once.
    """
    if workers <= 1:
        for source in sources:
            yield task(source, *args)
        return
    suspects: list[str] = []
    yield from _run_pool(task, sources, args, workers, suspects)
    for source in suspects:
        yield _run_alone(task, source, args)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")  # no fork: safe with threads, same on macOS
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
    )


def _run_pool(task, sources, args, workers, suspects: list[str]) -> Iterator[VideoResult]:
    """Run ``sources`` on pools of ``workers``; videos in flight when a pool broke go to ``suspects``."""
    pending = list(reversed(sources))
    while pending:
        with _new_pool(workers) as pool:
            in_flight = {}
            try:
                while pending or in_flight:
                    while pending and len(in_flight) < 2 * workers:
                        future = pool.submit(task, pending[-1], *args)  # pop only once submitted
                        in_flight[future] = pending.pop()
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        source = in_flight.pop(future)
                        try:
                            result = future.result()
                        except BrokenProcessPool:
                            suspects.append(source)
                            continue
                        yield result
            except BrokenProcessPool:  # submit() on a broken pool: start a new one for the rest
                suspects.extend(in_flight.values())
            except BaseException:  # interrupted, or the consumer stopped: no worker may outlive us
                _stop_workers(pool)
                raise


def _run_alone(task, source: str, args: tuple) -> VideoResult:
    """One video in a process of its own: if it crashes, it crashed on this video."""
    with _new_pool(1) as pool:
        try:
            future = pool.submit(task, source, *args)
            processes = list((pool._processes or {}).values())  # spawned by submit()
            try:
                return future.result()
            except BrokenProcessPool:
                for process in processes:
                    process.join(timeout=5)  # reap it, so its exit code is known
                codes = [p.exitcode for p in processes if p.exitcode]
                how = f"killed by {signal.Signals(-codes[0]).name}" if codes and codes[0] < 0 else "exited"
                code = f" with code {codes[0]}" if codes and codes[0] > 0 else ""
                return failed_result(source, RuntimeError(f"worker process died on this video ({how}{code})"))
        except BaseException:
            _stop_workers(pool)
            raise


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now: ``shutdown`` alone would wait for their current videos."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=5)


def _worker_init(driver: int) -> None:
    """Each worker: leave Ctrl-C to the driver, and die with it even if it is SIGKILLed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops and kills us itself
    try:  # Linux: the kernel sends SIGKILL when the driver dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != driver:  # the driver died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_driver, args=(driver,), daemon=True).start()  # other systems


def _watch_driver(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(0.5)
    os._exit(1)


def run_ray(
    task: Callable, sources: list[str], args: tuple, workers: int | None, address: str | None
) -> Iterator[VideoResult]:
    """The same task as Ray tasks (1 CPU each), on ``address`` or a local Ray instance we start."""
    try:
        import ray
    except ImportError as exc:
        raise CopeInputError("--backend ray needs Ray: pip install 'cope[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        limit = 2 * (workers or int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(task)
        pending = list(reversed(sources))
        in_flight = {}
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                ref = remote.remote(pending[-1], *args)
                in_flight[ref] = pending.pop()
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                source = in_flight.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task's worker died, even after retries
                    yield failed_result(source, RuntimeError(f"Ray task failed ({type(exc).__name__})"))
    finally:
        if started:
            ray.shutdown()


# --- the driver ---------------------------------------------------------------------------------


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer per cache; released if the process dies."""

    def __init__(self, directory: Path):
        self.file = open(directory / ".lock", "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.file.close()
            raise CopeInputError(f"{directory}: another cope preprocess is writing to this cache") from exc

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def prepare_directory(out: Path, settings: CacheSettings) -> dict[str, dict]:
    """Check or record the settings, clean up after a killed run, return the latest records."""
    existing = read_cache_info(out)
    if existing is None:
        write_cache_info(out, settings)
    elif existing != settings:
        raise CopeInputError(
            f"{out}: holds a cache made with other settings ({existing.to_dict()}); "
            "use another --out or the same settings"
        )
    lines = read_manifest(out)
    records = latest_records(lines)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    (out / WORK_DIR).mkdir()
    for partial in out.glob(".shard-*.partial"):
        partial.unlink()
    referenced = {r.get("shard") for r in lines}
    for shard in out.glob(SHARD_PATTERN):
        if shard.name not in referenced:  # renamed, but the run died before its manifest lines
            shard.unlink()
    return {
        source: record
        for source, record in records.items()
        if record["status"] != "ok" or (out / record["shard"]).exists()
    }


def run_preprocess(config: PreprocessConfig) -> dict:
    """Run the job; returns the summary (``cope preprocess --json``)."""
    config.settings.validate()
    if config.backend not in ("local", "ray"):
        raise CopeInputError(f"unknown backend {config.backend!r} (local or ray)")
    if config.workers is not None and config.workers < 1:
        raise CopeInputError(f"--workers must be ≥ 1, got {config.workers}")
    sources = read_video_list(config.list_path)
    out = config.out
    if out.exists() and not out.is_dir():
        raise CopeInputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out)
    try:
        records = prepare_directory(out, config.settings)
        todo = [s for s in sources if records.get(s, {}).get("status") != "ok"]
        args = (
            config.settings,
            str(out / WORK_DIR),
            str(config.canonical_cache) if config.canonical_cache else None,
        )
        if config.backend == "ray":
            results = run_ray(cache_video, todo, args, config.workers, config.ray_address)
        else:
            results = run_local(cache_video, todo, args, config.workers or 1)
        summary = drive(config, results, len(todo), out)
    finally:
        lock.release()
    summary.update(listed=len(sources), skipped=len(sources) - len(todo))
    return summary


def drive(config: PreprocessConfig, results: Iterator[VideoResult], total: int, out: Path) -> dict:
    """Pack results into shards and the manifest as they arrive; return the run's counts."""
    from tqdm import tqdm

    start = time.perf_counter()
    manifest = ManifestWriter(out)
    shards = ShardWriter(out, config.shard_bytes)
    done, failures, seconds_of_video = 0, [], 0.0
    bar = tqdm(total=total, unit="video", desc="preprocess", disable=not config.progress, file=sys.stderr)
    try:
        for result in results:
            if result.status == "ok":
                record = result.manifest_record(config.settings)
                manifest.append(shards.add(Path(result.entry_path), record))
                done += 1
                seconds_of_video += result.frames / config.settings.canonical.fps
            else:
                manifest.append([result.manifest_record(config.settings)])
                failures.append({"video": result.source, "reason": result.reason})
                bar.set_postfix(failed=len(failures))
            bar.update(1)
        manifest.append(shards.finish_shard())
    except BaseException:
        shards.abort()
        raise
    finally:
        getattr(results, "close", lambda: None)()  # stop the workers before removing .work
        bar.close()
        manifest.close()
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
        if config.canonical_cache is not None:  # transcodes the killed workers had in progress
            remove_orphans(Path(config.canonical_cache), "*.partial")
    elapsed = time.perf_counter() - start
    minutes = seconds_of_video / 60
    return {
        "out": str(out),
        "backend": config.backend,
        "workers": config.workers,
        "done": done,
        "failed": len(failures),
        "failures": failures,
        "shards_written": shards.shards_written,
        "entry_bytes": shards.bytes_added,
        "video_minutes": round(minutes, 4),
        "bytes_per_video_minute": round(shards.bytes_added / minutes) if minutes else None,
        "seconds": round(elapsed, 3),
        "videos_per_minute": round(60 * (done + len(failures)) / elapsed, 2) if elapsed else None,
    }
