"""What an operator can set on ``cope serve``: limits, queue, allow-listed directories, caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Limits and resources of one server. Every limit is enforced before the model is touched."""

    # The id clients pass as ``model`` and ``GET /v1/models`` lists (default: the model dir's name).
    model_name: str = "cope"
    # Largest accepted video, in bytes, whether uploaded (multipart) or sent as a data: URL
    # (the decoded size; the JSON body may be 4/3 of it plus the messages). Larger → 413.
    max_upload_bytes: int = 64 * MiB
    # Longest accepted video in seconds (read from the container before transcoding). Longer → 413.
    max_duration_s: float = 600.0
    # Largest accepted source frame: per side, and in pixels. Larger → 400.
    max_side: int = 4096
    max_pixels: int = 3840 * 2160
    # Seconds from a request's arrival to its last byte; past it the request is cancelled → 504.
    request_timeout_s: float = 300.0
    # Jobs that may wait for the model while one runs; one more → 429.
    queue_size: int = 8
    # ``file://`` URLs are served only from under these directories (symlinks and ``..`` resolved).
    allow_dirs: tuple[Path, ...] = ()
    # Parent of the server's private work directory (uploads + canonical streams); None = the
    # system temp dir. The work directory itself is created at start and removed at shutdown.
    work_root: Path | None = None
    # Uploaded files + canonical streams kept on disk; least recently used videos go first.
    cache_max_bytes: int = 2048 * MiB
    # Encoded videos (visual embeddings) kept in memory, keyed by video hash + sampling settings.
    encoded_cache_entries: int = 8
    # Conversations whose KV cache is kept, so the next turn only prefills the new text.
    chat_sessions: int = 4
    # Generation length when a request gives no ``max_tokens``, and the most a request may ask for.
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048

    def validate(self) -> None:
        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_duration_s": self.max_duration_s,
            "max_side": self.max_side,
            "max_pixels": self.max_pixels,
            "request_timeout_s": self.request_timeout_s,
            "queue_size": self.queue_size,
            "cache_max_bytes": self.cache_max_bytes,
            "encoded_cache_entries": self.encoded_cache_entries,
            "chat_sessions": self.chat_sessions,
            "default_max_tokens": self.default_max_tokens,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.cache_max_bytes < 2 * self.max_upload_bytes:
            raise ValueError("cache_max_bytes must hold at least two uploads (2 × max_upload_bytes)")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
