"""Stage-1 frame pairs: (reference frame t − s, fused motion + residual t − s → t, target frame t).

Every slot of the K = 1 plan (I-frame, then one fused P-frame every s frames) is a frame; every
slot but a GOP's first is a pair with the slot before it. The pairs of a video come from the codec
engine (``CodecVideo.entries(plan, with_rgb=True)``) or, when a ``cope preprocess`` slot cache
exists, from its entries without decoding. They are stored once per video in a **pair store**,
uncompressed safetensors that a dataset reads row by row (memory-mapped), in any order:

    STORE/<settings key>/<video key>.safetensors
        slot_index (n,) int64      display index of each slot
        rgb        (n, H, W, 3) uint8
        delta_slot (m,) int64      the slot (row) each pair's target is; its reference is the row before
        mv_halfpel (m, H, W, 2) int16   fused motion × 2 (exact: codec vectors are half-pel)
        residual   (m, H, W, 3) int16
    STORE/<settings key>/features-<encoder key>/<video key>.safetensors
        tokens     (n, T, d)       the frozen vision tower's tokens of every slot (feature cache)

The settings key covers the canonical stream, the fusion and the GOP cap; the video key covers
the path, size and modification time; the encoder key covers the tower's config and weights, the
feature layer, the token grid and the stored dtype. Files are written under a temporary name and
renamed, so a killed build never leaves a half file, and a rerun only does what is missing.
Under DDP each process builds the videos ``i ≡ rank (mod processes)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from cope.codec.canonical import CanonicalSettings
from cope.errors import CopeInputError
from cope.hub import save_safetensors

VIDEO_SUFFIXES = {
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".avi",
    ".webm",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".wmv",
    ".gif",
}
FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class PairDataConfig:
    """Where stage-1 pairs come from and how they are stored: the ``data`` section of a config."""

    videos: str = ""  # a folder of videos, a glob pattern, or a list file (one path per line)
    # Held-out videos for evaluation (same forms). Empty: hold out eval_fraction of
    # ``videos`` (chosen by a hash of each path, so the split never changes with the order).
    eval_videos: str = ""
    eval_fraction: float = 0.1
    store_dir: str = "~/.cache/cope/pairs"  # the pair store (shared by runs with the same settings)
    slot_cache: str = ""  # a `cope preprocess` cache to read slots from instead of decoding
    transcode_cache: str = ""  # canonical-stream cache (default: ~/.cache/cope, or $COPE_CACHE_DIR)
    fusion: int = 30  # s: frames between the reference and the target (30 = 1 s at 30 fps)
    max_gops: int = 64  # GOPs per video (uniformly spread beyond)
    # The canonical stream (defaults: the paper's, ``CanonicalSettings``).
    fps: int = CanonicalSettings.fps
    gop: int = CanonicalSettings.gop
    width: int = CanonicalSettings.width
    height: int = CanonicalSettings.height
    quantizer: int = CanonicalSettings.quantizer
    # Feature cache: compute the tower's tokens of every slot once (fast training, disk cost
    # n·T·d per video) instead of running the tower on both frames of every pair, every step.
    precompute_features: bool = True
    feature_dtype: str = "float32"  # float32 | float16 | bfloat16 (stored tokens)
    feature_batch_size: int = 32  # frames per vision-tower call when computing features

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(
                f"data.feature_dtype must be one of {list(FEATURE_DTYPES)}, got {self.feature_dtype!r}"
            )

    def canonical(self) -> CanonicalSettings:
        return CanonicalSettings(self.fps, self.gop, self.width, self.height, self.quantizer)

    def settings_key(self) -> str:
        # Pairs always come from the canonical stream: leaving CanonicalSettings.codec out keeps
        # the key (and the stores built before that field existed) unchanged.
        canonical = {k: v for k, v in asdict(self.canonical()).items() if k != "codec"}
        settings = {"canonical": canonical, "fusion": self.fusion, "max_gops": self.max_gops}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def store(self) -> Path:
        return Path(os.path.expanduser(self.store_dir)) / self.settings_key()


# --------------------------------------------------------------------------------------------
# Video lists and the held-out split


def list_videos(spec: str | Path) -> list[Path]:
    """A folder (its video files), a glob pattern (``videos/train-*.mp4``) or a list file → paths."""
    import glob

    from cope.data.preprocess import read_video_list

    text = os.path.expanduser(str(spec))
    if not text:
        raise CopeInputError("data.videos: no videos given (a folder, a glob pattern or a list file)")
    path = Path(text)
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise CopeInputError(f"{path}: folder holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
        return videos
    if glob.has_magic(text):
        videos = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not videos:
            raise CopeInputError(f"{text}: the pattern matches no files")
        return videos
    return [Path(p) for p in read_video_list(path)]


def split_videos(videos: list[Path], eval_fraction: float) -> tuple[list[Path], list[Path]]:
    """Hold out ``eval_fraction`` of the videos (at least one when there are two or more)."""
    if eval_fraction == 0 or len(videos) < 2:
        return videos, []
    ranked = sorted(videos, key=lambda p: hashlib.sha256(str(Path(p).resolve()).encode()).hexdigest())
    count = min(len(videos) - 1, max(1, round(eval_fraction * len(videos))))
    held = set(ranked[:count])
    return [v for v in videos if v not in held], [v for v in videos if v in held]


def video_key(path: Path) -> str:
    """Path + size + modification time: a changed file gets a new store entry."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise CopeInputError(f"{path}: cannot read ({exc.strerror})") from exc
    text = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_file(config: PairDataConfig, path: Path) -> Path:
    return config.store() / f"{video_key(path)}.safetensors"


# --------------------------------------------------------------------------------------------
# Building the store


def _slots_from_codec(video_path: Path, config: PairDataConfig) -> dict[str, np.ndarray]:
    from cope.codec.extract import open_video
    from cope.codec.primitives import IFrame

    video = open_video(video_path, config.canonical(), cache_dir=config.transcode_cache or None)
    try:
        plan = video.plan(fusion=config.fusion, keyframes_per_gop=1, max_gops=config.max_gops)
    except ValueError as exc:
        raise CopeInputError(f"{video_path}: {exc}") from exc
    slot_index, rgb, delta_slot, mv, residual = [], [], [], [], []
    for entry in video.entries(plan, with_rgb=True):
        if not isinstance(entry, IFrame):
            if not slot_index or slot_index[-1] != entry.ref_index:
                raise RuntimeError(f"{video_path}: P-frame {entry.index} does not follow its reference")
            delta_slot.append(len(slot_index))
            mv.append(np.rint(entry.mv * 2).astype(np.int16))
            residual.append(entry.residual)
        slot_index.append(entry.index)
        rgb.append(entry.rgb)
    return _stack_slots(slot_index, rgb, delta_slot, mv, residual, video.info.height, video.info.width)


def _slots_from_cache(video_path: Path, cache) -> dict[str, np.ndarray]:
    entry = cache.entry(video_path)
    rows = np.flatnonzero(entry.has_delta)
    return {
        "slot_index": entry.slot_index.astype(np.int64),
        "rgb": entry.rgb,
        "delta_slot": rows.astype(np.int64),
        "mv_halfpel": entry.mv_halfpel,
        "residual": entry.residual,
    }


def _stack_slots(slot_index, rgb, delta_slot, mv, residual, height, width) -> dict[str, np.ndarray]:
    def stack(arrays, shape, dtype):
        return np.stack(arrays).astype(dtype) if arrays else np.zeros((0, *shape), dtype)

    return {
        "slot_index": np.asarray(slot_index, np.int64),
        "rgb": stack(rgb, (height, width, 3), np.uint8),
        "delta_slot": np.asarray(delta_slot, np.int64),
        "mv_halfpel": stack(mv, (height, width, 2), np.int16),
        "residual": stack(residual, (height, width, 3), np.int16),
    }


def _open_slot_cache(config: PairDataConfig):
    if not config.slot_cache:
        return None
    from cope.data.cache import CacheSettings, SlotCache

    cache = SlotCache(os.path.expanduser(config.slot_cache))
    wanted = CacheSettings(config.canonical(), config.fusion, config.max_gops)
    if cache.settings != wanted:
        raise CopeInputError(
            f"{cache.directory}: slot cache made with {cache.settings.to_dict()}, the data config asks for "
            f"{wanted.to_dict()}"
        )
    return cache


def build_pair_store(
    videos: list[Path], config: PairDataConfig, rank: int = 0, world: int = 1, progress: bool = True
) -> dict[Path, str]:
    """Make sure every video has its store file; return {video: failure reason} for the ones that fail.

    Process ``rank`` of ``world`` builds the videos at positions ≡ rank (mod world); the others'
    files are expected to appear (call a barrier before reading them).
    """
    from tqdm import tqdm

    store = config.store()
    store.mkdir(parents=True, exist_ok=True)
    cache = _open_slot_cache(config)
    failures: dict[Path, str] = {}
    todo = []
    for i, path in enumerate(videos):
        if i % world != rank:
            continue
        try:
            if not store_file(config, path).exists():
                todo.append(path)
        except CopeInputError as exc:
            failures[path] = str(exc)
    for path in tqdm(todo, desc="pairs", unit="video", file=sys.stderr, disable=not progress or not todo):
        try:
            arrays = _slots_from_cache(path, cache) if cache else _slots_from_codec(path, config)
        except CopeInputError as exc:
            failures[path] = str(exc)
            continue
        tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
        save_safetensors(tensors, store / f"{video_key(path)}.safetensors", {"source": str(path)})
    return failures


def encoder_key(vision_tower: torch.nn.Module, feature_layer: int, target_grid: str, dtype: str) -> str:
    """Identity of the tokens a tower produces: config, every weight, layer, grid, stored dtype."""
    digest = hashlib.sha256()
    digest.update(vision_tower.config.to_json_string(use_diff=False).encode())
    digest.update(f"|{feature_layer}|{target_grid}|{dtype}|".encode())
    for name, tensor in sorted(vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def feature_dir(config: PairDataConfig, key: str) -> Path:
    return config.store() / f"features-{key}"


@torch.no_grad()
def build_feature_cache(
    videos: list[Path],
    config: PairDataConfig,
    vision_tower: torch.nn.Module,
    key: str,
    target_grid: str,
    feature_layer: int,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> None:
    """Compute the tower's tokens of every slot of this process's share of the videos, once."""
    from tqdm import tqdm

    from cope.model.delta import frame_tokens

    out_dir = feature_dir(config, key)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = FEATURE_DTYPES[config.feature_dtype]
    mine = [v for i, v in enumerate(videos) if i % world == rank]
    todo = [v for v in mine if not (out_dir / f"{video_key(v)}.safetensors").exists()]
    for path in tqdm(todo, desc="features", unit="video", file=sys.stderr, disable=not progress or not todo):
        with safe_open(str(store_file(config, path)), "pt") as f:
            rgb = f.get_tensor("rgb")
        chunks = [
            frame_tokens(vision_tower, rgb[i : i + config.feature_batch_size], target_grid, feature_layer)
            for i in range(0, len(rgb), config.feature_batch_size)
        ]
        tokens = torch.cat(chunks).to("cpu", dtype).contiguous()
        save_safetensors(
            {"tokens": tokens}, out_dir / f"{video_key(path)}.safetensors", {"source": str(path)}
        )


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class VideoSlots:
    """One stored video, whole: for evaluation (retrieval needs every frame of a video)."""

    source: str
    slot_index: torch.Tensor  # (n,)
    rgb: torch.Tensor  # (n, H, W, 3) uint8
    delta_slot: torch.Tensor  # (m,)
    mv: torch.Tensor  # (m, H, W, 2) float32 pixels
    residual: torch.Tensor  # (m, H, W, 3) int16
    tokens: torch.Tensor | None  # (n, T, d) cached features, or None


def load_video_slots(store_file: Path, feature_file: Path | None) -> VideoSlots:
    with safe_open(str(store_file), "pt") as f:
        source = (f.metadata() or {}).get("source", str(store_file))
        arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no items()
    tokens = None
    if feature_file is not None:
        with safe_open(str(feature_file), "pt") as f:
            tokens = f.get_tensor("tokens")
    return VideoSlots(
        source=source,
        slot_index=arrays["slot_index"],
        rgb=arrays["rgb"],
        delta_slot=arrays["delta_slot"],
        mv=arrays["mv_halfpel"].float() * 0.5,
        residual=arrays["residual"],
        tokens=tokens,
    )


class FramePairDataset(torch.utils.data.Dataset):
    """Every (reference, Δ, target) pair of the given videos, read row by row from the store.

    An item is ``{"mv": (H, W, 2) float32, "residual": (H, W, 3) int16}`` plus either
    ``"reference_tokens"``/``"target_tokens"`` (T, d) from the feature cache or
    ``"reference_rgb"``/``"target_rgb"`` (H, W, 3) uint8 for on-the-fly features. Items are a pure
    function of the index (no randomness), as the training loop's exact resume requires.
    """

    def __init__(self, store_files: list[Path], feature_files: list[Path] | None = None):
        self.store_files = [str(p) for p in store_files]
        self.feature_files = [str(p) for p in feature_files] if feature_files is not None else None
        index = []
        for file_number, path in enumerate(self.store_files):
            with safe_open(path, "pt") as f:
                delta_slot = f.get_tensor("delta_slot")
            index += [(file_number, pair, int(slot)) for pair, slot in enumerate(delta_slot)]
        self.index = index

    @property
    def with_features(self) -> bool:
        return self.feature_files is not None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        file_number, pair, slot = self.index[i]
        with safe_open(self.store_files[file_number], "pt") as f:
            item = {
                "mv": f.get_slice("mv_halfpel")[pair].float() * 0.5,
                "residual": f.get_slice("residual")[pair],
            }
            if not self.with_features:
                frames = f.get_slice("rgb")[slot - 1 : slot + 1]
                item["reference_rgb"], item["target_rgb"] = frames[0], frames[1]
        if self.with_features:
            with safe_open(self.feature_files[file_number], "pt") as f:
                tokens = f.get_slice("tokens")[slot - 1 : slot + 1]
            item["reference_tokens"], item["target_tokens"] = tokens[0], tokens[1]
        return item


@dataclass
class PairSplit:
    """The store files of the training and the held-out videos (and their feature files)."""

    train_files: list[Path]
    eval_files: list[Path]
    train_features: list[Path] | None
    eval_features: list[Path] | None
    failures: dict[Path, str]

    def train_dataset(self) -> FramePairDataset:
        return FramePairDataset(self.train_files, self.train_features)

    def eval_dataset(self) -> FramePairDataset:
        return FramePairDataset(self.eval_files, self.eval_features)


def resolve_split(config: PairDataConfig) -> tuple[list[Path], list[Path]]:
    """The training and held-out video lists the config describes."""
    videos = list_videos(config.videos)
    if config.eval_videos:
        held = list_videos(config.eval_videos)
        held_keys = {Path(v).resolve() for v in held}
        return [v for v in videos if Path(v).resolve() not in held_keys], held
    return split_videos(videos, config.eval_fraction)


def _usable(config: PairDataConfig, paths: list[Path]) -> list[Path]:
    """The videos whose store file exists and holds at least one pair."""
    found = []
    for path in paths:
        try:
            file = store_file(config, path)
        except CopeInputError:
            continue
        if file.exists() and _has_pairs(file):
            found.append(path)
    return found


def prepare_pairs(
    config: PairDataConfig,
    accelerator=None,
    vision_tower: torch.nn.Module | None = None,
    target_grid: str = "pooled",
    feature_layer: int = -2,
    progress: bool = True,
) -> PairSplit:
    """Build whatever the store lacks (shared over processes), then describe the split.

    Videos that fail (unreadable, too short for one pair, …) are skipped and reported; an error
    is raised only when no training video is left.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    train_videos, eval_videos = resolve_split(config)
    failures = build_pair_store(train_videos + eval_videos, config, rank, world, progress)
    for path, reason in failures.items():  # each process reports the videos it tried
        print(f"cope: warning: skipping {path}: {reason}", file=sys.stderr)
    if accelerator is not None:
        accelerator.wait_for_everyone()

    train_videos, eval_videos = _usable(config, train_videos), _usable(config, eval_videos)
    if not train_videos:
        raise CopeInputError(
            f"{config.videos}: no training video yields a frame pair (fusion {config.fusion})"
        )
    key = None
    if config.precompute_features:
        if vision_tower is None:
            raise ValueError("precompute_features needs the vision tower")
        key = encoder_key(vision_tower, feature_layer, target_grid, config.feature_dtype)
        build_feature_cache(
            train_videos + eval_videos,
            config,
            vision_tower,
            key,
            target_grid,
            feature_layer,
            rank,
            world,
            progress,
        )
        if accelerator is not None:
            accelerator.wait_for_everyone()

    def files(paths):
        return [store_file(config, p) for p in paths]

    def features(paths):
        return [feature_dir(config, key) / f"{video_key(p)}.safetensors" for p in paths] if key else None

    return PairSplit(
        files(train_videos), files(eval_videos), features(train_videos), features(eval_videos), failures
    )


def _has_pairs(store_file: Path) -> bool:
    with safe_open(str(store_file), "pt") as f:
        return f.get_slice("delta_slot").get_shape()[0] > 0
