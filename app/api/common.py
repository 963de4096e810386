"""What the API surfaces share: turn and vote wire models, request → episode, errors, SSE.

- Wire types and models both surfaces show: a turn, a vote, token usage, the error shape.
- Episodes from a request: a ``question`` through RISE's first-turn prompt (after the served
  prompts' system message and demonstrations), or chat ``messages`` sent as given.
- Errors in the request's own terms: the service raises :class:`~rise.plan.PlanError`,
  :class:`~rise.engine.base.PromptTooLongError` and session errors without naming a JSON field;
  :func:`wire_errors` (around a handler) and :func:`stream_error` (inside a stream) name it,
  through the surface's table from service terms (a plan field, ``prompt``, ``session``,
  ``reference``) to the field of its request.
- Responding: :func:`respond` runs a job as SSE or JSON. A non-streaming solve is cancelled
  when the client disconnects (after vLLM's ``with_cancellation``), which closes the turn loop
  and aborts its engine requests; a stream takes its first event before the response starts, so
  admission, lease and store errors are ordinary HTTP errors (429, 409, 503) instead of a 200
  stream that fails at once, and Starlette's ``StreamingResponse`` cancels it on disconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.errors import ClientDisconnected, InvalidRequest, ServiceError, error_body
from app.service import ServiceEvent, SolveJob, SolveResult, SolveService
from rise.affinity import is_root, is_session_id, session_root
from rise.answers import GRADER_NAMES
from rise.engine.base import PromptTooLongError
from rise.episode import Episode, Turn
from rise.loop import new_episode
from rise.plan import PlanError
from rise.voting import Vote

logger = logging.getLogger(__name__)
T = TypeVar("T")

# ---- wire types --------------------------------------------------------------------------------


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); the tokenizer cannot encode them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Text = Annotated[str, AfterValidator(_encodable)]
Question = Annotated[str, AfterValidator(_encodable), AfterValidator(_not_blank)]
GraderName = Literal[GRADER_NAMES]  # type: ignore[valid-type]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class StrictRequest(BaseModel):
    """A RISE request body: unknown fields are a 400 naming them, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def _is_none(value: object) -> bool:
    return value is None


def on_request(description: str) -> Any:
    """A response field sent only when asked for: left out of the JSON while it is ``None``."""
    return Field(None, description=description, exclude_if=_is_none)


class TurnPublic(BaseModel):
    index: int
    text: str
    answer: str | None
    outcome: Literal["correct", "wrong", "unparseable"] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    first_token_s: float | None
    prompt_token_ids: list[int] | None = on_request(
        "With return_token_ids: the exact prompt this turn sent to the engine."
    )
    token_ids: list[int] | None = on_request(
        "With return_token_ids: the exact tokens this turn generated."
    )


class VotePublic(BaseModel):
    winner: str | None
    winner_turn: int | None
    counts: dict[str, int]
    margin: int
    total: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request"),
        (401, "Missing or unknown API key"),
        (404, "Unknown session or model"),
        (429, "Too many solves; retry after Retry-After seconds"),
        (503, "Engine or session store unavailable"),
    )
}


def turn_public(turn: Turn, token_ids: bool = False) -> TurnPublic:
    """A turn as clients see it; its token ids only when asked for (``return_token_ids``).

    Token ids let a client use the service as a rollout server (vLLM's ``return_token_ids``):
    the prompt and output ids are exactly what the engine saw and produced.
    """
    return TurnPublic(
        index=turn.index,
        text=turn.text,
        answer=turn.answer,
        outcome=None if turn.outcome is None else turn.outcome.value,
        finish_reason=turn.finish_reason,
        prompt_tokens=turn.prompt_tokens,
        completion_tokens=turn.output_tokens,
        cached_tokens=turn.cached_tokens,
        latency_s=round(turn.latency_s, 6),
        first_token_s=None if turn.first_token_s is None else round(turn.first_token_s, 6),
        prompt_token_ids=list(turn.prompt_ids) if token_ids else None,
        token_ids=list(turn.output_ids) if token_ids else None,
    )


def vote_public(vote: Vote) -> VotePublic:
    return VotePublic(**vote.to_dict())


def usage_of(turns: Sequence[Turn]) -> Usage:
    prompt = sum(t.prompt_tokens for t in turns)
    completion = sum(t.output_tokens for t in turns)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=sum(t.cached_tokens for t in turns),
    )


# ---- request → episode -------------------------------------------------------------------------


def question_episode(
    service: SolveService, question: str, reference: str | None, grader: str
) -> Episode:
    """A question through the served prompts: their system message and demonstrations first."""
    context = service.loop.renderer.prompts.context()
    return new_episode(question, reference=reference, grader=grader, context=context)


def episode_from_messages(
    messages: list[dict[str, str]], reference: str | None, grader: str
) -> Episode:
    """An episode whose question is the last (user) message and whose context is the rest.

    The first turn sends the messages as given; later turns repeat the question in RISE's
    introspection prompt.
    """
    if messages[-1]["role"] != "user":
        raise InvalidRequest("the last message must be from the user", param="messages")
    question = messages[-1]["content"]
    if not question.strip():
        raise InvalidRequest("the last user message is empty", param="messages")
    return new_episode(
        question, reference=reference, grader=grader, context=messages[:-1], first_message=question
    )


# ---- errors in the request's terms ---------------------------------------------------------

Params = Mapping[str, str | None]  # service term (plan field, "prompt", "session") -> JSON field
_SESSION_CODES = ("session_not_found", "session_busy")


def wire_error(error: BaseException, params: Params) -> BaseException:
    """``error`` as the client sees it: naming the field of its own request."""
    if isinstance(error, PlanError):
        return InvalidRequest(str(error), param=params.get(error.field, error.field))
    if isinstance(error, PromptTooLongError):
        code = "context_length_exceeded"
        return InvalidRequest(str(error), param=params.get("prompt"), code=code)
    if isinstance(error, ServiceError) and error.param is None and error.code in _SESSION_CODES:
        error.param = params.get("session")
    return error


@contextmanager
def wire_errors(params: Params) -> Iterator[None]:
    """Around a handler: service errors raised inside become errors naming request fields."""
    try:
        yield
    except (PlanError, PromptTooLongError, ServiceError) as error:
        named = wire_error(error, params)
        if named is error:
            raise
        raise named from error


def stream_error(error: Exception, params: Params) -> dict[str, Any]:
    """The body of an error ending a stream (internals stay in the log)."""
    named = wire_error(error, params)
    if isinstance(named, ServiceError):
        return named.body()
    logger.error("stream failed", exc_info=error)
    return error_body("internal server error", "internal_error")


# ---- responding: JSON or SSE ---------------------------------------------------------------

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The routing key of session affinity: every response names its session(s) here, and a client
# sends it back with the session's next turns, so a proxy can hash on it (nginx
# ``hash $http_x_session_id consistent``) and the turns reach the replica holding the prefix cache.
SESSION_HEADER = "X-Session-Id"
"""Names a request's conversation; every response carries its session root (rise.affinity)."""
AFFINITY_HEADER = "X-Rise-Affinity"
"""Set by a proxy: the key it routed a request by (a root), for sessions the request creates."""


def request_root(request: Request) -> str | None:
    """The root a request's new sessions go under, so a proxy that hashed the request by it
    routes their later turns to this replica: ``X-Session-Id``'s root (the client continues a
    conversation, or names its own), else the proxy's ``X-Rise-Affinity``, else None (fresh).
    """
    given = request.headers.get(SESSION_HEADER)
    if given is not None:
        given = given.strip()
        if not is_session_id(given):
            raise InvalidRequest(
                f"{SESSION_HEADER} must be a session id or a key of 8-64 letters, digits, "
                f"'-' or '_'; got {given[:100]!r}",
                param=SESSION_HEADER,
            )
        return session_root(given)
    routed = request.headers.get(AFFINITY_HEADER)
    if routed is not None:
        routed = routed.strip()
        if not is_root(routed):
            raise InvalidRequest(
                f"{AFFINITY_HEADER} must be 8-64 letters, digits, '-' or '_'; got {routed[:100]!r}",
                param=AFFINITY_HEADER,
            )
        return routed
    return None


def check_session_header(request: Request, session_id: str) -> None:
    """A request for ``session_id`` whose ``X-Session-Id`` names another conversation is a 400.

    The header may be the session's id or its root. The proxy routed the request by it: a
    mismatch is a client bug that would silently cost the prefix cache.
    """
    given = request.headers.get(SESSION_HEADER)
    if given is not None and given.strip() not in (session_id, session_root(session_id)):
        raise InvalidRequest(
            f"the {SESSION_HEADER} header ({given.strip()[:100]!r}) names another session than "
            f"the request ({session_id!r})",
            param=SESSION_HEADER,
        )


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; ``data`` is a model or JSON-able value."""
    payload = data.model_dump_json() if hasattr(data, "model_dump_json") else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n"


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise ClientDisconnected if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected("the client closed the connection")
    return task.result()


async def open_stream(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Start ``events`` now (errors before its first item raise here); iterate all of them."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None

    async def chained() -> AsyncIterator[T]:
        try:
            if first is not None:
                yield first
                async for event in events:
                    yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return chained()


async def respond(
    request: Request,
    service: SolveService,
    job: SolveJob,
    *,
    stream: bool,
    stream_body: Callable[[AsyncIterator[ServiceEvent]], AsyncIterator[str]],
    json_body: Callable[[SolveResult], BaseModel],
) -> Response:
    """Run ``job``: its events as SSE when ``stream``, else ``json_body(result)`` once done.

    Either way the response carries ``X-Session-Id``: the root the job's sessions share (the
    ``n`` choices of a ``/v1`` request too), which the client sends back with its next turns.
    """
    affinity = {SESSION_HEADER: session_root(job.sessions[0].id)}
    if stream:
        events = await cancel_on_disconnect(request, open_stream(service.run(job)))
        return StreamingResponse(
            stream_body(events),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **affinity},
        )
    result = await cancel_on_disconnect(request, service.complete(job))
    return Response(
        json_body(result).model_dump_json(), media_type="application/json", headers=affinity
    )
