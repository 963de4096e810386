"""Responding: a job run into one HTTP response, JSON or Server-Sent Events, with its affinity.

Both surfaces answer the same way, so it is done once here (after vLLM's ``with_cancellation``
and its streaming responses):

- :func:`respond` runs a job. A non-streaming solve is cancelled when the client disconnects,
  which closes the turn loop and aborts its engine requests; a stream takes its first event
  before the response starts, so admission, lease and store errors are ordinary HTTP errors
  (429, 409, 503) instead of a 200 stream that fails at once, and Starlette's
  ``StreamingResponse`` cancels it on disconnect.
- Session affinity: every response names its session root in ``X-Session-Id``; a client sends
  it back, and a proxy hashes on it (or sets ``X-Rise-Affinity``), so a conversation's turns
  reach the replica that holds its prefix cache. :func:`request_root` and
  :func:`check_session_header` read those headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.errors import ClientDisconnected, InvalidRequest
from app.service import ServiceEvent, SolveJob, SolveResult, SolveService
from rise.affinity import is_root, is_session_id, session_root

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The routing key of session affinity: every response names its session(s) here, and a client
# sends it back with the session's next turns, so a proxy can hash on it (nginx
# ``hash $http_x_session_id consistent``) and the turns reach the replica holding the prefix cache.
SESSION_HEADER = "X-Session-Id"
"""Names a request's conversation; every response carries its session root (rise.affinity)."""
AFFINITY_HEADER = "X-Rise-Affinity"
"""Set by a proxy: the key it routed a request by (a root), for sessions the request creates."""


# ---- affinity headers --------------------------------------------------------------------------


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


# ---- JSON or SSE -------------------------------------------------------------------------------


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
