"""The request schema of ``POST /v1/chat/completions`` (the OpenAI subset cope serves) and its checks.

cope's own sampling options are extra body fields (``extra_body`` in the ``openai`` client):
``mode`` (cope | iframes-only | dense | delta-zero), ``keyframes_per_gop`` and ``fusion``.
Unknown fields are ignored, as vLLM does, so clients that send defaults for options we do not have
keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cope.plan import Mode
from cope.serve.errors import APIError


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class VideoURL(BaseModel):
    url: str = Field(min_length=1)


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # torch's generators take seeds in [-2**63, 2**64); anything else is a 400, not an overflow.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request
    stop: str | list[str] | None = None
    # vLLM's extra sampling fields (benchmarks ask for fixed-length answers with them)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool = False
    # cope sampling options (extra body fields)
    mode: Mode | None = None
    keyframes_per_gop: int | None = Field(default=None, ge=1)
    fusion: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True)
class Conversation:
    """A request's messages reduced to what the VideoLM takes: one video, a system prompt, turns.

    The video is attached to the first user turn (the one that carries it); the last turn is the
    user's question to answer.
    """

    video_url: str
    system: str | None
    turns: tuple[Turn, ...]


def parse_request(body: object) -> ChatCompletionRequest:
    """Validate a decoded JSON body; schema errors become one-line 400s naming the field."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        # With unions pydantic reports one error per member; the deepest one is the informative one.
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        where = _field_path(error["loc"])
        raise APIError(
            400, f"{where or 'body'}: {error['msg']}", code="invalid_request", param=where or None
        ) from exc


def _field_path(loc: tuple) -> str:
    """('messages', 0, 'content', 'list[tagged-union[...]]', 1, 'video_url', 'video_url', 'url')
    → 'messages.0.content.1.video_url.url': union member names dropped."""
    path: list[str] = []
    for part in loc:
        text = str(part)
        if "[" in text or text in ("str", "int", "float", "none"):
            continue
        if not path or path[-1] != text:
            path.append(text)
    return ".".join(path)


def _check_unicode(text: str, where: str) -> None:
    """JSON can carry lone surrogates (\\ud800), which no tokenizer or UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"{where}: the text is not valid Unicode (a lone surrogate)",
            code="invalid_request",
            param=where,
        ) from exc


def conversation(request: ChatCompletionRequest) -> Conversation:
    """Reduce the messages to a ``Conversation``: system messages first, then user/assistant turns
    starting with the user; exactly one video, in the first user message; the last message from the user."""
    system_parts: list[str] = []
    turns: list[Turn] = []
    video_urls: list[str] = []
    for i, message in enumerate(request.messages):
        parts = (
            [TextPart(type="text", text=message.content)]
            if isinstance(message.content, str)
            else message.content
        )
        text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
        _check_unicode(text, f"messages.{i}")
        videos = [p.video_url.url for p in parts if isinstance(p, VideoPart)]
        if videos and (message.role != "user" or turns):
            raise APIError(
                400, f"messages.{i}: the video goes in the first user message", param=f"messages.{i}"
            )
        video_urls += videos
        if message.role == "system":
            if turns:
                raise APIError(400, f"messages.{i}: system messages must come first", param=f"messages.{i}")
            system_parts.append(text)
        elif not turns and message.role != "user":
            raise APIError(
                400, f"messages.{i}: the conversation must start with a user message", param=f"messages.{i}"
            )
        else:
            turns.append(Turn(message.role, text))
    if len(video_urls) != 1:
        raise APIError(
            400,
            f"a conversation must contain exactly one video_url content part, got {len(video_urls)}",
            code="invalid_request",
            param="messages",
        )
    if turns[-1].role != "user":
        raise APIError(400, "the last message must be from the user", param="messages")
    if not turns[-1].text.strip():
        raise APIError(400, "the last user message has no text (ask a question)", param="messages")
    return Conversation(video_urls[0], "\n".join(system_parts) or None, tuple(turns))
