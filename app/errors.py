"""One exception hierarchy and one JSON error shape for every route (/solve, /sessions, /v1).

Every failure a client can see is a :class:`ServiceError` subclass carrying its HTTP status and
the OpenAI-style body ``{"error": {"message", "type", "param", "code"}}`` — the shape the
``openai`` client parses into its own exception types. Request validation errors (malformed
JSON, wrong types, out-of-range values) and Starlette's HTTP exceptions (404 route, 405, 413) are
mapped into the same shape by handlers registered once in :func:`install_error_handlers`.
Inside an SSE stream the same body is sent as the final event (:func:`error_body`).

``param`` names a field of the client's request, which only the API layer knows: it translates
the core's plan and prompt errors (:func:`app.api.common.wire_errors`). Should one escape it,
the handlers here still answer 400, naming the plan field.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rise.engine.base import PromptTooLongError
from rise.plan import PlanError

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(ServiceError):
    status_code = 400
    type = "invalid_request_error"


class Unauthorized(ServiceError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ServiceError):
    status_code = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    type = "conflict_error"
    code = "session_busy"


class TooManyRequests(ServiceError):
    status_code = 429
    type = "rate_limit_error"
    code = "too_many_solves"


class ServiceUnavailable(ServiceError):
    status_code = 503
    type = "service_unavailable_error"


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class EngineUnavailable(ServiceUnavailable):
    code = "engine_unavailable"


class ClientDisconnected(ServiceError):
    """The client went away; nobody reads the response (nginx's 499 in the access log)."""

    status_code = 499
    type = "client_closed_request"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = dict(exc.headers)
    if exc.status_code in (429, 503) and "Retry-After" not in headers:
        settings = getattr(request.app.state, "settings", None)
        headers["Retry-After"] = str(getattr(settings, "retry_after_s", 1))
    if exc.status_code >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return _json(exc.status_code, exc.body(), headers)


def validation_param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "rise", "max_turns")`` → ``"rise.max_turns"``; the body itself → None."""
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return _json(400, error_body("invalid request", InvalidRequest.type))
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        body = error_body(f"malformed JSON body: {detail}".rstrip(": "), InvalidRequest.type)
        return _json(400, body)
    param = validation_param(tuple(first.get("loc", ())))
    parts = []
    for error in errors[:5]:
        where = validation_param(tuple(error.get("loc", ()))) or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return _json(400, error_body("; ".join(parts), InvalidRequest.type, param, "invalid_value"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = {
        401: Unauthorized.type,
        404: NotFound.type,
        429: TooManyRequests.type,
    }.get(exc.status_code, InvalidRequest.type if exc.status_code < 500 else "internal_error")
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        exc.status_code
    )
    body = error_body(str(exc.detail), type_, None, code)
    return _json(exc.status_code, body, dict(exc.headers or {}))


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, PlanError):
        return _json(400, error_body(str(exc), InvalidRequest.type, exc.field))
    code = "context_length_exceeded"
    return _json(400, error_body(str(exc), InvalidRequest.type, None, code))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json(500, error_body("internal server error", "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping once; every route shares it."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PlanError, _core_error)
    app.add_exception_handler(PromptTooLongError, _core_error)
    app.add_exception_handler(Exception, _unexpected_error)
