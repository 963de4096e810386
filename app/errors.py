"""One exception hierarchy and one JSON error shape for every route (/solve, /sessions, /v1).

Every failure a client can see is a :class:`ServiceError` subclass carrying its HTTP status and
the OpenAI-style body ``{"error": {"message", "type", "param", "code"}}`` — the shape the
``openai`` client parses into its own exception types. Request validation errors (malformed
JSON, wrong types, out-of-range values) and Starlette's HTTP exceptions (404 route, 405, 413) are
mapped into the same shape by handlers registered once in :func:`install_error_handlers`.
Inside an SSE stream the same body is sent as the final event (:func:`error_body`).

``param`` names a field of the client's request. The core raises
:class:`~rise.plan.PlanError` and :class:`~rise.engine.base.PromptTooLongError`, and the service
its session errors, without naming a JSON field (they speak plans, not wire formats); only a
route knows which field of its request a plan field came from. So each route hands its table
(:data:`FieldNames`, service term → request field) to :func:`named_errors`, which names the
errors raised inside it, and a stream names its final error with :func:`stream_error`. Should
a core error escape that, the handlers here still answer 400, naming the plan field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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


# ---- errors in the request's terms -------------------------------------------------------------

FieldNames = Mapping[str, str | None]
"""A route's table: service term (a plan field, ``prompt``, ``session``) -> its request's field."""
_SESSION_CODES = ("session_not_found", "session_busy")


def name_error(error: BaseException, names: FieldNames) -> BaseException:
    """``error`` as the client sees it: naming the field of its own request."""
    if isinstance(error, PlanError):
        return InvalidRequest(str(error), param=names.get(error.field, error.field))
    if isinstance(error, PromptTooLongError):
        code = "context_length_exceeded"
        return InvalidRequest(str(error), param=names.get("prompt"), code=code)
    if isinstance(error, ServiceError) and error.param is None and error.code in _SESSION_CODES:
        error.param = names.get("session")
    return error


@contextmanager
def named_errors(names: FieldNames) -> Iterator[None]:
    """Around a route: the core's and the service's errors raised inside name request fields."""
    try:
        yield
    except (PlanError, PromptTooLongError, ServiceError) as error:
        named = name_error(error, names)
        if named is error:
            raise
        raise named from error


def stream_error(error: Exception, names: FieldNames) -> dict[str, Any]:
    """The body of an error ending a stream, named as :func:`named_errors` would (internals
    stay in the log)."""
    named = name_error(error, names)
    if isinstance(named, ServiceError):
        return named.body()
    logger.error("stream failed", exc_info=error)
    return error_body("internal server error", "internal_error")


# ---- the handlers --------------------------------------------------------------------------------


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
