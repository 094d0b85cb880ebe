"""The checks every request passes before a route sees it, as one ASGI middleware.

In order:
1. ``Host`` must name this server: the bound address, a loopback name when bound to loopback or to
   every interface, or an ``--allowed-host``. A DNS-rebinding page reaches us under its own domain
   name, so its requests are refused here (403 ``host_not_allowed``).
2. A browser's cross-origin request (an ``Origin`` that is not this server's) is refused (403
   ``origin_not_allowed``) unless ``--cors-origin`` allows that origin; allowed ones get CORS
   headers and their preflights are answered. Browsers send ``Origin`` on every cross-origin POST,
   including the "simple" ``text/plain`` and multipart ones that need no preflight.
3. With an API key, every route but the web page and its static files needs
   ``Authorization: Bearer <key>`` (401 ``invalid_api_key``).
4. An exception that escapes a route becomes OpenAI's 500 body here, without re-raising: uvicorn
   closes the connection of an app that raises, and a client's keep-alive connection should outlive
   one failed request. The body names the exception type only (messages can carry server paths).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cope.serve.config import ServeSettings
from cope.serve.errors import APIError

log = logging.getLogger("cope.serve")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
PUBLIC_PATHS = ("/", "/static/")  # the web page must load before it can ask for the key


def host_name(host: str) -> str:
    """'Example.com:8000' → 'example.com'; '[::1]:8000' → '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    name = host_name(host)
    return name == "localhost" or (is_ip_literal(name) and ipaddress.ip_address(name).is_loopback)


class HostRule:
    """Which ``Host`` headers name this server."""

    def __init__(self, bind_host: str, allowed: tuple[str, ...]):
        bind = host_name(bind_host)
        self.any = "*" in allowed
        self.wildcard = bind in WILDCARD_HOSTS
        self.names = {bind, *(host_name(h) for h in allowed)}
        if self.wildcard or is_loopback(bind):
            self.names |= LOOPBACK_NAMES

    def allows(self, host: str | None) -> bool:
        if host is None or self.any:  # no Host at all: HTTP/1.0 tools, never a browser
            return True
        name = host_name(host)
        # Bound to every interface, any address literal reaches us legitimately; a rebinding attack
        # always presents a domain name.
        return name in self.names or (self.wildcard and is_ip_literal(name))


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: ServeSettings):
        self.app = app
        self.hosts = HostRule(settings.bind_host, settings.allowed_hosts)
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in settings.cors_origins)
        self.api_key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        cors = self.cross_origin(origin, headers.get("host"))
        refusal = self.refusal(scope, headers, origin, cors)
        if cors is not None and not self.origin_allowed(cors):
            cors = None  # a refused origin does not get to read even the refusal
        if refusal is not None:
            await self.reply(refusal.response(), cors, scope, receive, send)
            return
        if cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.reply(preflight(), cors, scope, receive, send)
            return
        await self.run(scope, receive, with_cors(send, cors))

    def cross_origin(self, origin: str | None, host: str | None) -> str | None:
        """The request's origin when it is another site's (None: no Origin, or our own)."""
        if origin is None or (host is not None and urlsplit(origin).netloc.lower() == host.lower()):
            return None
        return origin

    def refusal(self, scope: Scope, headers: Headers, origin: str | None, cors: str | None):
        if not self.hosts.allows(headers.get("host")):
            return APIError(
                403,
                "this server does not answer to that Host name (the operator adds names with --allowed-host)",
                code="host_not_allowed",
            )
        if cors is not None and not self.origin_allowed(cors):
            return APIError(
                403,
                f"cross-origin requests from {origin[:100]!r} are not allowed (see --cors-origin)",
                code="origin_not_allowed",
            )
        preflight_request = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if self.api_key is not None and not preflight_request and not self.authorized(scope, headers):
            return APIError(
                401,
                "missing or incorrect API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin.rstrip("/").lower() in self.cors_origins

    def authorized(self, scope: Scope, headers: Headers) -> bool:
        path = scope["path"]
        if path == "/" or path.startswith(PUBLIC_PATHS[1]):
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # Constant time, so the key cannot be guessed byte by byte from response times.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # the last line of defence: any route bug becomes a logged 500
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if started:  # mid-stream: nothing valid can be sent any more
                return
            error = APIError(500, f"internal error ({type(exc).__name__}); see the server log", "internal")
            await error.response()(scope, receive, send)

    async def reply(self, response, cors: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, with_cors(send, cors))


def preflight():
    from starlette.responses import Response

    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


def with_cors(send: Send, origin: str | None) -> Send:
    """``send`` that adds the CORS headers an allowed cross-origin request needs to read the answer."""
    if origin is None:
        return send

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                ],
            }
        await send(message)

    return send_with_cors
