"""The slot cache: one video's codec primitives, stored once, serving every sampling a recipe uses.

A GOP of G frames with fusion s has G/s *slots* at offsets 0, s, 2s, … (``cope.plan``). For every
sampled GOP the cache stores, per slot,

* the decoded RGB frame (the I-frame at slot 0, the frames that become extra keyframes or the
  dense-at-1-FPS frames elsewhere), and
* for every slot but the GOP's first, the motion field and residual fused over the s frames since
  the previous slot: what ``CodecVideo.entries`` yields for the P entries of the K = 1 plan.

Any K-keyframes-per-GOP plan is then a choice per slot: RGB if the slot is a keyframe, else its Δ,
which always refers to the previous slot, exactly as the codec plan does. So K = 1, 2, 4, the
dense-at-1-FPS plan (every slot RGB), iframes-only, and jittered keyframes all come from one entry
without decoding: ``visual_input_from_cache(entry, keyframes_per_gop | "dense")``.

On disk (``DIR``):

* ``cache.json``: the format version and the settings every entry was made with;
* ``manifest.jsonl``: one JSON line per video and attempt (``status`` "ok" with its shard, byte
  offset and length, or "failed" with the reason); the last line for a source wins;
* ``shard-00000.zip`` …: uncompressed zip archives of many per-video ``.npz`` members (each
  member deflated inside), so a cluster file system sees a few large files.

Entry arrays (one ``.npz`` member per video):

| array | shape, dtype | meaning |
|---|---|---|
| ``slot_index`` | (n,) int64 | display index of each slot, temporal order |
| ``slot_gop`` | (n,) int64 | GOP of each slot |
| ``rgb`` | (n, H, W, 3) uint8 | the decoded frame at each slot |
| ``has_delta`` | (n,) bool | the slot has a Δ (false for the first slot of a GOP) |
| ``mv_halfpel`` | (nΔ, H, W, 2) int16 | fused motion × 2 (codec vectors are half-pel multiples) |
| ``residual`` | (nΔ, H, W, 3) int16 | fused residual, −255…255 |
| ``gop_starts`` | (g,) int64 | display index of every I-frame of the canonical stream |
| ``num_frames``, ``gop_size``, ``fusion`` | (1,) int64 | stream length, nominal GOP, s |
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cope.codec.canonical import CanonicalSettings
from cope.codec.primitives import IFrame
from cope.errors import CopeInputError
from cope.hub import atomic_write_bytes
from cope.npz import NpzStreamWriter
from cope.plan import DEFAULT_FUSION, MAX_GOPS, TokenPlan, cope_plan, keyframe_spacing

# Bump when the entry arrays or the manifest change meaning; a cache of another version is refused.
CACHE_FORMAT_VERSION = 1
CACHE_INFO = "cache.json"
MANIFEST = "manifest.jsonl"
# Deflate level of the arrays inside an entry. Level 1 is ~4× faster than the default 6 and only
# ~3 % larger on codec frames and residuals (measured on the bundled sample, docs/data.md).
COMPRESS_LEVEL = 1

ENTRY_ARRAYS = (
    "slot_index",
    "slot_gop",
    "rgb",
    "has_delta",
    "mv_halfpel",
    "residual",
    "gop_starts",
    "num_frames",
    "gop_size",
    "fusion",
)


@dataclass(frozen=True)
class CacheSettings:
    """What a slot cache was made with; every entry of one cache directory shares these."""

    canonical: CanonicalSettings = field(default_factory=CanonicalSettings)  # fps, GOP, size, quantiser
    fusion: int = DEFAULT_FUSION  # s: frames between slots (30 → 1 FPS at 30 fps)
    max_gops: int = MAX_GOPS  # GOP cap; longer videos keep this many GOPs, uniformly spread

    def validate(self) -> None:
        self.canonical.validate()
        if self.max_gops < 1:
            raise CopeInputError(f"max GOPs must be ≥ 1, got {self.max_gops}")
        try:
            keyframe_spacing(self.canonical.gop, self.fusion, 1)
        except ValueError as exc:
            raise CopeInputError(str(exc)) from exc

    def to_dict(self) -> dict:
        return {"canonical": asdict(self.canonical), "fusion": self.fusion, "max_gops": self.max_gops}

    @classmethod
    def from_dict(cls, data: dict) -> CacheSettings:
        return cls(CanonicalSettings(**data["canonical"]), int(data["fusion"]), int(data["max_gops"]))


def source_key(path: str | os.PathLike) -> str:
    """The absolute path a cache indexes a video by (no symlink resolution: mounts differ per node)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def video_id(source: str) -> str:
    """Stable id of a source path: 16 hex digits of its SHA-256 (the entry's member name)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def half_pel(mv: np.ndarray, where: str) -> np.ndarray:
    """Motion in pixels → int16 half-pels, refusing anything that is not an exact half-pel multiple.

    Codec vectors are half-pel; fusion only adds them (``codec/fusion.py``), so fused vectors are
    half-pel multiples too. The check makes the cache's exactness a guarantee, not an assumption.
    """
    doubled = mv * 2.0
    rounded = np.rint(doubled)
    if not np.array_equal(rounded, doubled) or np.abs(rounded).max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError(f"{where}: motion field is not an int16 half-pel field")
    return rounded.astype(np.int16)


@dataclass
class SlotEntry:
    """One cached video: every slot's RGB frame and every non-first slot's Δ (see module doc)."""

    source: str
    slot_index: np.ndarray  # (n,) int64
    slot_gop: np.ndarray  # (n,) int64
    rgb: np.ndarray  # (n, H, W, 3) uint8
    has_delta: np.ndarray  # (n,) bool
    mv_halfpel: np.ndarray  # (nΔ, H, W, 2) int16
    residual: np.ndarray  # (nΔ, H, W, 3) int16
    gop_starts: list[int]
    num_frames: int
    gop_size: int  # nominal GOP the plans use (CodecVideo.plan_gop)
    fusion: int
    fps: float  # the canonical stream's frame rate: slot index / fps = seconds

    @classmethod
    def from_npz(cls, source: str, data: np.lib.npyio.NpzFile, fps: float) -> SlotEntry:
        missing = [name for name in ENTRY_ARRAYS if name not in data.files]
        if missing:
            raise ValueError(f"{source}: cache entry lacks arrays {missing}")
        return cls(
            source=source,
            slot_index=data["slot_index"],
            slot_gop=data["slot_gop"],
            rgb=data["rgb"],
            has_delta=data["has_delta"],
            mv_halfpel=data["mv_halfpel"],
            residual=data["residual"],
            gop_starts=[int(i) for i in data["gop_starts"]],
            num_frames=int(data["num_frames"][0]),
            gop_size=int(data["gop_size"][0]),
            fusion=int(data["fusion"][0]),
            fps=fps,
        )

    @property
    def slots_per_gop(self) -> int:
        return self.gop_size // self.fusion

    @property
    def cached_gops(self) -> list[int]:
        return sorted({int(g) for g in self.slot_gop})

    def plan(self, keyframes_per_gop: int | Literal["dense"], max_gops: int = MAX_GOPS) -> TokenPlan:
        """The codec plan ``CodecVideo.plan(fusion, K, max_gops)`` would make for this video.

        ``"dense"`` is every slot as RGB (the dense-at-1-FPS baseline), i.e. K = slots per GOP.
        """
        k = self.slots_per_gop if keyframes_per_gop == "dense" else int(keyframes_per_gop)
        return cope_plan(self.num_frames, self.gop_starts, self.gop_size, self.fusion, k, max_gops)

    def visual_input(self, plan: TokenPlan):
        """Serve any plan over the cached slots as a ``VisualInput``, without decoding.

        Every plan entry must be a cached slot; a P entry must refer to the previous slot (its
        cached Δ). ``ValueError`` otherwise, e.g. for a plan over GOPs the cache did not keep.
        """
        from cope.model.inputs import VisualInput

        row_of = {int(index): row for row, index in enumerate(self.slot_index)}
        delta_row = np.cumsum(self.has_delta) - 1
        kinds, indices, frames, mvs, residuals = [], [], [], [], []
        for entry in plan.entries:
            row = row_of.get(entry.index)
            if row is None:
                raise ValueError(f"{self.source}: frame {entry.index} is not a cached slot")
            kinds.append(entry.kind)
            indices.append(entry.index)
            if entry.kind == "I":
                frames.append(row)
                continue
            if not self.has_delta[row] or entry.ref_index != int(self.slot_index[row - 1]):
                raise ValueError(
                    f"{self.source}: frame {entry.index} has no cached Δ against frame {entry.ref_index}"
                )
            mvs.append(delta_row[row])
            residuals.append(delta_row[row])
        import torch

        return VisualInput(
            kinds=tuple(kinds),
            indices=tuple(indices),
            frames=torch.from_numpy(np.ascontiguousarray(self.rgb[frames])),
            mv=torch.from_numpy(self.mv_halfpel[mvs].astype(np.float32) * 0.5),
            residual=torch.from_numpy(np.ascontiguousarray(self.residual[residuals])),
            source=str(self.source),
            fps=self.fps,
        )


def nominal_gop(video, fusion: int) -> int:
    """The GOP length a ``CodecVideo``'s plans use: its GOP rounded up to whole fusion windows."""
    return -(-video.gop_size // fusion) * fusion


def visual_input_from_cache(entry: SlotEntry, keyframes_per_gop: int | Literal["dense"]):
    """The ``VisualInput`` of the K-keyframes-per-GOP plan (or ``"dense"``: every slot RGB).

    Equal, array for array, to ``VisualInput.from_entries(video.entries(video.plan(fusion, K)), H, W, fps)``
    on the raw video; iframes-only is ``.without_deltas()`` of the result.
    """
    return entry.visual_input(entry.plan(keyframes_per_gop))


# --- the directory: settings, manifest, shards ------------------------------------------------


def read_cache_info(directory: Path) -> CacheSettings | None:
    """The settings a cache directory was made with, or None if it holds no cache yet."""
    path = directory / CACHE_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        version = info["version"]
        settings = CacheSettings.from_dict(info["settings"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CopeInputError(f"{path}: not a cope cache description ({exc})") from exc
    if version != CACHE_FORMAT_VERSION:
        raise CopeInputError(f"{path}: cache format {version}, this cope reads {CACHE_FORMAT_VERSION}")
    return settings


def write_cache_info(directory: Path, settings: CacheSettings) -> None:
    atomic_write_bytes(
        directory / CACHE_INFO,
        json.dumps({"version": CACHE_FORMAT_VERSION, "settings": settings.to_dict()}, indent=1).encode(),
    )


def read_manifest(directory: Path) -> list[dict]:
    """Every complete manifest line, in order. A torn last line (a killed writer) is ignored."""
    path = directory / MANIFEST
    if not path.exists():
        return []
    records = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # only the last line can be torn: appends are sequential
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise CopeInputError(f"{path}: line {len(records) + 1} is not JSON") from exc
    return records


class ManifestWriter:
    """Appends manifest lines, each flushed and fsynced before the next video is recorded.

    On open, a torn last line left by a killed run is cut off, so appends start on a line boundary.
    """

    def __init__(self, directory: Path):
        self.path = directory / MANIFEST
        self.path.touch()
        with open(self.path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                f.truncate(keep)
        self.file = open(self.path, "ab")

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.file.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def latest_records(records: list[dict]) -> dict[str, dict]:
    """The last manifest line per source: a later attempt supersedes an earlier one."""
    return {r["source"]: r for r in records}


def member_data_offset(shard: Path, header_offset: int) -> int:
    """Byte offset of a stored zip member's data: after its 30-byte local header, name and extra."""
    with open(shard, "rb") as f:
        f.seek(header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{shard}: no zip local header at byte {header_offset}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return header_offset + 30 + name_length + extra_length


class SlotCache:
    """Read side: index the manifest once, then open any entry by source path or id.

    Reading an entry is one ``seek`` + ``read`` of its bytes in the shard (no zip directory scan),
    then ``np.load`` of those bytes. Safe to use from DataLoader worker processes: no file handle
    is kept open between reads.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CopeInputError(f"{self.directory}: no such cache directory")
        settings = read_cache_info(self.directory)
        if settings is None:
            raise CopeInputError(f"{self.directory}: not a cope cache (no {CACHE_INFO})")
        self.settings = settings
        latest = latest_records(read_manifest(self.directory))
        self.records = latest  # source → its latest manifest line
        self.by_id = {r["id"]: r for r in latest.values()}
        self._by_real_path: dict[str, dict] | None = None  # built on the first miss (record())

    def __len__(self) -> int:
        return sum(r["status"] == "ok" for r in self.records.values())

    def record(self, path_or_id: str | os.PathLike) -> dict | None:
        """The latest manifest line of a video (by source path or id), or None if never attempted.

        Sources are keyed by their absolute path as listed at preprocessing. A path that misses is
        tried once more with symlinks resolved on both sides, so a video read through a linked or
        renamed-and-linked folder still finds its entry instead of being decoded again.
        """
        text = os.fspath(path_or_id)
        found = self.by_id.get(text) or self.records.get(source_key(text))
        if found is not None:
            return found
        if self._by_real_path is None:
            self._by_real_path = {os.path.realpath(source): r for source, r in self.records.items()}
        return self._by_real_path.get(os.path.realpath(source_key(text)))

    def entry(self, path_or_id: str | os.PathLike) -> SlotEntry:
        """Load a cached video. ``CopeInputError`` if it is not cached or its preprocessing failed."""
        record = self.record(path_or_id)
        if record is None:
            raise CopeInputError(f"{path_or_id}: not in the cache {self.directory}")
        if record["status"] != "ok":
            raise CopeInputError(f"{record['source']}: preprocessing failed: {record['reason']}")
        shard = self.directory / record["shard"]
        with open(shard, "rb") as f:
            f.seek(record["offset"])
            data = f.read(record["length"])
        if len(data) != record["length"]:
            raise CopeInputError(f"{shard}: truncated (entry of {record['source']} is incomplete)")
        with np.load(io.BytesIO(data)) as npz:
            return SlotEntry.from_npz(record["source"], npz, self.settings.canonical.fps)


# --- write side: one video's entry, and shards of many entries --------------------------------


def write_entry(video, settings: CacheSettings, path: Path) -> dict:
    """Extract every slot of ``video`` (a ``CodecVideo``) into an entry file at ``path``.

    Streams frame by frame (``NpzStreamWriter`` spools to disk), so memory stays bounded by a few
    frames whatever the video length; the file appears only when complete. Returns the entry's
    summary for the manifest.
    """
    plan = video.plan(fusion=settings.fusion, keyframes_per_gop=1, max_gops=settings.max_gops)
    height, width = video.info.height, video.info.width
    arrays = {
        "slot_index": ((), np.int64),
        "slot_gop": ((), np.int64),
        "rgb": ((height, width, 3), np.uint8),
        "has_delta": ((), np.bool_),
        "mv_halfpel": ((height, width, 2), np.int16),
        "residual": ((height, width, 3), np.int16),
        "gop_starts": ((), np.int64),
        "num_frames": ((), np.int64),
        "gop_size": ((), np.int64),
        "fusion": ((), np.int64),
    }
    slots = 0
    with NpzStreamWriter(path, arrays, compresslevel=COMPRESS_LEVEL) as writer:
        for entry in video.entries(plan, with_rgb=True):
            writer.append("slot_index", entry.index)
            writer.append("slot_gop", entry.gop)
            writer.append("rgb", entry.rgb)
            writer.append("has_delta", not isinstance(entry, IFrame))
            if not isinstance(entry, IFrame):
                writer.append("mv_halfpel", half_pel(entry.mv, f"frame {entry.index}"))
                writer.append("residual", entry.residual)
            slots += 1
        for start in video.scan.gop_starts:
            writer.append("gop_starts", start)
        writer.append("num_frames", video.scan.num_frames)
        writer.append("gop_size", nominal_gop(video, settings.fusion))
        writer.append("fusion", settings.fusion)
    return {
        "frames": video.scan.num_frames,
        "duration_s": round(video.scan.num_frames / video.info.fps, 6),
        "slots": slots,
        "gops": len(plan.gops),
        "width": width,
        "height": height,
    }


SHARD_PATTERN = "shard-*.zip"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.zip"


class ShardWriter:
    """Packs entry files into zip shards (stored: the entries are compressed already).

    A shard is written under a hidden ``.partial`` name and renamed when it reaches
    ``target_bytes`` or on ``close``; only then are its entries returned for the manifest, so a
    manifest line never points into an incomplete file. Shard numbers continue after the highest
    existing one: a shard file is never overwritten.
    """

    def __init__(self, directory: Path, target_bytes: int):
        self.directory = directory
        self.target_bytes = target_bytes
        numbers = [int(p.stem.split("-")[1]) for p in directory.glob(SHARD_PATTERN)]
        self.next_number = max(numbers, default=-1) + 1
        self.archive = None
        self.partial: Path | None = None
        self.pending: list[dict] = []
        self.size = 0
        self.shards_written = 0
        self.bytes_added = 0  # entry bytes added by this writer, published or not

    def add(self, entry_path: Path, record: dict) -> list[dict]:
        """Move one entry file into the current shard. Returns the records of a shard it completed."""
        if self.archive is None:
            self.partial = self.directory / f".{shard_name(self.next_number)}.partial"
            self.archive = zipfile.ZipFile(self.partial, "w", zipfile.ZIP_STORED)
        member = f"{record['id']}.npz"
        self.archive.write(entry_path, arcname=member)
        info = self.archive.getinfo(member)
        self.pending.append(
            {**record, "member": member, "length": info.compress_size, "_header": info.header_offset}
        )
        self.size += info.compress_size
        self.bytes_added += info.compress_size
        entry_path.unlink()
        return self.finish_shard() if self.size >= self.target_bytes else []

    def finish_shard(self) -> list[dict]:
        """Close and publish the current shard; its records now carry shard name and byte offsets."""
        if self.archive is None:
            return []
        self.archive.close()
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        final = self.directory / shard_name(self.next_number)
        os.replace(self.partial, final)
        records = []
        for record in self.pending:
            header = record.pop("_header")
            records.append({**record, "shard": final.name, "offset": member_data_offset(final, header)})
        self.archive, self.partial, self.pending, self.size = None, None, [], 0
        self.next_number += 1
        self.shards_written += 1
        return records

    def abort(self) -> None:
        """Drop the shard in progress (its videos are not in the manifest, so a rerun redoes them)."""
        if self.archive is not None:
            self.archive.close()
            self.partial.unlink(missing_ok=True)
            self.archive = None
