"""What an operator can set on ``cope serve``: limits, queue, allow-listed directories, caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cope.codec.canonical import CODEC_CHOICES

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
    # The stream extraction reads (``CanonicalSettings.codec``: canonical, native or auto); None:
    # the model config's.
    codec: str | None = None
    # Generation length when a request gives no ``max_tokens`` (``cope serve``: the model config's
    # ``max_new_tokens``), and the most a request may ask for.
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    # The most prompt positions (text + visual, all turns) a request may fill; beyond → 400
    # context_length_exceeded. None: the model's context length minus ``max_tokens_limit``.
    max_prompt_tokens: int | None = None
    # The prompt is prefilled this many positions at a time, one chunk per batch step, checking for
    # cancellation and the deadline in between: a long prompt never holds the worker past its
    # request's timeout, and the answers being decoded take a step between its chunks.
    prefill_chunk_tokens: int = 256
    # Answers decoded together (continuous batching): one LLM forward per step for all of them.
    # More requests than this wait in the queue (``queue_size``) until an answer leaves the batch.
    max_batch: int = 8
    # The batch's decode step torch.compile'd with CUDA graphs (CUDA only; elsewhere it runs eager).
    compile: bool = False
    # A request body (upload or JSON) must have fully arrived this many seconds after the request
    # did; a client that stalls mid-body gets 408 and loses its connection.
    body_timeout_s: float = 60.0
    # Open connections uvicorn accepts at once; one more gets 503 (bounds slow clients' sockets).
    max_connections: int = 64
    # The address the server listens on. With ``allowed_hosts`` it decides which ``Host`` headers
    # are accepted (a DNS-rebinding page presents its own domain name); "*" accepts any host.
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    # Browser origins besides the server's own that may call the API (CORS); "*" allows any.
    cors_origins: tuple[str, ...] = ()
    # Clients must send ``Authorization: Bearer <api_key>`` (the web page and its assets excepted).
    api_key: str | None = None

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
            "prefill_chunk_tokens": self.prefill_chunk_tokens,
            "max_batch": self.max_batch,
            "body_timeout_s": self.body_timeout_s,
            "max_connections": self.max_connections,
        }
        if self.max_prompt_tokens is not None:
            positive["max_prompt_tokens"] = self.max_prompt_tokens
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.cache_max_bytes < 2 * self.max_upload_bytes:
            raise ValueError("cache_max_bytes must hold at least two uploads (2 × max_upload_bytes)")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        if self.codec is not None and self.codec not in CODEC_CHOICES:
            raise ValueError(f"codec must be one of {', '.join(CODEC_CHOICES)}, got {self.codec!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key must not be empty")
