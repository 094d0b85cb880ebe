"""Codec engine throughput and memory, as JSON on stdout.

    python benchmarks/codec_throughput.py [--long-minutes 10] [--repeats 3] [--workers 2]

For each canonical size (384×384, and 640×368 — 360 is not a multiple of 16, so the 640×360
case is encoded at the next multiple) it reports, on the same one-minute canonical file (the
bundled sample looped) in the same process:

* ``plain_decode_fps``: decode every frame, no conversion (the floor any pipeline pays);
* ``decode_rgb_fps``: decode + RGB for every frame (what a dense-RGB pipeline at native fps pays);
* ``decode_mv_export_fps``: decode with FFmpeg's motion-vector export, no cope code (the ceiling
  for any extractor built on FFmpeg's export);
* ``extract_s30_fps`` / ``extract_s1_fps``: ``cope extract``'s work (MV export, residual, fusion),
  frames of video per second; ratios against both baselines;
* ``extract_s30_numpy_fps``: the same with the numpy reference instead of the compiled kernels
  (``cope.codec.kernels``), and the speed-up between the two;
* ``extract_s30_workers{N}_fps``: S = 30 extraction with ``--workers N`` GOPs decoded at once
  (every other figure is one worker), and its speed-up over one worker;
* ``transcode_fps``: source frames per second into the canonical stream.

``native`` does the same for native mode (``--codec native``) on the same minute encoded as H.264
with x264's defaults (B-frames, 3 references, scene-cut I-frames, keyint 250): plain decode of that
file, decode with motion-vector export, and native S = 30 extraction with 1 and N workers.

Then the peak RSS of extraction (s = 30) on a short clip and on a ``--long-minutes`` clip, each in
its own process, with 1 and N workers: bounded memory means the short and long clips are about
equal. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from cope.codec import CanonicalSettings, kernels, open_video, transcode
from cope.codec.canonical import sample_video_path
from cope.codec.swscale import to_rgb24


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_decode(path: Path, rgb: bool = False, mvs: bool = False) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if mvs:
            stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            if rgb:
                to_rgb24(frame)
            if mvs and (side := frame.side_data.get("MOTION_VECTORS")) is not None:
                side.to_ndarray()


def extract(path: Path, fusion: int, compiled: bool = True, workers: int = 1, native: bool = False) -> None:
    """``cope extract``'s work; ``compiled=False`` runs the numpy reference of the codec kernels.

    ``path`` is read as it is: a canonical stream, or with ``native`` an H.264 source."""
    enabled = kernels.ENABLED
    kernels.ENABLED = compiled and enabled
    try:
        if native:  # at the source's own size: no scaling
            with av.open(str(path)) as container:
                context = container.streams.video[0].codec_context
                settings = CanonicalSettings(width=context.width, height=context.height, codec="native")
            video = open_video(path, settings, workers=workers)
        else:
            video = open_video(path, no_transcode=True, workers=workers)
        for _ in video.entries(video.plan(fusion=fusion)):
            pass
    finally:
        kernels.ENABLED = enabled


# x264's defaults (B-frames, 3 references, B-pyramid, scene-cut I-frames, keyint 250) at CRF 23.
H264_OPTIONS = {"crf": "23"}


def make_long_source(path: Path, minutes: float, size: tuple[int, int], codec: str = "mpeg4") -> Path:
    """A long source made by looping the bundled sample (fast to encode): MPEG-4 (qscale 3) or
    H.264 (``H264_OPTIONS``)."""
    with av.open(str(sample_video_path())) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    total = int(minutes * 60 * 30)
    options = H264_OPTIONS if codec == "libx264" else {"qmin": "3", "qmax": "3"}
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(total):
            # Ping-pong through the sample so motion stays continuous.
            k = i % (2 * len(frames) - 2)
            image = frames[k if k < len(frames) else 2 * len(frames) - 2 - k]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(size[0], size[1])
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


PEAK_RSS_CHILD = """
import sys
from pathlib import Path
from cope.codec import open_video
# A forked child inherits its parent's high-water mark; "5" resets it (Linux ≥ 4.0).
Path("/proc/self/clear_refs").write_text("5")
video = open_video(sys.argv[1], cache_dir=sys.argv[2], workers=int(sys.argv[3]))
for entry in video.entries(video.plan(fusion=30)):
    pass
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(int(status["VmHWM"].split()[0]), video.info.frames)
"""


def peak_rss_mb(path: Path, cache_dir: Path, workers: int = 1) -> tuple[float, int]:
    """Transcode first (cached), then measure extraction alone in a fresh process."""
    transcode(path, CanonicalSettings(), cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CHILD, str(path), str(cache_dir), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]) / 1024, int(out[1])


def bench_size(source: Path, size: tuple[int, int], repeats: int, work: Path, workers: int) -> dict:
    settings = CanonicalSettings(width=size[0], height=size[1])
    cache = work / f"cache-{size[0]}x{size[1]}"
    start = time.perf_counter()
    canonical = transcode(source, settings, cache)
    transcode_s = time.perf_counter() - start
    path = canonical.path
    n = open_video(path, no_transcode=True).info.frames
    plain = median_time(lambda: plain_decode(path, rgb=False), repeats)
    with_rgb = median_time(lambda: plain_decode(path, rgb=True), repeats)
    with_mvs = median_time(lambda: plain_decode(path, mvs=True), repeats)
    extract(path, 30)  # compile (or load) the kernels outside the clock
    s30 = median_time(lambda: extract(path, 30), repeats)
    s30_numpy = median_time(lambda: extract(path, 30, compiled=False), repeats)
    s30_parallel = median_time(lambda: extract(path, 30, workers=workers), repeats)
    s1 = median_time(lambda: extract(path, 1), max(1, repeats // 2))
    return {
        "canonical_size": f"{size[0]}x{size[1]}",
        "frames": n,
        "transcode_fps": round(canonical.source.frames / transcode_s, 1),
        "plain_decode_fps": round(n / plain, 1),
        "decode_rgb_fps": round(n / with_rgb, 1),
        "decode_mv_export_fps": round(n / with_mvs, 1),
        "extract_s30_fps": round(n / s30, 1),
        "extract_s1_fps": round(n / s1, 1),
        "extract_s30_numpy_fps": round(n / s30_numpy, 1),
        f"extract_s30_workers{workers}_fps": round(n / s30_parallel, 1),
        f"extract_s30_workers{workers}_vs_1": round(s30 / s30_parallel, 3),
        "compiled_kernels": kernels.ENABLED,
        "extract_s30_compiled_vs_numpy": round(s30_numpy / s30, 3),
        "extract_s30_vs_plain_decode": round(plain / s30, 3),
        "extract_s30_vs_decode_rgb": round(with_rgb / s30, 3),
        "decode_mv_export_vs_plain_decode": round(plain / with_mvs, 3),
        "extract_s1_vs_plain_decode": round(plain / s1, 3),
    }


def bench_native(source: Path, repeats: int, workers: int) -> dict:
    """Native mode on an H.264 source: against plain decode of that same file."""
    with av.open(str(source)) as container:
        n = sum(1 for packet in container.demux(video=0) if packet.size)
    plain = median_time(lambda: plain_decode(source, rgb=False), repeats)
    with_mvs = median_time(lambda: plain_decode(source, mvs=True), repeats)
    extract(source, 30, native=True)  # compile (or load) the kernels outside the clock
    s30 = median_time(lambda: extract(source, 30, native=True), repeats)
    s30_parallel = median_time(lambda: extract(source, 30, native=True, workers=workers), repeats)
    return {
        "source": "the 384x384 minute as H.264 (x264 defaults, CRF 23)",
        "frames": n,
        "plain_decode_fps": round(n / plain, 1),
        "decode_mv_export_fps": round(n / with_mvs, 1),
        "native_extract_s30_fps": round(n / s30, 1),
        f"native_extract_s30_workers{workers}_fps": round(n / s30_parallel, 1),
        "native_extract_s30_vs_plain_decode": round(plain / s30, 3),
        f"native_extract_s30_workers{workers}_vs_plain_decode": round(plain / s30_parallel, 3),
        f"native_extract_s30_workers{workers}_vs_1": round(s30 / s30_parallel, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="the parallel case (default: 2)")
    args = parser.parse_args()
    workers = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # One minute per size (the 8-s sample looped): long enough that the ratios are not noise.
        sizes = [
            bench_size(
                make_long_source(work / f"minute-{w}x{h}.avi", 1.0, (w, h)),
                (w, h),
                args.repeats,
                work,
                workers,
            )
            for w, h in ((384, 384), (640, 368))
        ]
        h264 = make_long_source(work / "minute-h264.mp4", 1.0, (384, 384), codec="libx264")
        native = bench_native(h264, args.repeats, workers)
        short = make_long_source(work / "short.avi", 1.0, (384, 384))
        long = make_long_source(work / "long.avi", args.long_minutes, (384, 384))
        short_rss, short_frames = peak_rss_mb(short, work / "cache-rss")
        short_rss_parallel, _ = peak_rss_mb(short, work / "cache-rss", workers)
        long_rss, long_frames = peak_rss_mb(long, work / "cache-rss")
        long_rss_parallel, _ = peak_rss_mb(long, work / "cache-rss", workers)
    report = {
        "benchmark": "codec_throughput",
        "machine_note": "shared 2-core CPU; compare ratios within one run, not absolute numbers",
        "sizes": sizes,
        "native": native,
        "memory": {
            "short_clip": {
                "minutes": 1.0,
                "frames": short_frames,
                "extract_peak_rss_mb": round(short_rss, 1),
                f"extract_workers{workers}_peak_rss_mb": round(short_rss_parallel, 1),
            },
            "long_clip": {
                "minutes": args.long_minutes,
                "frames": long_frames,
                "extract_peak_rss_mb": round(long_rss, 1),
                f"extract_workers{workers}_peak_rss_mb": round(long_rss_parallel, 1),
            },
            "long_over_short_rss": round(long_rss / short_rss, 3),
            f"workers{workers}_over_1_rss": round(short_rss_parallel / short_rss, 3),
        },
        "targets": {
            "extract_s30_vs_plain_decode": ">= 0.5",
            f"extract_s30_workers{workers}_vs_1": ">= 1.6 (2 workers, 2 cores)",
            "peak_memory": "independent of video length; at most 2x with 2 workers",
        },
        "numpy": np.__version__,
        "av": av.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
