"""Request bodies: read under a size limit and a deadline; multipart uploads streamed into the store.

Two ways a client could hold the server's resources without sending anything useful are closed:
* a body is refused with 413 as soon as it passes its limit (also when chunked, without a
  Content-Length), and with 408 when it has not fully arrived ``body_timeout_s`` after the request
  began (a stalled or trickling client), closing the connection;
* an upload's bytes go straight into a temporary file inside the server's work directory, in space
  reserved in the disk budget before the first byte is written (never to a spool file elsewhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import Request

from cope.serve.config import MiB, ServeSettings
from cope.serve.errors import APIError
from cope.serve.videos import VideoFile, VideoStore

MAX_PARTS = 16  # a form with the file and a few small fields (purpose, ...)


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body too large: the limit is {limit} bytes", code="file_too_large")


def body_timeout(seconds: float) -> APIError:
    # The rest of the body may still come; the connection cannot be reused, so it is closed.
    return APIError(
        408,
        f"the request body did not arrive within {seconds:g} s",
        code="body_timeout",
        headers={"Connection": "close"},
    )


class LimitedBody:
    """A request body read chunk by chunk: 413 once it passes ``limit`` bytes, 408 past the deadline.

    After a 413 the rest of the body is read and dropped (up to twice the limit, still before the
    deadline), so the client gets its 413 instead of a reset connection; beyond that the connection
    is simply closed.
    """

    def __init__(self, request: Request, limit: int, error: APIError, timeout_s: float):
        self.request = request
        self.limit = limit
        self.error = error
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.size = 0
        self.complete = False

    @property
    def declared(self) -> int | None:
        value = self.request.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    async def receive(self) -> dict:
        try:
            return await asyncio.wait_for(self.request.receive(), self.deadline - time.monotonic())
        except TimeoutError as exc:
            raise body_timeout(self.timeout_s) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        if (self.declared or 0) > self.limit:
            await self.refuse()
        while not self.complete:
            message = await self.receive()
            if message["type"] != "http.request":  # http.disconnect
                raise APIError(400, "the client closed the connection mid-body", code="client_closed")
            self.complete = not message.get("more_body", False)
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.limit:
                await self.refuse()
            if chunk:
                yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def refuse(self):
        while not self.complete and self.size <= 2 * self.limit:
            message = await self.receive()
            self.complete = message["type"] != "http.request" or not message.get("more_body", False)
            self.size += len(message.get("body", b""))
        raise self.error


class MultipartFile:
    """The ``file`` field of a multipart body, written to the work directory as it is parsed."""

    def __init__(self, store: VideoStore, boundary: bytes):
        self.store = store
        self.file = None  # the temporary file, once the 'file' part begins
        self.filename = "video"
        self.digest = hashlib.sha256()
        self.size = 0
        self.parts = 0
        self._writing = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._grow("_field", data[start:end]),
                "on_header_value": lambda data, start, end: self._grow("_value", data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _grow(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise APIError(400, f"the form has more than {MAX_PARTS} fields", code="invalid_request")
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._writing = params.get(b"name") == b"file"
        if not self._writing:
            return
        if self.file is not None:
            raise APIError(400, "upload one file per request", code="invalid_request", param="file")
        name = params.get(b"filename", b"").decode("utf-8", "replace").replace("\\", "/")
        self.filename = Path(name).name.replace("\0", "")[:200] or "video"
        self.file = self.store.new_upload_file()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:  # other fields' values are not needed
            chunk = data[start:end]
            self.file.write(chunk)
            self.digest.update(chunk)
            self.size += len(chunk)

    def _part_end(self) -> None:
        self._writing = False

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            Path(self.file.name).unlink(missing_ok=True)


async def receive_upload(request: Request, store: VideoStore, settings: ServeSettings) -> VideoFile:
    """Stream a multipart upload (field ``file``) into the work directory, hashing as it arrives."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise APIError(400, "upload with multipart/form-data and a 'file' field", code="invalid_request")
    # The form's other fields and its boundaries are small: a megabyte of slack covers them.
    limit = settings.max_upload_bytes + MiB
    body = LimitedBody(request, limit, too_large(settings.max_upload_bytes), settings.body_timeout_s)
    with store.reserve(min(body.declared or limit, limit)):
        upload = MultipartFile(store, params[b"boundary"])
        try:
            await _parse(upload, body)
            if upload.file is None:
                raise APIError(400, "the upload has no 'file' field", code="invalid_request", param="file")
            upload.file.close()
            if upload.size > settings.max_upload_bytes:
                raise store.too_large(upload.size)
        except BaseException:
            upload.discard()
            raise
        return store.add_file(Path(upload.file.name), upload.digest.hexdigest(), upload.filename)


async def _parse(upload: MultipartFile, body: LimitedBody) -> None:
    try:
        async for chunk in body.chunks():
            upload.parser.write(chunk)
        upload.parser.finalize()
    except MultipartParseError as exc:
        raise APIError(400, f"malformed multipart body: {exc}", code="invalid_request") from exc
