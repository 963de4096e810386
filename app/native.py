"""The RISE API proper: /solve and /sessions/{id}/turns requests → solve jobs; runs → SSE.

``/solve`` takes a ``question`` (sent through RISE's first-turn prompt) or ``messages`` (sent
as given; the last user message is the question the introspection prompt repeats), or a
``session_id`` to continue. Options left unset take the service defaults for a new solve and
the session's own options for a continuation.

The SSE stream of a solve, in order: ``session`` (its id, sent before any token), ``token``
(``{"turn", "text"}`` deltas), ``turn`` (a finished turn with its answer), and finally ``done``
(the whole response, vote included) — or ``error`` (``{"error": {...}}``) as the last event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from app.errors import InvalidRequest, ServiceError, error_body
from app.schemas import ContinueRequest, SolveRequest
from app.service import (
    ServiceEvent,
    SolveJob,
    SolveService,
    Started,
    TurnPlan,
    episode_from_messages,
)
from app.views import solve_response, sse, turn_public
from rise.loop import TokenEvent, TurnEvent, new_episode

logger = logging.getLogger(__name__)

_OPTION_FIELDS = (
    "max_turns",
    "mode",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop_on_convergence",
    "context_window",
)


def _overrides(request: ContinueRequest | SolveRequest) -> dict[str, object]:
    return {name: getattr(request, name) for name in _OPTION_FIELDS}


async def solve_job(request: SolveRequest, service: SolveService, owner: str | None) -> SolveJob:
    """A new solve, or a continuation when ``session_id`` is given."""
    given = [n for n in ("question", "messages") if getattr(request, n) is not None]
    if request.session_id is not None:
        for name in [*given, "grader"]:
            if getattr(request, name) is not None:
                raise InvalidRequest(f"{name} cannot change a stored session", param=name)
        return await service.continue_job(
            request.session_id,
            owner,
            _overrides(request),
            reference=request.reference,
            stream=request.stream,
        )
    if len(given) != 1:
        raise InvalidRequest(
            "give exactly one of question, messages or session_id", param="question"
        )
    grader = request.grader or service.settings.default_grader
    if request.question is not None:
        episode = new_episode(request.question, reference=request.reference, grader=grader)
        prompt_param = "question"
    else:
        messages = [m.model_dump() for m in request.messages or []]
        episode = episode_from_messages(messages, request.reference, grader)
        prompt_param = "messages"
    overrides = _overrides(request)
    if overrides["max_turns"] is None:
        overrides["max_turns"] = service.settings.default_max_turns
    if overrides["max_tokens"] is None:
        overrides["max_tokens"] = min(512, service.settings.max_tokens)
    plan = TurnPlan.from_options({}, **overrides)
    return service.new_job([episode], plan, owner, stream=request.stream, prompt_param=prompt_param)


async def continue_job(
    session_id: str, request: ContinueRequest, service: SolveService, owner: str | None
) -> SolveJob:
    return await service.continue_job(
        session_id, owner, _overrides(request), reference=request.reference, stream=request.stream
    )


async def solve_sse(
    events: AsyncIterator[ServiceEvent], job: SolveJob, model: str
) -> AsyncIterator[str]:
    """The SSE body of a streamed solve (see the module docstring for the events)."""
    try:
        async for event in events:
            if isinstance(event, Started):
                yield sse("session", {"session_id": job.sessions[0].id})
            elif isinstance(event, TokenEvent) and event.text:
                yield sse("token", {"turn": event.turn, "text": event.text})
            elif isinstance(event, TurnEvent):
                yield sse("turn", turn_public(event.turn))
        yield sse("done", solve_response(job, model))
    except ServiceError as error:
        yield sse("error", error.body())
    except Exception:
        logger.exception("solve stream failed")
        yield sse("error", error_body("internal server error", "internal_error"))
