"""FastAPI's own refusals (an unknown route, a wrong method, a bad path or query parameter)
answered in the OpenAI error shape like every other error of the API."""
from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from llamarig.shared.api_errors import error_response


def _param(error: dict) -> str:
    return ".".join(str(p) for p in error.get("loc", ())[1:]) or "(request)"


def install(app) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(400, "invalid_request", f"{_param(first)}: {first.get('msg', 'invalid')}",
                              _param(first))

    @app.exception_handler(HTTPException)
    async def http(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                              headers=exc.headers)
