"""``cope serve``: an OpenAI-compatible video chat API and a web page, for one loaded VideoLM."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

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
    parser.add_argument(
        "--model", default=None, help="model directory or hub id (default: the bundled model)"
    )
    parser.add_argument(
        "--model-name", default=None, help="the id clients use (default: the model dir's name)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto (default: cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)")
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
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from cope.serve.app import create_app
    from cope.serve.server import uvicorn_config

    for directory in args.allow_dir:
        if not directory.is_dir():
            raise CopeInputError(f"{directory}: --allow-dir must be an existing directory")
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
    from cope.serve.config import ServeSettings

    model_path = resolve_model(args.model)
    CopeConfig.from_pretrained(model_path)  # cheap: a bad --model fails here, in one line
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
        default_max_tokens=min(256, args.max_tokens),
    )
    try:
        settings.validate()
    except ValueError as exc:
        raise CopeInputError(f"cope serve: {exc}") from None
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
        raise CopeInputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return listener


def _default_name(model_path: str) -> str:
    path = Path(model_path)
    return path.name if path.exists() else model_path
