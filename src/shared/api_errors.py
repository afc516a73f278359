"""OpenAI-shaped error bodies: {"error": {"message", "type", "code", "param"}}."""
from __future__ import annotations

from starlette.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
          408: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}


def error_response(status: int, code: str, message: str, param: str | None = None,
                   retry_after: float | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    kind = code if code == "insufficient_quota" else _TYPES.get(status, "server_error")  # (OpenAI's type for it)
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers or None)
