"""Where the server's videos come from and live: uploads, data: URLs, allow-listed local files.

Bytes and names are kept apart. A ``StoredVideo`` is the bytes, known by their SHA-256 and stored
once however many clients send them; a ``VideoFile`` is what one client named: its own random file
id, its own filename. So an uploader never learns another uploader's filename, or the name of an
allow-listed server file with the same bytes, and ids cannot be derived from content.

Uploaded and data: URL videos are written once to the server's private work directory
(``uploads/<sha256>.video``); their canonical streams go to ``canonical/`` (the codec engine's own
content-hash cache). Bytes are written only into space reserved first (``reserve``): evicting the
least recently used videos that no job holds, or refusing with 429 when even that cannot make room,
so uploads in flight never push the work directory past ``cache_max_bytes``. The whole work
directory is deleted at shutdown; one left behind by a killed server is deleted by the next server
started on the same ``--work-dir`` (its lock is free), never one a live server holds.
``file://`` videos are read in place, only from under the operator's ``--allow-dir`` directories,
and never deleted.

URL forms a ``video_url`` content part may carry:
- ``cope-file://<id>``: a video uploaded with ``POST /v1/files`` (``id`` = ``file-<32 random hex>``);
- ``data:video/<subtype>;base64,<bytes>``;
- ``file:///absolute/path`` under an allow-listed directory (403 otherwise);
- ``http(s)://``: refused with 400 (the server makes no outbound requests).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av

from cope.codec.canonical import CanonicalSettings, file_sha256, header_duration_s, open_video_stream
from cope.codec.extract import CodecVideo, open_video
from cope.errors import CopeInputError
from cope.serve.config import ServeSettings
from cope.serve.errors import APIError

FILE_ID_PREFIX = "file-"
FILE_URL_SCHEME = "cope-file://"
MAX_FILE_IDS = 10_000  # upload ids remembered; the oldest is forgotten first (its bytes may stay)
LOCK_NAME = "owner.lock"  # in each work directory: the owner's pid, flock-ed while it runs


@dataclass
class StoredVideo:
    """One video's bytes, by content hash: stored once, whoever sent them."""

    sha256: str
    path: Path  # the bytes: in the work directory (owned) or an allow-listed file (not owned)
    size: int
    owned: bool
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0  # jobs currently holding the video; held videos are never evicted
    summary: dict | None = None  # GOP/token summary (depends on the bytes only), computed once


@dataclass
class VideoFile:
    """A video as one client named it: an upload (with its own id), a data: URL or a file:// URL."""

    video: StoredVideo
    filename: str  # the name this client gave (never a server path, never another client's name)
    id: str = field(default_factory=lambda: FILE_ID_PREFIX + uuid.uuid4().hex)
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def sha256(self) -> str:
        return self.video.sha256

    @property
    def path(self) -> Path:
        return self.video.path

    @property
    def size(self) -> int:
        return self.video.size

    @property
    def summary(self) -> dict | None:
        return self.video.summary

    def file_object(self) -> dict:
        """OpenAI's file object, plus the video's GOP/token summary when it is known."""
        body = {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": "user_data",
            "status": "processed",
        }
        if self.summary is not None:
            body["video"] = self.summary
        return body


class VideoStore:
    """The server's videos: registry, limits, canonical streams and the disk budget."""

    def __init__(self, settings: ServeSettings, canonical: CanonicalSettings):
        self.settings = settings
        self.canonical_settings = canonical
        root = Path(settings.work_root or tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.removed_stale = remove_stale_work_dirs(root)
        self.work_dir = Path(tempfile.mkdtemp(prefix="cope-serve-", dir=root))
        self._owner_lock = lock_work_dir(self.work_dir)
        self.upload_dir = self.work_dir / "uploads"
        self.canonical_dir = self.work_dir / "canonical"
        self.upload_dir.mkdir()
        self.canonical_dir.mkdir()
        self.allow_dirs = tuple(Path(d).resolve(strict=True) for d in settings.allow_dirs)
        self._videos: dict[str, StoredVideo] = {}  # owned bytes by sha256; allow-listed by "local:<path>"
        self._files: dict[str, VideoFile] = {}  # uploads by file id
        self._local_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256
        self._reserved = 0  # bytes promised to uploads being written
        self._lock = threading.Lock()

    # ----- adding videos -------------------------------------------------------------------------

    def new_upload_file(self):
        """A temporary file in the work directory for an upload being received (inside a reservation)."""
        return tempfile.NamedTemporaryFile(dir=self.upload_dir, prefix=".part-", delete=False)

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Room for ``size`` more bytes within the budget while an upload is written.

        Least recently used videos that no job holds are evicted to make room; when they cannot, the
        upload is refused (429 ``storage_full``) before a byte is written.
        """
        with self._lock:
            self._evict(extra=size)
            if self._used_bytes() + size > self.settings.cache_max_bytes:
                raise APIError(
                    429,
                    "server busy: the video cache is full of videos in use; retry later",
                    code="storage_full",
                )
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size

    def add_file(self, temp_path: Path, sha256: str, filename: str) -> VideoFile:
        """Register a fully received upload (its bytes moved into place under their hash, once)."""
        size = temp_path.stat().st_size
        if size == 0:
            temp_path.unlink(missing_ok=True)
            raise APIError(400, f"{filename}: empty file", code="invalid_video")
        with self._lock:
            video = self._videos.get(sha256)
            if video is None:
                path = self.upload_dir / f"{sha256}.video"
                os.replace(temp_path, path)
                video = self._videos[sha256] = StoredVideo(sha256, path, size, owned=True)
            else:
                temp_path.unlink(missing_ok=True)
                video.last_used = time.monotonic()
            return self._register(VideoFile(video, filename))

    def _register(self, upload: VideoFile) -> VideoFile:
        """Give an upload its id (lock held)."""
        self._files[upload.id] = upload
        while len(self._files) > MAX_FILE_IDS:
            del self._files[next(iter(self._files))]
        return upload

    def add_bytes(self, data: bytes, filename: str, register: bool = True) -> VideoFile:
        """Store bytes received whole (a data: URL; ``register``: also give them a file id)."""
        if len(data) > self.settings.max_upload_bytes:
            raise self.too_large(len(data))
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._videos.get(sha256)
            if known is not None:
                known.last_used = time.monotonic()
                upload = VideoFile(known, filename)
                return self._register(upload) if register else upload
        with self.reserve(len(data)):
            with self.new_upload_file() as f:
                f.write(data)
            upload = self.add_file(Path(f.name), sha256, filename)
        if not register:
            with self._lock:
                self._files.pop(upload.id, None)
        return upload

    def too_large(self, size: int) -> APIError:
        return APIError(
            413,
            f"video too large: {size} bytes, the limit is {self.settings.max_upload_bytes} bytes",
            code="file_too_large",
        )

    # ----- resolving video_url parts ---------------------------------------------------------------

    def resolve_url(self, url: str) -> VideoFile:
        """The video a ``video_url`` URL names; raises ``APIError`` for anything not allowed."""
        lowered = url[:16].lower()
        if lowered.startswith(FILE_URL_SCHEME):
            return self.get(url[len(FILE_URL_SCHEME) :])
        if lowered.startswith("data:"):
            return self._from_data_url(url)
        if lowered.startswith("file:"):
            return self._from_local_file(url)
        if lowered.startswith(("http://", "https://")):
            raise APIError(
                400,
                "remote video URLs are not fetched by this server; upload the video with POST /v1/files "
                "and pass cope-file://<id>, or send a data:video/mp4;base64,... URL",
                code="unsupported_url",
                param="video_url",
            )
        scheme = url.split(":", 1)[0][:20] if ":" in url else "(none)"
        raise APIError(
            400, f"unsupported video URL scheme {scheme!r}", code="unsupported_url", param="video_url"
        )

    def get(self, file_id: str) -> VideoFile:
        with self._lock:
            upload = self._files.get(file_id)
            if upload is not None:
                upload.video.last_used = time.monotonic()
                return upload
        raise APIError(404, f"no file with id {file_id[:80]!r} (unknown or expired)", code="file_not_found")

    def _from_data_url(self, url: str) -> VideoFile:
        header, sep, payload = url.partition(",")
        if not sep or not header.lower().endswith(";base64"):
            raise APIError(400, "data: URLs must be base64 (data:video/mp4;base64,...)", code="invalid_video")
        mime = header[5:].split(";", 1)[0].lower()
        if not (mime.startswith("video/") or mime == "application/octet-stream"):
            raise APIError(400, f"data: URL has media type {mime!r}, expected video/*", code="invalid_video")
        if len(payload) * 3 // 4 > self.settings.max_upload_bytes + 2:
            raise self.too_large(len(payload) * 3 // 4)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise APIError(400, "data: URL payload is not valid base64", code="invalid_video") from exc
        return self.add_bytes(data, "data-url." + (mime.split("/", 1)[1] or "video"), register=False)

    def _from_local_file(self, url: str) -> VideoFile:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise APIError(400, "file:// URLs must name a local path (file:///...)", code="unsupported_url")
        if not self.allow_dirs:
            raise APIError(
                403,
                "file:// URLs are disabled on this server (the operator allows them with --allow-dir)",
                code="path_not_allowed",
            )
        raw = unquote(parts.path)
        if "\0" in raw:  # no file name holds a NUL; the OS would refuse it with a ValueError
            raise APIError(400, "file:// URL contains a NUL byte", code="invalid_request", param="video_url")
        try:
            path = Path(raw).resolve(strict=True)  # symlinks and '..' resolved before the check
        except (OSError, RuntimeError, ValueError):
            path = None
        if path is None or not any(path.is_relative_to(d) for d in self.allow_dirs):
            # The same answer whether the file exists or not: no probing of the file system.
            raise APIError(403, "file path is not under an allowed directory", code="path_not_allowed")
        if not path.is_file():
            raise APIError(400, f"{Path(raw).name}: not a regular file", code="invalid_video")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        sha256 = self._local_hashes.get(key) or file_sha256(path)
        with self._lock:
            self._local_hashes[key] = sha256
            video = self._videos.get(f"local:{path}")
            if video is None or video.sha256 != sha256:
                video = StoredVideo(sha256, path, stat.st_size, owned=False)
                self._videos[f"local:{path}"] = video
            video.last_used = time.monotonic()
            return VideoFile(video, path.name)

    # ----- using videos ----------------------------------------------------------------------------

    @contextmanager
    def hold(self, file: VideoFile) -> Iterator[VideoFile]:
        """Keep a video from being evicted while a job uses it."""
        video = file.video
        with self._lock:
            video.users += 1
        try:
            yield file
        finally:
            with self._lock:
                video.users -= 1
                video.last_used = time.monotonic()

    def check_limits(self, video: VideoFile) -> None:
        """Refuse a video that is too long or too large before any decoding (reads the header only).

        The header is read here rather than through the codec's opener, because the codec refuses
        huge frames with its own limit: the client should hear this server's.
        """
        header = _read_header(video.path)
        if header is None:  # not something PyAV can open: the codec's opener says why, in one line
            container, _ = self._open(video, open_video_stream)
            container.close()
            return
        width, height, duration = header
        s = self.settings
        if width > s.max_side or height > s.max_side or width * height > s.max_pixels:
            raise APIError(
                400,
                f"{video.filename}: resolution {width}x{height} exceeds this server's limit "
                f"({s.max_side} per side, {s.max_pixels} pixels)",
                code="video_too_large",
            )
        if duration is not None and duration > s.max_duration_s:
            raise APIError(
                413,
                f"{video.filename}: {duration:.1f} s long, this server accepts up to {s.max_duration_s:g} s",
                code="video_too_long",
            )

    def open_canonical(self, video: VideoFile) -> CodecVideo:
        """The video's canonical stream (transcoded once, cached by content hash), limits checked.

        A rejected upload is deleted at once: nobody can use it.
        """
        try:
            self.check_limits(video)
            self._open(video, open_video_stream)[0].close()  # the codec's own checks, on the header
            codec_video = self._open(video, self._open_video)
            duration = codec_video.info.duration_s
            if duration > self.settings.max_duration_s:  # containers without a duration in the header
                raise APIError(
                    413,
                    f"{video.filename}: {duration:.1f} s long, this server accepts up to "
                    f"{self.settings.max_duration_s:g} s",
                    code="video_too_long",
                )
        except APIError:
            self._forget(video.video)
            raise
        self.enforce_budget()
        return codec_video

    def _open_video(self, path: Path) -> CodecVideo:
        return open_video(path, self.canonical_settings, cache_dir=self.canonical_dir)

    def _open(self, video: VideoFile, opener):
        """Run a codec call on the video, turning its one-line errors into 400s with the client's name."""
        try:
            return opener(video.path)
        except CopeInputError as exc:
            message = self.scrub(str(exc).replace(str(video.path), video.filename))
            raise APIError(400, message, code="invalid_video") from exc

    def scrub(self, message: str) -> str:
        """A codec or model message without the server's work directory (e.g. a canonical stream's path)."""
        return message.replace(str(self.work_dir), "<work dir>")

    # ----- disk budget -----------------------------------------------------------------------------

    def _files_on_disk(self) -> Iterator[tuple[Path, int]]:
        """(path, size) of every file under uploads/ and canonical/."""
        for directory in (self.upload_dir, self.canonical_dir):
            for path in directory.rglob("*"):
                try:
                    if path.is_file():
                        yield path, path.stat().st_size
                except FileNotFoundError:  # a transcode's temporary file, renamed meanwhile
                    continue

    def disk_bytes(self) -> int:
        """Bytes of uploads (those still arriving included) and canonical streams on disk."""
        return sum(size for _, size in self._files_on_disk())

    def _used_bytes(self) -> int:
        """What counts against the budget: stored files plus reservations (which cover the parts)."""
        stored = sum(size for path, size in self._files_on_disk() if not path.name.startswith(".part-"))
        return stored + self._reserved

    def enforce_budget(self) -> list[str]:
        """Delete least recently used, unheld videos (and their canonical streams) over budget."""
        with self._lock:
            return self._evict()

    def _evict(self, extra: int = 0) -> list[str]:
        """Evict until ``extra`` more bytes fit (lock held); the hashes evicted."""
        evicted = []
        total = self._used_bytes() + extra
        for video in sorted(self._videos.values(), key=lambda v: v.last_used):
            if total <= self.settings.cache_max_bytes:
                break
            if not video.users:
                total -= self._delete(video)
                evicted.append(video.sha256)
        return evicted

    def _forget(self, video: StoredVideo) -> None:
        with self._lock:
            self._delete(video)

    def _delete(self, video: StoredVideo) -> int:
        """Remove a video, its files (and its uploads' ids) from the registry and disk (lock held)."""
        for key in [k for k, v in self._videos.items() if v is video]:
            del self._videos[key]
        for file_id in [i for i, f in self._files.items() if f.video is video]:
            del self._files[file_id]
        paths = list(self.canonical_dir.glob(f"{video.sha256}-*"))
        if video.owned:  # allow-listed files belong to the operator: never deleted
            paths.append(video.path)
        freed = 0
        for path in paths:
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self._owner_lock.close()


# ----- work directories --------------------------------------------------------------------------------


def lock_work_dir(work_dir: Path):
    """Mark ``work_dir`` as this live process's: ``owner.lock`` holds the pid, flock-ed until exit.

    The kernel drops the lock when the process dies however it dies (SIGKILL included), which is
    what tells the next server the directory is stale. The lock is taken on a temporary name and
    renamed into place, so a scanning server never sees an ``owner.lock`` that is not yet locked.
    """
    temp = work_dir / f".{LOCK_NAME}.{os.getpid()}"
    lock = open(temp, "w")  # noqa: SIM115 (kept open: closing it would release the lock)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    os.replace(temp, work_dir / LOCK_NAME)
    return lock


def remove_stale_work_dirs(root: Path) -> list[Path]:
    """Delete ``cope-serve-*`` directories under ``root`` whose owner died (their lock is free).

    Directories without ``owner.lock`` are left alone: not ours to judge (a server starting right
    now has not locked its directory yet, and older servers never did).
    """
    removed = []
    for directory in sorted(root.glob("cope-serve-*")):
        try:
            lock = open(directory / LOCK_NAME, "a")  # noqa: SIM115
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a live server's
                continue
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _read_header(path: Path) -> tuple[int, int, float | None] | None:
    """(width, height, duration or None) of the first video stream, from the header; None if unreadable."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError):  # junk: the codec's opener
        return None  # reports it properly later
    try:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        if stream.codec_context is None:  # no decoder for it, or a damaged header
            return None
        return stream.codec_context.width, stream.codec_context.height, header_duration_s(container, stream)
    finally:
        container.close()
