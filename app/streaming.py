"""Client disconnects and stream start-up, shared by the /solve and /v1 routes.

- :func:`cancel_on_disconnect` runs a non-streaming solve while watching the connection (after
  vLLM's ``with_cancellation``): when the client goes away the solve is cancelled, which closes
  the turn loop and aborts its engine requests.
- :func:`open_stream` takes the first event of a run before the response starts, so admission,
  lease and store errors are ordinary HTTP errors (429, 409, 503) instead of a 200 stream that
  fails at once. Streams themselves are cancelled by Starlette's ``StreamingResponse``, which
  listens for the disconnect and cancels the body iterator.
- :func:`respond` puts the two together for a solve job: SSE when it streams, JSON otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.errors import ClientDisconnected
from app.service import ServiceEvent, SolveJob, SolveService

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    stream_body: Callable[[AsyncIterator[ServiceEvent]], AsyncIterator[str]],
    json_body: Callable[[], BaseModel],
) -> Response:
    """Run ``job``: its events as SSE when it streams, else ``json_body()`` once it is done."""
    if job.stream:
        events = await cancel_on_disconnect(request, open_stream(service.run(job)))
        return StreamingResponse(
            stream_body(events), media_type="text/event-stream", headers=SSE_HEADERS
        )
    await cancel_on_disconnect(request, service.complete(job))
    return Response(json_body().model_dump_json(), media_type="application/json")
