"""The FastAPI app: OpenAI-compatible routes, the upload endpoint and the web page.

    app = create_app(model, ServeSettings(model_name="cope-tiny"))   # a loaded CopeVideoLM
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``GET /`` (web page), ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/files`` (multipart upload → file object + GOP/token summary), ``GET /v1/files/{id}``,
``POST /v1/chat/completions`` (plain JSON or server-sent events with ``stream: true``).
Every error is an OpenAI-style body (``errors.py``), including FastAPI's own 404/405/422.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from cope.serve.config import MiB, ServeSettings
from cope.serve.engine import ChatEngine, ChatJob
from cope.serve.errors import APIError
from cope.serve.protocol import conversation, parse_request
from cope.serve.videos import VideoStore
from cope.serve.worker import Job, ModelWorker, timeout_error

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("cope.serve")


def create_app(model, settings: ServeSettings) -> FastAPI:
    """An app serving ``model`` (a loaded ``CopeVideoLM``) under ``settings.model_name``.

    The worker thread starts with the app (lifespan) and the work directory is removed at shutdown.
    """
    settings.validate()
    engine = ChatEngine(model, settings)
    store = VideoStore(settings, engine.canonical_settings)
    worker = ModelWorker(settings.queue_size, settings.request_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(title="cope", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.engine, app.state.store, app.state.worker = settings, engine, store, worker
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    created = int(time.time())

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": settings.model_name,
            "queue": {
                "waiting": worker.waiting,
                "capacity": settings.queue_size,
                "busy": worker.running is not None,
            },
            "completed_jobs": worker.completed,
        }

    def model_object() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "cope"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_object()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        check_model(model_id)
        return model_object()

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise APIError(
                404,
                f"the model {name[:100]!r} does not exist; this server serves {settings.model_name!r}",
                code="model_not_found",
                param="model",
            )

    @app.post("/v1/files")
    async def upload_file(request: Request) -> dict:
        arrival = time.monotonic()
        video = await receive_upload(request, store, settings.max_upload_bytes)
        job = Job(lambda job: engine.summarize(store, video), deadline=arrival + settings.request_timeout_s)
        worker.submit(job)
        await wait_result(job, request, settings.request_timeout_s)
        return video.file_object()

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict:
        return store.get(file_id).file_object()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.monotonic()
        # A data: URL carries the video in base64 (4/3 of its size) plus the messages.
        limit = settings.max_upload_bytes * 4 // 3 + MiB
        body = await LimitedBody(request, limit, too_large(limit)).read()
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
        chat = parse_request(data)
        check_model(chat.model)
        conv = conversation(chat)
        options = engine.options(chat)
        history, question = engine.messages(conv)
        video = await to_thread.run_sync(store.resolve_url, conv.video_url)
        spec = ChatJob(video, conv.system, history, question, options, arrival)
        job = Job(lambda job: engine.respond(job, store, spec), deadline=arrival + settings.request_timeout_s)
        worker.submit(job)
        # Video checks and encoding finish before any byte is sent, so a bad video is a plain 400
        # even with stream: true; only errors during generation travel inside the stream.
        await wait_ready(job, request, settings.request_timeout_s)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            events = sse_events(
                job, completion_id, settings.model_name, include_usage, settings.request_timeout_s
            )
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await wait_result(job, request, settings.request_timeout_s)
        return completion_body(completion_id, settings.model_name, result)

    return app


# ----- request bodies --------------------------------------------------------------------------------


class LimitedBody:
    """A request body read chunk by chunk, refused with 413 once it passes ``limit`` bytes.

    After a refusal the rest of the body is read and dropped (up to twice the limit), so the client
    gets its 413 instead of a reset connection; beyond that the connection is simply closed.
    """

    def __init__(self, request: Request, limit: int, error: APIError):
        self.request = request
        self.limit = limit
        self.error = error
        self.size = 0
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        declared = self.request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self.refuse()
        while not self.complete:
            message = await self.request.receive()
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
            message = await self.request.receive()
            self.complete = message["type"] != "http.request" or not message.get("more_body", False)
            self.size += len(message.get("body", b""))
        raise self.error


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body too large: the limit is {limit} bytes", code="file_too_large")


async def receive_upload(request: Request, store: VideoStore, limit: int):
    """Stream a multipart upload (field ``file``) to the work directory, hashing as it arrives."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(400, "upload with multipart/form-data and a 'file' field", code="invalid_request")
    # The form's other fields and its boundaries are small: a megabyte of slack covers them.
    body = LimitedBody(request, limit + MiB, too_large(limit))
    parser = MultiPartParser(request.headers, body.chunks(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise APIError(400, f"malformed multipart body: {exc.message}", code="invalid_request") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        await form.close()
        raise APIError(400, "the upload has no 'file' field", code="invalid_request", param="file")
    try:
        return await to_thread.run_sync(_store_upload, store, upload.file, upload.filename or "video", limit)
    finally:
        await form.close()


def _store_upload(store: VideoStore, source, filename: str, limit: int):
    digest, size = hashlib.sha256(), 0
    source.seek(0)
    with store.new_upload_file() as out:
        while chunk := source.read(MiB):
            size += len(chunk)
            digest.update(chunk)
            out.write(chunk)
    temp = Path(out.name)
    if size > limit:
        temp.unlink(missing_ok=True)
        raise store.too_large(size)
    return store.add_file(temp, digest.hexdigest(), Path(filename).name[:200])


# ----- waiting for jobs ------------------------------------------------------------------------------


async def next_event(job: Job, request: Request | None, timeout_s: float) -> tuple[str, object]:
    """The job's next event; cancels the job when the client leaves or the deadline passes."""
    while True:
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            job.cancel()
            raise timeout_error(timeout_s)
        try:
            return await asyncio.wait_for(job.events.get(), timeout=min(remaining, 0.5))
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                job.cancel()
                raise APIError(499, "client closed the request", code="client_closed") from None


async def wait_ready(job: Job, request: Request, timeout_s: float) -> None:
    """Wait until the job has its video encoded (event "ready"); raise its error if it fails first."""
    kind, value = await next_event(job, request, timeout_s)
    if kind == "error":
        raise value
    if kind != "ready":
        raise RuntimeError(f"expected the job to report 'ready' first, got {kind!r}")


async def wait_result(job: Job, request: Request, timeout_s: float):
    while True:
        kind, value = await next_event(job, request, timeout_s)
        if kind == "error":
            raise value
        if kind == "result":
            return value


def completion_body(completion_id: str, model_name: str, result) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": result.usage(),
    }


async def sse_events(
    job: Job, completion_id: str, model_name: str, include_usage: bool, timeout_s: float
) -> AsyncIterator[str]:
    """OpenAI chunks as server-sent events: role, content deltas, finish, [usage], ``[DONE]``.

    Starlette cancels this generator when the client disconnects; ``finally`` then stops the job.
    """
    created = int(time.time())

    def chunk(
        delta: dict, finish_reason: str | None = None, usage: dict | None = None, choices: bool = True
    ) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
        }
        body["choices"] = (
            [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
            if choices
            else []
        )
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            try:
                kind, value = await next_event(job, None, timeout_s)
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                break
            if kind == "delta":
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps(value.body())}\n\n"
                break
            elif kind == "result":
                yield chunk({}, finish_reason=value.finish_reason)
                if include_usage:
                    yield chunk({}, usage=value.usage(), choices=False)
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


# ----- errors ----------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return APIError(
            400, f"{where}: {first['msg']}", code="invalid_request", param=where or None
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message, code=str(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}", code="internal").response()
