"""Stage-2 instruction data: LLaVA-Video-178K / LLaVA-NeXT records, data mixes, and the dataset.

A record (JSON list or JSONL, one object per line)::

    {"id": "v_abc_0", "video": "academic/v_abc.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nWhat happens?"},
                       {"from": "gpt", "value": "A dog runs."}, ...]}

becomes ``{"id", "video", "conversation": [{"role": "user"|"assistant"|"system", "content"}]}`` with
the video placeholder normalised to ``VIDEO_PLACEHOLDER`` exactly once, in the first user turn
(``<image>`` and ``<video>`` are both accepted; a conversation without one gets it prepended, as
LLaVA's own preprocessing does).

A data mix (YAML) lists sources, each a record file, the folder its ``video`` paths are relative
to, and a ratio; relative paths are relative to the YAML file::

    sources:
      - {path: llava_video_178k/0_30_s_academic.json, video_root: videos/academic, ratio: 1.0}
      - {path: nextqa.jsonl, video_root: videos/nextqa, ratio: 0.5}

**Ratios.** Per epoch, a source with n records and ratio r contributes every record floor(r)
times, plus round((r − floor(r))·n) distinct records drawn without replacement with
``numpy.random.default_rng([seed, epoch, position of the source in the mix])``: r = 1 is every
record once, 0.5 a different random half each epoch, 2.5 every record twice plus half. The dataset
lists sources in mix order and does not shuffle: that is the sampler's job (``DataLoader(shuffle=
True)`` or a ``DistributedSampler``). Call ``set_epoch`` as you do on the sampler.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cope.codec.canonical import CanonicalSettings
from cope.errors import CopeInputError
from cope.model.inputs import VisualInput
from cope.plan import (
    DEFAULT_FUSION,
    MAX_GOPS,
    PlanEntry,
    TokenPlan,
    gop_bounds,
    keyframe_spacing,
    select_gops,
)

log = logging.getLogger(__name__)

VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDERS = ("<image>", "<video>")  # LLaVA writes <image> for videos too
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
PAPER_STAGE2_KEYFRAMES = 4  # paper App. C: stage 2 trains with 4 keyframes + 4 P-frames per GOP


# --- records ------------------------------------------------------------------------------------


def normalise_record(raw, where: str) -> dict:
    """One LLaVA record → ``{"id", "video", "conversation"}``; ``CopeInputError`` says what is wrong."""
    if not isinstance(raw, dict):
        raise CopeInputError(f"{where}: expected an object, got {type(raw).__name__}")
    ident = str(raw.get("id", where))
    video = raw.get("video")
    if not isinstance(video, str) or not video:
        raise CopeInputError(f"{where} (id {ident}): no 'video' path")
    turns = raw.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise CopeInputError(f"{where} (id {ident}): 'conversations' must be a non-empty list")
    conversation = []
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ROLES
            or not isinstance(turn.get("value"), str)
        ):
            raise CopeInputError(
                f"{where} (id {ident}): every turn needs 'from' (human, gpt or system) and a string 'value'"
            )
        conversation.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    check_turn_order(conversation, f"{where} (id {ident})")
    return {"id": ident, "video": video, "conversation": place_video(conversation, f"{where} (id {ident})")}


def check_turn_order(conversation: list[dict], where: str) -> None:
    """[system], then user/assistant alternating, starting with user and ending with assistant."""
    roles = [t["role"] for t in conversation]
    if roles[0] == "system":
        roles = roles[1:]
    expected = ["user", "assistant"] * (len(roles) // 2)
    if not roles or roles != expected:
        raise CopeInputError(f"{where}: turns must alternate human/gpt, starting with human, ending with gpt")


def place_video(conversation: list[dict], where: str) -> list[dict]:
    """Normalise the placeholder to ``VIDEO_PLACEHOLDER``, exactly once, in the first user turn."""
    counts = [sum(t["content"].count(p) for p in PLACEHOLDERS) for t in conversation]
    first_user = next(i for i, t in enumerate(conversation) if t["role"] == "user")
    if sum(counts) > 1 or (sum(counts) == 1 and counts[first_user] != 1):
        raise CopeInputError(f"{where}: the video placeholder must appear once, in the first human turn")
    out = [dict(t) for t in conversation]
    turn = out[first_user]
    if counts[first_user] == 0:
        turn["content"] = f"{VIDEO_PLACEHOLDER}\n{turn['content']}"
    else:
        for placeholder in PLACEHOLDERS:
            turn["content"] = turn["content"].replace(placeholder, VIDEO_PLACEHOLDER)
    return out


def load_records(path: str | os.PathLike) -> list[dict]:
    """Normalised records of a ``.json`` (a list) or ``.jsonl`` (one object per line) file."""
    path = Path(path)
    if not path.is_file():
        raise CopeInputError(f"{path}: no such instruction file")
    try:
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            raws = [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(lines, 1) if line.strip()]
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise CopeInputError(f"{path}: expected a JSON list of records")
            raws = [(f"{path}[{i}]", raw) for i, raw in enumerate(data)]
    except (ValueError, UnicodeDecodeError) as exc:
        raise CopeInputError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from exc
    if not raws:
        raise CopeInputError(f"{path}: holds no records")
    return [normalise_record(raw, where) for where, raw in raws]


class RecordStore:
    """Records serialised into one byte buffer + offsets.

    A Python list of 1.4M dicts grows in every DataLoader worker (reference counting touches the
    pages copy-on-write would share); two numpy arrays do not.
    """

    def __init__(self, records: Iterable[dict]):
        blobs = [json.dumps(r).encode() for r in records]
        self.offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        return json.loads(self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes())


# --- the data mix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixSource:
    """One record file of a data mix."""

    path: Path  # .json or .jsonl records
    video_root: Path  # folder the records' relative ``video`` paths start from
    ratio: float = 1.0  # per-epoch share: floor(ratio) full passes + a random fraction (module doc)


MIX_KEYS = {"path", "video_root", "ratio"}


def load_mix(path: str | os.PathLike) -> list[MixSource]:
    """Read a data-mix YAML (``sources:`` list of ``path``, ``video_root``, ``ratio``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CopeInputError(f"{path}: no such data-mix file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CopeInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list) or not data["sources"]:
        raise CopeInputError(f"{path}: expected a mapping with a non-empty 'sources' list")
    sources = []
    for n, item in enumerate(data["sources"]):
        where = f"{path}: sources[{n}]"
        if not isinstance(item, dict) or "path" not in item:
            raise CopeInputError(f"{where}: needs at least 'path'")
        unknown = set(item) - MIX_KEYS
        if unknown:
            raise CopeInputError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(MIX_KEYS)})")
        ratio = item.get("ratio", 1.0)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < math.inf:
            raise CopeInputError(f"{where}: ratio must be a number ≥ 0, got {ratio!r}")
        record_file = path.parent / os.path.expanduser(str(item["path"]))
        video_root = path.parent / os.path.expanduser(str(item.get("video_root", ".")))
        sources.append(MixSource(record_file, video_root, float(ratio)))
    return sources


def epoch_indices(sizes: list[int], ratios: list[float], seed: int, epoch: int) -> list[np.ndarray]:
    """Per source, the record indices one epoch uses (see the module doc for the rule)."""
    out = []
    for position, (n, ratio) in enumerate(zip(sizes, ratios, strict=True)):
        whole = math.floor(ratio)
        extra = round((ratio - whole) * n)
        rng = np.random.default_rng([seed, epoch, position])
        subset = np.sort(rng.choice(n, size=extra, replace=False)) if extra else np.zeros(0, np.int64)
        out.append(np.concatenate([np.tile(np.arange(n), whole), subset]).astype(np.int64))
    return out


# --- which frames a sample sees -------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """The training recipe's token plan per video (paper stage 2: 4 kf + 4 P per GOP, s = 30).

    Without jitter the plan is exactly ``CodecVideo.plan(fusion, keyframes_per_gop, max_gops)``.
    """

    keyframes_per_gop: int | Literal["dense"] = PAPER_STAGE2_KEYFRAMES  # K; "dense" = every slot RGB
    fusion: int = DEFAULT_FUSION  # s, frames between slots (30 → 1 FPS)
    max_gops: int = MAX_GOPS  # GOP cap; longer videos keep max_gops GOPs
    # Beyond the cap, pick one random GOP in each of max_gops equal strata instead of evenly spaced.
    gop_jitter: bool = False
    # Slot 0 stays the I-frame; the other K − 1 keyframes are random slots instead of every
    # (slots/K)-th. P slots still take their Δ against the previous slot.
    keyframe_jitter: bool = False
    # Draw K for every sample uniformly from these (e.g. (1, 2, 4), so one model serves every K);
    # empty: always keyframes_per_gop.
    keyframes_choices: tuple[int, ...] = ()
    # Keep only the keyframes (the "iframes-only" mode: LLaVA-Video at matched keyframes).
    iframes_only: bool = False

    def keyframes(self, gop_size: int) -> int:
        return gop_size // self.fusion if self.keyframes_per_gop == "dense" else int(self.keyframes_per_gop)

    def plan(
        self,
        num_frames: int,
        gop_starts: list[int],
        gop_size: int,
        available_gops: list[int] | None = None,
        rng: np.random.Generator | None = None,
    ) -> TokenPlan:
        """The plan over ``available_gops`` (default: all; a cache may hold fewer). ``rng`` drives jitter."""
        if (self.gop_jitter or self.keyframe_jitter or self.keyframes_choices) and rng is None:
            raise ValueError("jittered sampling needs a random generator")
        count = (
            int(rng.choice(self.keyframes_choices)) if self.keyframes_choices else self.keyframes(gop_size)
        )
        spacing = keyframe_spacing(gop_size, self.fusion, count)
        bounds = gop_bounds(num_frames, gop_starts)
        available = list(range(len(bounds))) if available_gops is None else list(available_gops)
        entries = []
        for gop in self.choose_gops(available, rng):
            start, end = bounds[gop]
            indices = range(start, end, self.fusion)
            keyframes = self.keyframe_slots(len(indices), spacing, rng)
            for slot, index in enumerate(indices):
                if slot in keyframes:
                    entries.append(PlanEntry("I", index, gop))
                else:
                    entries.append(PlanEntry("P", index, gop, ref_index=index - self.fusion))
        plan = TokenPlan(tuple(entries))
        return plan.keyframes_only() if self.iframes_only else plan

    def choose_gops(self, available: list[int], rng: np.random.Generator | None) -> list[int]:
        if len(available) <= self.max_gops:
            return available
        if not self.gop_jitter:
            return [available[i] for i in select_gops(len(available), self.max_gops)]
        edges = np.linspace(0, len(available), self.max_gops + 1).astype(np.int64)
        return [available[int(rng.integers(a, b))] for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def keyframe_slots(self, slots: int, spacing: int, rng: np.random.Generator | None) -> set[int]:
        regular = set(range(0, slots, spacing))
        if not self.keyframe_jitter:
            return regular
        extra = rng.choice(np.arange(1, slots), size=len(regular) - 1, replace=False)
        return {0, *(int(s) for s in extra)}


# --- the dataset ----------------------------------------------------------------------------------


@dataclass
class InstructDataConfig:
    """How the dataset turns a record's video into a ``VisualInput``."""

    sampling: Sampling = field(default_factory=Sampling)
    cache_dir: str | None = None  # a `cope preprocess` cache; None: decode every raw video
    canonical: CanonicalSettings = field(default_factory=CanonicalSettings)  # must match the cache's
    transcode_cache: str | None = None  # open_video's transcode cache for raw videos (None: ~/.cache/cope)
    seed: int = 0  # ratio subsets and jitter are functions of (seed, epoch, index)
    max_consecutive_failures: int = 32  # more bad videos in a row than this is a data error


@dataclass
class InstructSample:
    id: str
    video: str  # the resolved video path
    conversation: list[dict]  # [{"role", "content"}], VIDEO_PLACEHOLDER once in the first user turn
    visual: VisualInput
    plan: TokenPlan
    skipped: tuple[tuple[str, str], ...] = ()  # (video, reason) of samples skipped to reach this one


class InstructionDataset(torch.utils.data.Dataset):
    """Records of a data mix with their videos, read from a slot cache or decoded from the file.

    ``dataset[i]`` is an ``InstructSample``. A missing or undecodable video is never fatal: the
    dataset logs it, counts it (``failures``, per process; and ``sample.skipped``, which the
    collator gathers into the batch so the training loop sees every skip) and returns the next
    valid record instead. Only ``max_consecutive_failures`` bad videos in a row raise, since that
    means the data (or a path setting) is broken, not one file.
    """

    def __init__(self, sources: list[MixSource], config: InstructDataConfig | None = None):
        self.config = config or InstructDataConfig()
        self.sources = sources
        self.stores = [RecordStore(load_records(s.path)) for s in sources]
        self.cache = self.open_cache()
        self.failures: Counter = Counter()  # reason → count, in this process
        self.bad_videos: dict[str, str] = {}  # video → reason, so a bad file is tried once per process
        self.cache_misses = 0  # videos decoded from the file although a cache is configured
        self.set_epoch(0)

    def open_cache(self):
        if self.config.cache_dir is None:
            return None
        from cope.data.cache import SlotCache

        cache = SlotCache(self.config.cache_dir)
        settings, sampling = cache.settings, self.config.sampling
        if settings.canonical != self.config.canonical or settings.fusion != sampling.fusion:
            raise CopeInputError(
                f"{self.config.cache_dir}: cache made with {settings.to_dict()}, but the dataset asks for "
                f"canonical {self.config.canonical} and fusion {sampling.fusion}"
            )
        if sampling.max_gops > settings.max_gops:
            raise CopeInputError(
                f"{self.config.cache_dir}: cache keeps {settings.max_gops} GOPs per video, "
                f"sampling asks for {sampling.max_gops}"
            )
        return cache

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's ratio subsets (deterministic in seed and epoch)."""
        self.epoch = epoch
        sizes = [len(s) for s in self.stores]
        per_source = epoch_indices(sizes, [s.ratio for s in self.sources], self.config.seed, epoch)
        self.index = np.concatenate(
            [np.stack([np.full(len(ix), n), ix], axis=1) for n, ix in enumerate(per_source)]
        ).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> tuple[dict, Path]:
        source, row = (int(v) for v in self.index[i])
        record = self.stores[source][row]
        return record, self.sources[source].video_root / record["video"]

    def __getitem__(self, i: int) -> InstructSample:
        skipped = []
        for attempt in range(self.config.max_consecutive_failures):
            j = (i + attempt) % len(self)
            record, video = self.record(j)
            rng = np.random.default_rng([self.config.seed, self.epoch, j])
            try:
                visual, plan = self.load_visual(str(video), rng)
            except Exception as exc:  # any failure belongs to this video: skip it, count it
                reason = self.skip(str(video), exc)
                skipped.append((str(video), reason))
                continue
            return InstructSample(
                record["id"], str(video), record["conversation"], visual, plan, tuple(skipped)
            )
        raise CopeInputError(
            f"{len(skipped)} consecutive videos failed to load (last: {skipped[-1][0]}: {skipped[-1][1]}); "
            "check the data mix's video_root and the cache"
        )

    def skip(self, video: str, exc: Exception) -> str:
        from cope.data.preprocess import one_line_reason

        reason = self.bad_videos.get(video) or one_line_reason(video, exc)
        self.bad_videos[video] = reason
        self.failures[reason] += 1
        log.warning("skipping %s: %s (%d skipped in this process)", video, reason, self.failures.total())
        return reason

    def load_visual(self, video: str, rng: np.random.Generator):
        """(VisualInput, TokenPlan) of one video: from the cache when it has the video, else decoded."""
        if video in self.bad_videos:
            raise CopeInputError(self.bad_videos[video])
        sampling = self.config.sampling
        if self.cache is not None and self.cache.record(video) is not None:
            entry = self.cache.entry(video)  # a video that failed preprocessing raises here
            plan = sampling.plan(
                entry.num_frames, entry.gop_starts, entry.gop_size, available_gops=entry.cached_gops, rng=rng
            )
            return entry.visual_input(plan), plan
        from cope.codec.extract import open_video
        from cope.data.cache import nominal_gop

        if self.cache is not None and not self.cache_misses:
            log.warning("%s: not in the cache, decoding the video (later misses are only counted)", video)
        self.cache_misses += self.cache is not None
        opened = open_video(video, self.config.canonical, cache_dir=self.config.transcode_cache)
        scan = opened.scan
        plan = sampling.plan(scan.num_frames, scan.gop_starts, nominal_gop(opened, sampling.fusion), rng=rng)
        visual = VisualInput.from_entries(
            opened.entries(plan), opened.info.height, opened.info.width, opened.info.fps
        )
        return visual, plan
