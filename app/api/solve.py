"""The RISE API proper: ``POST /solve`` and the session routes — protocol, translation, router.

``/solve`` takes a ``question`` (sent through RISE's first-turn prompt) or ``messages`` (sent
as given; the last user message is the question the introspection prompt repeats), or a
``session_id`` to continue. Options left unset take the service's defaults for a new solve and
the session's own plan for a continuation (``max_turns`` then defaults to one more turn).
``max_turns`` is always the number of turns this request runs.

The SSE stream of a solve, in order: ``session`` (its id, sent before any token), ``token``
(``{"turn", "text"}`` deltas), ``turn`` (a finished turn with its answer), and finally ``done``
(the whole response, vote included) — or ``error`` (``{"error": {...}}``) as the last event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from app.api.protocol import (
    ERROR_RESPONSES,
    GraderName,
    Question,
    Seed,
    StrictRequest,
    Text,
    TurnPublic,
    Usage,
    VotePublic,
    episode_from_messages,
    turn_public,
    usage_of,
    vote_public,
)
from app.api.responding import (
    SESSION_HEADER,
    check_session_header,
    request_root,
    respond,
    sse,
)
from app.auth import Owner
from app.deps import ServiceDep
from app.errors import FieldNames, InvalidRequest, named_errors, stream_error
from app.service import ServiceEvent, SolveJob, SolveResult, SolveService, Started
from app.sessions import Session
from rise.affinity import SESSION_ID_MAX_LENGTH, SESSION_ID_REGEX, session_root
from rise.loop import TokenEvent, TurnEvent, new_episode
from rise.plan import CONTINUE_TURNS, RequestPlan, mode_rules
from rise.voting import AnswerMode, final_answer

# ---- protocol ----------------------------------------------------------------------------------

SessionId = Annotated[str, Field(pattern=f"^{SESSION_ID_REGEX}$")]


class SamplingOptions(StrictRequest):
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1.0; 0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Default 1.0.")
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens per turn (default 512, at most RISE_MAX_TOKENS)."
    )
    seed: Seed | None = Field(None, description="Per-request seed (GPU engines; ignored on CPU).")


class TurnOptions(SamplingOptions):
    """How the next turns run; unset fields keep the session's previous options."""

    max_turns: int | None = Field(
        None, ge=1, description="Turns to run in this request (new solve: default 5; continue: 1)."
    )
    mode: AnswerMode | None = Field(
        None,
        description="vote: majority over the turns' answers; last: the last turn's answer; "
        "oracle: stop at the first answer equal to `reference`.",
    )
    stop_on_convergence: bool | None = Field(
        None, description="Stop once two consecutive turns give the same answer."
    )
    context_window: int | None = Field(
        None, ge=1, description="The model sees only the last k attempts; default all turns."
    )
    stream: bool = Field(False, description="Server-Sent Events: tokens, turn ends, final event.")
    return_token_ids: bool = Field(
        False,
        description="Every turn also carries its prompt_token_ids and token_ids (a rollout "
        "server for RL; vLLM's name), in the response and the stream's turn events.",
    )


class SolveMessage(StrictRequest):
    role: Literal["system", "user", "assistant"]
    content: Text


class SolveRequest(TurnOptions):
    """A new problem (`question` or `messages`), or `session_id` to continue one."""

    question: Question | None = Field(None, description="The problem; RISE's first-turn prompt.")
    messages: list[SolveMessage] | None = Field(
        None, min_length=1, description="A chat instead of `question`; the last must be `user`."
    )
    reference: Question | None = Field(None, description="Reference answer (required for oracle).")
    grader: GraderName | None = Field(None, description="How answers are read and compared.")
    session_id: SessionId | None = Field(None, description="Continue this session instead.")


class ContinueRequest(TurnOptions):
    """More turns on a stored session."""

    reference: Question | None = Field(None, description="Set or replace the reference answer.")


class SolveResponse(BaseModel):
    session_id: str
    model: str
    mode: AnswerMode
    answer: str | None = Field(description="The final answer: vote winner, or last/oracle turn's.")
    stop_reason: str | None
    turns: list[TurnPublic] = Field(description="Every turn of the session, oldest first.")
    new_turns: int = Field(description="How many of `turns` this request ran.")
    vote: VotePublic
    usage: Usage = Field(description="Tokens of the turns this request ran.")


class MessagePublic(BaseModel):
    role: str
    content: str


class SessionPublic(BaseModel):
    session_id: str
    status: Literal["running", "done"]
    question: str
    reference: str | None
    grader: str
    mode: AnswerMode
    answer: str | None
    stop_reason: str | None
    turns: list[TurnPublic]
    vote: VotePublic
    messages: list[MessagePublic]
    options: dict[str, Any]
    created_at: float
    updated_at: float


# ---- translation: request → plan and episode ---------------------------------------------------

# Service terms → this surface's fields; a plan field not listed is named as it is.
_PARAMS: FieldNames = {
    "session": "session_id",
    "stop_on_correct": "mode",
    "converge_k": "stop_on_convergence",
}


def _params(prompt: str = "question") -> FieldNames:
    return {**_PARAMS, "prompt": prompt}


def turn_plan(base: RequestPlan, body: TurnOptions) -> RequestPlan:
    """``base`` (the defaults, or a session's plan) with the options this body sets."""
    plan = base.updated(
        max_turns=body.max_turns,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_tokens,
        seed=body.seed,
        context_window=body.context_window,
        **mode_rules(body.mode),
    )
    if body.stop_on_convergence is not None:
        plan = replace(plan, converge_k=2 if body.stop_on_convergence else None)
    return plan


def continued_plan(session: Session, body: TurnOptions) -> RequestPlan:
    """A continuation: the session's plan, one more turn unless told, then the body's options."""
    return turn_plan(replace(session.plan, max_turns=CONTINUE_TURNS, n=1), body)


async def solve_job(
    body: SolveRequest, service: SolveService, owner: str | None, request: Request
) -> SolveJob:
    """A new solve, or a continuation when ``session_id`` is given."""
    given = [n for n in ("question", "messages") if getattr(body, n) is not None]
    if body.session_id is not None:
        check_session_header(request, body.session_id)
        for name in [*given, "grader"]:
            if getattr(body, name) is not None:
                raise InvalidRequest(f"{name} cannot change a stored session", param=name)
        session = await service.load(body.session_id, owner)
        plan = continued_plan(session, body)
        return service.continue_job(session, plan, reference=body.reference)
    if len(given) != 1:
        raise InvalidRequest(
            "give exactly one of question, messages or session_id", param="question"
        )
    grader = body.grader or service.settings.default_grader
    if body.question is not None:
        context = service.loop.renderer.prompts.context()
        episode = new_episode(
            body.question, reference=body.reference, grader=grader, context=context
        )
    else:
        messages = [m.model_dump() for m in body.messages or []]
        episode = episode_from_messages(messages, body.reference, grader)
    plan = turn_plan(service.defaults, body)
    return service.new_job([episode], plan, owner, root=request_root(request))


# ---- translation: results → response -----------------------------------------------------------


def solve_response(
    plan: RequestPlan, result: SolveResult, model: str, token_ids: bool = False
) -> SolveResponse:
    """The JSON answer of /solve (one session per request)."""
    episode, before = result.sessions[0].episode, result.turns_before[0]
    final = result.final(0)
    return SolveResponse(
        session_id=episode.id,
        model=model,
        mode=plan.mode,
        answer=final.answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        turns=[turn_public(t, token_ids) for t in episode.turns],
        new_turns=len(episode.turns) - before,
        vote=vote_public(final.vote),
        usage=usage_of(episode.turns[before:]),
    )


def session_options(plan: RequestPlan) -> dict[str, Any]:
    """A session's plan in this API's option names (what a continuation keeps)."""
    return {
        "mode": plan.mode,
        "temperature": plan.temperature,
        "top_p": plan.top_p,
        "max_tokens": plan.max_tokens,
        "seed": plan.seed,
        "stop": list(plan.stop),
        "stop_on_convergence": plan.converge_k is not None,
        "context_window": plan.context_window,
    }


def session_public(session: Session) -> SessionPublic:
    episode, plan = session.episode, session.plan
    final = final_answer(episode, plan.mode)
    return SessionPublic(
        session_id=session.id,
        status="running" if episode.stop_reason is None else "done",
        question=episode.question,
        reference=episode.reference,
        grader=episode.grader,
        mode=plan.mode,
        answer=final.answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        turns=[turn_public(t) for t in episode.turns],
        vote=vote_public(final.vote),
        messages=[MessagePublic(**m) for m in episode.messages()],
        options=session_options(plan),
        created_at=session.created_at,
        updated_at=session.updated_at,
    )


async def solve_events(
    events: AsyncIterator[ServiceEvent],
    plan: RequestPlan,
    model: str,
    params: FieldNames,
    token_ids: bool = False,
) -> AsyncIterator[str]:
    """The SSE body of a streamed solve (see the module docstring for the events)."""
    result = None
    try:
        async for event in events:
            if isinstance(event, Started):
                result = event.result
                yield sse("session", {"session_id": result.sessions[0].id})
            elif isinstance(event, TokenEvent) and event.text:
                yield sse("token", {"turn": event.turn, "text": event.text})
            elif isinstance(event, TurnEvent):
                yield sse("turn", turn_public(event.turn, token_ids))
        if result is not None:
            yield sse("done", solve_response(plan, result, model, token_ids))
    except Exception as error:
        yield sse("error", stream_error(error, params))


async def _respond(
    request: Request, service: SolveService, job: SolveJob, body: TurnOptions, params: FieldNames
) -> Response:
    model, ids = service.model_name, body.return_token_ids
    return await respond(
        request,
        service,
        job,
        stream=body.stream,
        stream_body=lambda events: solve_events(events, job.plan, model, params, ids),
        json_body=lambda result: solve_response(job.plan, result, model, ids),
    )


# ---- router ------------------------------------------------------------------------------------

router = APIRouter(tags=["solve"])
SessionPath = Annotated[
    str, Path(pattern=f"^{SESSION_ID_REGEX}$", max_length=SESSION_ID_MAX_LENGTH)
]
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}
}


@router.post("/solve", response_model=SolveResponse, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def solve(
    body: SolveRequest, request: Request, service: ServiceDep, owner: Owner
) -> Response:
    """Answer a question over several self-correcting turns, or continue a session."""
    params = _params("messages" if body.messages is not None else "question")
    with named_errors(params):
        job = await solve_job(body, service, owner, request)
        return await _respond(request, service, job, body, params)


@router.get("/sessions/{session_id}", response_model=SessionPublic, responses=ERROR_RESPONSES)
async def get_session(
    session_id: SessionPath, response: Response, service: ServiceDep, owner: Owner
) -> SessionPublic:
    """A stored session: every turn, the vote, the conversation."""
    with named_errors(_PARAMS):
        session = session_public(await service.load(session_id, owner))
    response.headers[SESSION_HEADER] = session_root(session_id)
    return session


@router.delete("/sessions/{session_id}", status_code=204, responses=ERROR_RESPONSES)
async def delete_session(session_id: SessionPath, service: ServiceDep, owner: Owner) -> Response:
    """Forget a session."""
    with named_errors(_PARAMS):
        await service.delete(session_id, owner)
    return Response(status_code=204)


@router.post(
    "/sessions/{session_id}/turns",
    response_model=SolveResponse,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
)
async def add_turns(
    session_id: SessionPath,
    body: ContinueRequest,
    request: Request,
    service: ServiceDep,
    owner: Owner,
) -> Response:
    """Run more turns on a stored session, continuing from its exact token ids."""
    params = _params("messages")
    with named_errors(params):
        check_session_header(request, session_id)
        session = await service.load(session_id, owner)
        job = service.continue_job(session, continued_plan(session, body), reference=body.reference)
        return await _respond(request, service, job, body, params)
