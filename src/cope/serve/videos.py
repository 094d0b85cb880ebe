"""Where the server's videos come from and live: uploads, data: URLs, allow-listed local files.

Every video is known by the SHA-256 of its bytes. Uploaded and data: URL videos are written once
to the server's private work directory (``uploads/<sha256>.video``); their canonical streams go
to ``canonical/`` (the codec engine's own content-hash cache). When uploads + canonical streams
exceed ``cache_max_bytes``, the least recently used videos that no job holds are deleted; the
whole work directory is deleted at shutdown. ``file://`` videos are read in place, only from under
the operator's ``--allow-dir`` directories, and never deleted.

URL forms a ``video_url`` content part may carry:
- ``cope-file://<id>``: a video uploaded with ``POST /v1/files`` (``id`` = ``file-<hash prefix>``);
- ``data:video/<subtype>;base64,<bytes>``;
- ``file:///absolute/path`` under an allow-listed directory (403 otherwise);
- ``http(s)://``: refused with 400 (the server makes no outbound requests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cope.codec.canonical import CanonicalSettings, file_sha256, open_video_stream
from cope.codec.extract import CodecVideo, open_video
from cope.errors import CopeInputError
from cope.serve.config import ServeSettings
from cope.serve.errors import APIError

FILE_ID_PREFIX = "file-"
FILE_URL_SCHEME = "cope-file://"
_ID_HEX = 32  # hex digits of the SHA-256 kept in a file id (128 bits: collisions are not a concern)


@dataclass
class StoredVideo:
    """One video the server knows, by content hash."""

    sha256: str
    path: Path  # the bytes: in the work directory (owned) or an allow-listed file (not owned)
    filename: str  # the name shown to the client (never a server path)
    size: int
    owned: bool
    created_at: int = field(default_factory=lambda: int(time.time()))
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0  # jobs currently holding the video; held videos are never evicted
    summary: dict | None = None  # GOP/token summary, computed once

    @property
    def id(self) -> str:
        return FILE_ID_PREFIX + self.sha256[:_ID_HEX]

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
        root = settings.work_root
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="cope-serve-", dir=root))
        self.upload_dir = self.work_dir / "uploads"
        self.canonical_dir = self.work_dir / "canonical"
        self.upload_dir.mkdir()
        self.canonical_dir.mkdir()
        self.allow_dirs = tuple(Path(d).resolve(strict=True) for d in settings.allow_dirs)
        self._videos: dict[str, StoredVideo] = {}  # by sha256
        self._local_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256
        self._lock = threading.Lock()

    # ----- adding videos -------------------------------------------------------------------------

    def new_upload_file(self):
        """A temporary file in the work directory for an upload being received."""
        return tempfile.NamedTemporaryFile(dir=self.upload_dir, prefix=".part-", delete=False)

    def add_file(self, temp_path: Path, sha256: str, filename: str) -> StoredVideo:
        """Register a fully received upload (moved into place under its hash)."""
        size = temp_path.stat().st_size
        if size == 0:
            temp_path.unlink(missing_ok=True)
            raise APIError(400, f"{filename}: empty file", code="invalid_video")
        with self._lock:
            known = self._videos.get(sha256)
            if known is not None:
                temp_path.unlink(missing_ok=True)
                known.last_used = time.monotonic()
                return known
            path = self.upload_dir / f"{sha256}.video"
            os.replace(temp_path, path)
            video = StoredVideo(sha256, path, filename, size, owned=True)
            self._videos[sha256] = video
        return video

    def add_bytes(self, data: bytes, filename: str) -> StoredVideo:
        if len(data) > self.settings.max_upload_bytes:
            raise self.too_large(len(data))
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._videos.get(sha256)
            if known is not None:
                known.last_used = time.monotonic()
                return known
        with self.new_upload_file() as f:
            f.write(data)
        return self.add_file(Path(f.name), sha256, filename)

    def too_large(self, size: int) -> APIError:
        return APIError(
            413,
            f"video too large: {size} bytes, the limit is {self.settings.max_upload_bytes} bytes",
            code="file_too_large",
        )

    # ----- resolving video_url parts ---------------------------------------------------------------

    def resolve_url(self, url: str) -> StoredVideo:
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

    def get(self, file_id: str) -> StoredVideo:
        prefix = file_id[len(FILE_ID_PREFIX) :] if file_id.startswith(FILE_ID_PREFIX) else None
        with self._lock:
            if prefix is not None and len(prefix) == _ID_HEX:
                for sha256, video in self._videos.items():
                    if sha256.startswith(prefix) and video.owned:
                        video.last_used = time.monotonic()
                        return video
        raise APIError(404, f"no file with id {file_id[:80]!r} (unknown or expired)", code="file_not_found")

    def _from_data_url(self, url: str) -> StoredVideo:
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
        except (binascii.Error, ValueError):
            raise APIError(400, "data: URL payload is not valid base64", code="invalid_video") from None
        return self.add_bytes(data, "data-url." + (mime.split("/", 1)[1] or "video"))

    def _from_local_file(self, url: str) -> StoredVideo:
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
        try:
            path = Path(raw).resolve(strict=True)  # symlinks and '..' resolved before the check
        except (OSError, RuntimeError):
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
            video = self._videos.get(sha256)
            if video is None:
                video = StoredVideo(sha256, path, path.name, stat.st_size, owned=False)
                self._videos[sha256] = video
            video.last_used = time.monotonic()
            return video

    # ----- using videos ----------------------------------------------------------------------------

    @contextmanager
    def hold(self, video: StoredVideo) -> Iterator[StoredVideo]:
        """Keep a video from being evicted while a job uses it."""
        with self._lock:
            video.users += 1
        try:
            yield video
        finally:
            with self._lock:
                video.users -= 1
                video.last_used = time.monotonic()

    def check_limits(self, video: StoredVideo) -> None:
        """Refuse a video that is too long or too large before any decoding (reads the header only)."""
        container, stream = self._open(video, open_video_stream)
        try:
            width, height = stream.codec_context.width, stream.codec_context.height
            duration = _duration_s(container, stream)
        finally:
            container.close()
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

    def open_canonical(self, video: StoredVideo) -> CodecVideo:
        """The video's canonical stream (transcoded once, cached by content hash), limits checked.

        A rejected upload is deleted at once: nobody can use it.
        """
        try:
            self.check_limits(video)
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
            self._forget(video)
            raise
        self.enforce_budget()
        return codec_video

    def _open_video(self, path: Path) -> CodecVideo:
        return open_video(path, self.canonical_settings, cache_dir=self.canonical_dir)

    def _open(self, video: StoredVideo, opener):
        """Run a codec call on the video, turning its one-line errors into 400s with the client's name."""
        try:
            return opener(video.path)
        except CopeInputError as exc:
            message = str(exc).replace(str(video.path), video.filename)
            raise APIError(400, message, code="invalid_video") from None

    # ----- disk budget -----------------------------------------------------------------------------

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.work_dir.rglob("*") if p.is_file())

    def enforce_budget(self) -> list[str]:
        """Delete least recently used, unheld videos (and their canonical streams) over budget."""
        evicted = []
        with self._lock:
            total = self.disk_bytes()
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
        """Remove a video from the registry and its files from disk (lock held); bytes freed."""
        self._videos.pop(video.sha256, None)
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


def _duration_s(container, stream) -> float | None:
    """Duration from the container header, or None when it does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None
