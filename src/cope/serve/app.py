"""The FastAPI app: OpenAI-compatible routes, the upload endpoint and the web page.

    app = create_app(model, ServeSettings(model_name="cope-tiny"))   # a loaded CopeVideoLM
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``GET /`` (web page), ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/files`` (multipart upload → file object + GOP/token summary), ``GET /v1/files/{id}``,
``POST /v1/chat/completions`` (plain JSON or server-sent events with ``stream: true``).
Every error is an OpenAI-style body (``errors.py``), including FastAPI's own 404/405/422.
Host, Origin and API-key checks, and the last-resort 500, are in ``guard.py``.

A request that will use the model takes its place in the worker's queue first (429 when there is
none), then receives its body within ``body_timeout_s`` (408 beyond), then stores its video: a
refused request costs neither disk nor a long-held socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cope.serve.config import MiB, ServeSettings
from cope.serve.engine import ChatEngine, ChatJob
from cope.serve.errors import APIError
from cope.serve.guard import RequestGuard
from cope.serve.protocol import conversation, parse_request
from cope.serve.uploads import LimitedBody, receive_upload, too_large
from cope.serve.videos import VideoStore
from cope.serve.worker import Job, ModelWorker, timeout_error

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(model, settings: ServeSettings) -> FastAPI:
    """An app serving ``model`` (a loaded ``CopeVideoLM``) under ``settings.model_name``.

    The worker thread starts with the app (lifespan) and the work directory is removed at shutdown.
    """
    settings.validate()
    engine = ChatEngine(model, settings)
    store = VideoStore(settings, engine.canonical_settings)
    worker = ModelWorker(settings.queue_size, settings.request_timeout_s, batch=engine)

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
    app.add_middleware(RequestGuard, settings=settings)
    _add_error_handlers(app)
    app.include_router(_info_routes(settings, worker))
    app.include_router(_file_routes(settings, engine, store, worker))
    app.include_router(_chat_routes(settings, engine, store, worker))
    return app


def _info_routes(settings: ServeSettings, worker: ModelWorker) -> APIRouter:
    """The web page, ``/health`` and the OpenAI model list."""
    router = APIRouter()
    created = int(time.time())

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @router.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": settings.model_name,
            "queue": {
                "waiting": worker.waiting,
                "capacity": settings.queue_size,
                "busy": bool(worker.running),
                "running": len(worker.running),  # the job starting + the answers in the batch
                "max_batch": settings.max_batch,
            },
            "completed_jobs": worker.completed,
        }

    def model_object() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "cope"}

    @router.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_object()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        check_model(model_id, settings)
        return model_object()

    return router


def _file_routes(
    settings: ServeSettings, engine: ChatEngine, store: VideoStore, worker: ModelWorker
) -> APIRouter:
    """``/v1/files``: uploads (admitted before a byte is stored) and their descriptions."""
    router = APIRouter()

    @router.post("/v1/files")
    async def upload_file(request: Request) -> dict:
        arrival = time.monotonic()
        with worker.admit() as admission:
            video = await receive_upload(request, store, settings)
            job = Job(
                lambda job: engine.summarize(store, video), deadline=arrival + settings.request_timeout_s
            )
            worker.submit(job, admission)
        await wait_result(job, request, settings.request_timeout_s)
        return video.file_object()

    @router.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict:
        return store.get(file_id).file_object()

    return router


def _chat_routes(
    settings: ServeSettings, engine: ChatEngine, store: VideoStore, worker: ModelWorker
) -> APIRouter:
    """``/v1/chat/completions``, plain and streamed."""
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.monotonic()
        require_json(request)
        with worker.admit() as admission:
            # A data: URL carries the video in base64 (4/3 of its size) plus the messages.
            limit = settings.max_upload_bytes * 4 // 3 + MiB
            body = LimitedBody(request, limit, too_large(limit), settings.body_timeout_s)
            chat = parse_request(parse_json(await body.read()))
            check_model(chat.model, settings)
            conv = conversation(chat)
            options = engine.options(chat)
            await to_thread.run_sync(engine.check_text_length, conv)
            history, question = engine.messages(conv)
            video = await to_thread.run_sync(store.resolve_url, conv.video_url)
            spec = ChatJob(video, conv.system, history, question, options, arrival)
            job = Job(
                lambda job: engine.respond(job, store, spec), deadline=arrival + settings.request_timeout_s
            )
            worker.submit(job, admission)
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

    return router


def check_model(name: str, settings: ServeSettings) -> None:
    if name != settings.model_name:
        raise APIError(
            404,
            f"the model {name[:100]!r} does not exist; this server serves {settings.model_name!r}",
            code="model_not_found",
            param="model",
        )


# ----- request bodies --------------------------------------------------------------------------------


def require_json(request: Request) -> None:
    """JSON routes take ``application/json`` only: a browser can send ``text/plain`` (and multipart)
    cross-site without a CORS preflight, never ``application/json``."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            f"send the body as Content-Type: application/json (got {media_type[:60] or 'none'!r})",
            code="unsupported_media_type",
        )


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from exc
    except RecursionError as exc:  # the parser recurses per nesting level
        raise APIError(400, "malformed JSON body: nested too deeply", code="invalid_json") from exc


# ----- waiting for jobs ------------------------------------------------------------------------------


DISCONNECT_POLL_S = 0.25  # how often a waiting request checks whether its client is still there


async def next_event(job: Job, request: Request | None, timeout_s: float) -> tuple[str, object]:
    """The job's next event; cancels the job when the client leaves or the deadline passes.

    The connection is checked every ``DISCONNECT_POLL_S`` whether or not events are flowing: a
    non-streaming client that leaves mid-generation must stop the job, not wait for its end.
    """
    while True:
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            job.cancel()
            raise timeout_error(timeout_s)
        if request is not None and time.monotonic() >= job.next_disconnect_check:
            job.next_disconnect_check = time.monotonic() + DISCONNECT_POLL_S
            if await request.is_disconnected():
                job.cancel()
                raise APIError(499, "client closed the request", code="client_closed")
        try:
            return await asyncio.wait_for(job.events.get(), timeout=min(remaining, DISCONNECT_POLL_S))
        except TimeoutError:
            continue


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
    async def api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return APIError(
            400, f"{where}: {first['msg']}", code="invalid_request", param=where or None
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path[:200]}"
        return APIError(exc.status_code, message, code=str(exc.status_code), headers=exc.headers).response()

    # Any other exception is a bug: guard.RequestGuard answers it with a 500 and keeps the
    # connection (an exception handler here would re-raise it to uvicorn, which drops it).
