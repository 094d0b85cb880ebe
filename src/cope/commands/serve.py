"""``cope serve``: an OpenAI-compatible video chat API and a web page, for one loaded VideoLM."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from cope.commands.common import add_codec_option, add_compile_option, add_model_options, compile_on_cuda
from cope.errors import CopeInputError

MiB = 1 << 20


def register(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="OpenAI-compatible chat API (POST /v1/chat/completions) and a web page at /",
        description=(
            "Serve one VideoLM over HTTP: POST /v1/chat/completions (video_url content parts, stream: true "
            "for server-sent events), POST /v1/files (video uploads), GET /v1/models, GET /health, and a "
            "web page at /. See docs/serving.md."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    model = parser.add_argument_group("model")
    add_model_options(model)
    model.add_argument(
        "--model-name", default=None, help="the id clients use (default: the model dir's name)"
    )
    model.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="answers decoded together, one forward per step for all (continuous batching); more "
        "requests wait in the queue (default: 8)",
    )
    add_compile_option(model, "on for CUDA; the first requests after start pay the compilation")
    add_codec_option(model, None)
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="serve file:// video URLs from under DIR (repeatable; default: file:// URLs refused)",
    )
    limits.add_argument(
        "--max-upload-mb", type=float, default=64, help="largest video accepted (default: 64)"
    )
    limits.add_argument(
        "--max-duration-s", type=float, default=600, help="longest video accepted (default: 600)"
    )
    limits.add_argument(
        "--max-side", type=int, default=4096, help="largest source frame side (default: 4096)"
    )
    limits.add_argument("--request-timeout-s", type=float, default=300, help="per request (default: 300)")
    limits.add_argument(
        "--queue-size", type=int, default=8, help="requests waiting for the model (default: 8)"
    )
    limits.add_argument("--max-tokens", type=int, default=2048, help="most tokens a request may generate")
    limits.add_argument(
        "--work-dir", type=Path, default=None, help="where the server's temporary work directory goes"
    )
    limits.add_argument(
        "--cache-mb", type=float, default=2048, help="disk for uploads + transcodes (default: 2048)"
    )
    limits.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="most prompt positions (text + video, all turns) per request; more gets 400 "
        "context_length_exceeded (default: the model's context minus --max-tokens, or half the "
        "context if --max-tokens is not smaller)",
    )
    limits.add_argument(
        "--prefill-chunk-tokens",
        type=int,
        default=256,
        help="prompt positions per prefill forward; a timeout or disconnect is noticed between chunks, "
        "and the answers being decoded take a step between them (default: 256)",
    )
    limits.add_argument(
        "--body-timeout-s",
        type=float,
        default=60,
        help="a request body must arrive within this many seconds (408 beyond; default: 60)",
    )
    limits.add_argument(
        "--max-connections", type=int, default=64, help="open connections at once (503 beyond; default: 64)"
    )
    access = parser.add_argument_group("access")
    access.add_argument(
        "--api-key",
        default=os.environ.get("COPE_API_KEY"),
        help="require 'Authorization: Bearer KEY' on the API (default: $COPE_API_KEY, which is better: "
        "other users can read command lines; unset: no key)",
    )
    access.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without an API key",
    )
    access.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME, e.g. a DNS name behind a proxy "
        "(repeatable; '*' = any; default: the --host address, plus loopback names on loopback)",
    )
    access.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example) call the API "
        "(repeatable; '*' = any; default: same-origin only)",
    )
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from cope.serve.app import create_app
    from cope.serve.guard import is_loopback
    from cope.serve.server import uvicorn_config

    for directory in args.allow_dir:
        if not directory.is_dir():
            raise CopeInputError(f"{directory}: --allow-dir must be an existing directory")
    if not args.api_key and not is_loopback(args.host):
        if not args.insecure_no_auth:
            raise CopeInputError(
                f"--host {args.host} is reachable from other machines: set --api-key (or COPE_API_KEY), "
                "or pass --insecure-no-auth"
            )
        print(
            f"cope serve: warning: no API key, and {args.host} is reachable from other machines",
            file=sys.stderr,
        )
    listener = _bind(args.host, args.port)  # fail fast, before loading the model
    try:
        settings, model = _load(args)
    except BaseException:
        listener.close()
        raise
    app = create_app(model, settings)
    host, port = listener.getsockname()[:2]
    print(
        f"cope serve: model {settings.model_name!r} at http://{host}:{port}/ (Ctrl-C to stop)",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn_config(app, args.host, port)).run(sockets=[listener])
    return 0


def _load(args):
    from cope.model.videolm import CopeConfig, CopeVideoLM, resolve_model
    from cope.model.videolm.modeling_cope import resolve_device
    from cope.serve.config import ServeSettings

    model_path = resolve_model(args.model)
    config = CopeConfig.from_pretrained(model_path)  # cheap: a bad --model fails here, in one line
    settings = ServeSettings(
        model_name=args.model_name or _default_name(model_path),
        max_upload_bytes=int(args.max_upload_mb * MiB),
        max_duration_s=args.max_duration_s,
        max_side=args.max_side,
        request_timeout_s=args.request_timeout_s,
        queue_size=args.queue_size,
        allow_dirs=tuple(args.allow_dir),
        work_root=args.work_dir,
        cache_max_bytes=int(args.cache_mb * MiB),
        max_tokens_limit=args.max_tokens,
        default_max_tokens=min(config.max_new_tokens, args.max_tokens),
        max_prompt_tokens=args.max_prompt_tokens,
        body_timeout_s=args.body_timeout_s,
        prefill_chunk_tokens=args.prefill_chunk_tokens,
        max_batch=args.max_batch,
        compile=compile_on_cuda(args, resolve_device(args.device)),
        max_connections=args.max_connections,
        bind_host=args.host,
        allowed_hosts=tuple(args.allowed_host),
        cors_origins=tuple(args.cors_origin),
        api_key=args.api_key or None,
        codec=args.codec,
    )
    try:
        settings.validate()
    except ValueError as exc:
        raise CopeInputError(f"cope serve: {exc}") from exc
    print(f"cope serve: loading {model_path} …", file=sys.stderr)
    return settings, CopeVideoLM.from_pretrained(model_path, device=args.device, dtype=args.dtype)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)  # clients connecting before uvicorn starts wait in the backlog
    except OSError as exc:
        listener.close()
        raise CopeInputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    return listener


def _default_name(model_path: str) -> str:
    path = Path(model_path)
    return path.name if path.exists() else model_path
