"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``.

Status codes (documented in docs/serving.md):
400 bad request (malformed JSON, schema, bad video, unsupported URL, prompt too long), 401 missing
or wrong API key, 403 file path not allowed or a refused Host/Origin, 404 unknown model or file,
405 wrong method, 408 request body too slow, 413 video too large or too long, 415 not JSON,
429 queue or disk budget full, 504 request timeout, 500 internal error.
"""

from __future__ import annotations

import json

from fastapi.responses import Response

# OpenAI's ``type`` per status; clients such as the ``openai`` package map the status to an
# exception class and read ``message`` from the body.
# OpenAI answers a bad key with 401 typed invalid_request_error (code invalid_api_key).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """The body's ``type``: a client's mistake (any other 4xx) is never typed as the server's."""
    return ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


class APIError(Exception):
    """An error a handler returns to the client as an OpenAI-style body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        # ASCII-escaped, so a message quoting client text with a lone surrogate still encodes.
        body = json.dumps(self.body(), separators=(",", ":")).encode()
        return Response(body, status_code=self.status, headers=self.headers, media_type="application/json")
