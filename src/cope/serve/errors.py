"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``.

Status codes (documented in docs/serving.md):
400 bad request (malformed JSON, schema, bad video, unsupported URL), 403 file path not allowed,
404 unknown model or file, 413 video too large or too long, 429 queue full, 504 request timeout,
500 internal error.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

# OpenAI's ``type`` per status; clients such as the ``openai`` package map the status to an
# exception class and read ``message`` from the body.
ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error a handler returns to the client as an OpenAI-style body with ``status``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)
