"""The RISE API proper: ``POST /solve`` and the session routes — protocol, translation, router.

``/solve`` takes a ``question`` (sent through RISE's first-turn prompt) or ``messages`` (sent
as given; the last user message is the question the introspection prompt repeats). Options
left unset take the service's defaults. ``max_turns`` is always the number of turns this
request runs.

A session is continued one documented way: ``POST /sessions/{id}/turns``, whose unset options
keep the session's own (``max_turns`` then defaults to one more turn). ``/solve`` with a
``session_id`` is a thin alias of it, kept because clients use it (the tests, scripts that
continue a ``/v1`` choice's session): it refuses what would restate the problem (``question``,
``messages``, ``grader``) and then takes the same path.

Shaped like the ``/v1`` handler (after vLLM's OpenAI server): the request model translates
itself (:meth:`TurnOptions.to_plan`, as vLLM's ``to_sampling_params``, and
:meth:`SolveRequest.to_episode`), the route makes one service call for the job and hands it to
the one responder (:func:`_respond`).

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
    FEEDBACK_DESCRIPTION,
    FeedbackName,
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
from rise.episode import Episode
from rise.loop import TokenEvent, TurnEvent, new_episode
from rise.plan import RequestPlan, mode_rules
from rise.prompts import PromptConfig
from rise.voting import AnswerMode, final_answer

# ---- protocol: the wire models, each translating itself ------------------------------------------

SessionId = Annotated[str, Field(pattern=f"^{SESSION_ID_REGEX}$")]
# Service terms → this surface's fields; a plan field not listed is named as it is.
_FIELD_NAMES: FieldNames = {
    "session": "session_id",
    "stop_on_correct": "mode",
    "converge_k": "stop_on_convergence",
}


class SamplingOptions(StrictRequest):
    temperature: float | None = Field(None, ge=0, le=2, description="Default 1.0; 0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Default 1.0.")
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens per turn (default 512, at most RISE_TOKEN_LIMIT)."
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
    feedback: FeedbackName | None = Field(None, description=FEEDBACK_DESCRIPTION)
    stop_on_correct: bool | None = Field(
        None,
        description="Stop at the first turn known correct: graded so against `reference`, or "
        "judged so by the `oracle` or a verifier (mode oracle sets it).",
    )
    stream: bool = Field(False, description="Server-Sent Events: tokens, turn ends, final event.")
    return_token_ids: bool = Field(
        False,
        description="Every turn also carries its prompt_token_ids and token_ids (a rollout "
        "server for RL; vLLM's name), in the response and the stream's turn events.",
    )

    def to_plan(self, base: RequestPlan) -> RequestPlan:
        """``base`` with the options this body sets: the one translation of these fields.

        ``base`` is the service's defaults for a new solve, or the session's plan for more
        turns; an option left unset keeps ``base``'s value (as vLLM's ``to_sampling_params``
        fills what a request leaves out from its defaults).
        """
        plan = base.updated(
            max_turns=self.max_turns,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
            context_window=self.context_window,
            feedback=self.feedback,
            **mode_rules(self.mode),
        )
        if self.stop_on_correct is not None:
            plan = replace(plan, stop_on_correct=self.stop_on_correct)
        if self.stop_on_convergence is not None:
            plan = replace(plan, converge_k=2 if self.stop_on_convergence else None)
        return plan

    def field_names(self) -> FieldNames:
        """The fields of this body that errors name (:func:`app.errors.named_errors`)."""
        return {**_FIELD_NAMES, "prompt": "messages"}

    def check_continuation(self) -> None:
        """Refuse what more turns on a stored session cannot take (every option here may)."""


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
    session_id: SessionId | None = Field(
        None, description="Continue this session instead: an alias of POST /sessions/{id}/turns."
    )

    def to_episode(self, prompts: PromptConfig, default_grader: str) -> Episode:
        """The new episode: the question after the served prompts' system message and
        demonstrations, or the messages as given."""
        if (self.question is None) == (self.messages is None):
            raise InvalidRequest(
                "give exactly one of question, messages or session_id", param="question"
            )
        grader = self.grader or default_grader
        if self.question is not None:
            return new_episode(
                self.question, reference=self.reference, grader=grader, context=prompts.context()
            )
        messages = [m.model_dump() for m in self.messages or []]
        return episode_from_messages(messages, self.reference, grader)

    def field_names(self) -> FieldNames:
        return {**_FIELD_NAMES, "prompt": "messages" if self.messages is not None else "question"}

    def check_continuation(self) -> None:
        """With ``session_id``, the problem is the stored session's: it cannot be restated."""
        for name in ("question", "messages", "grader"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name} cannot change a stored session", param=name)


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
    names: FieldNames,
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
        yield sse("error", stream_error(error, names))


async def _respond(
    request: Request, service: SolveService, job: SolveJob, body: TurnOptions
) -> Response:
    """The one responder of the solve routes: the job's turns as JSON, or SSE with ``stream``."""
    model, ids, names = service.model_name, body.return_token_ids, body.field_names()
    return await respond(
        request,
        service,
        job,
        stream=body.stream,
        stream_body=lambda events: solve_events(events, job.plan, model, names, ids),
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
    """Answer a question over several self-correcting turns.

    With `session_id`: more turns on that session, an alias of `POST /sessions/{session_id}/turns`.
    """
    if body.session_id is not None:
        return await _more_turns(body.session_id, body, request, service, owner)
    with named_errors(body.field_names()):
        episode = body.to_episode(service.prompts.prompts, service.settings.default_grader)
        plan = body.to_plan(service.defaults)
        job = service.new_job([episode], plan, owner, root=request_root(request))
        return await _respond(request, service, job, body)


class FeedbackProvidersPublic(BaseModel):
    feedback: list[str] = Field(description="Every value `feedback` may take here.")
    default: str = Field(description="The feedback of a request that names none.")
    verifiers: list[str] = Field(description="Those that are the operator's HTTP verifiers.")


@router.get("/feedback", response_model=FeedbackProvidersPublic, responses=ERROR_RESPONSES)
async def feedback_providers(service: ServiceDep, owner: Owner) -> FeedbackProvidersPublic:
    """The feedback providers this deployment offers (docs/RISE.md, 'Feedback')."""
    return FeedbackProvidersPublic(
        feedback=list(service.feedback.names),
        default=service.defaults.feedback,
        verifiers=list(service.feedback.verifiers),
    )


@router.get("/sessions/{session_id}", response_model=SessionPublic, responses=ERROR_RESPONSES)
async def get_session(
    session_id: SessionPath, response: Response, service: ServiceDep, owner: Owner
) -> SessionPublic:
    """A stored session: every turn, the vote, the conversation."""
    with named_errors(_FIELD_NAMES):
        session = session_public(await service.load(session_id, owner))
    response.headers[SESSION_HEADER] = session_root(session_id)
    return session


@router.delete("/sessions/{session_id}", status_code=204, responses=ERROR_RESPONSES)
async def delete_session(session_id: SessionPath, service: ServiceDep, owner: Owner) -> Response:
    """Forget a session."""
    with named_errors(_FIELD_NAMES):
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
    return await _more_turns(session_id, body, request, service, owner)


async def _more_turns(
    session_id: str,
    body: ContinueRequest | SolveRequest,
    request: Request,
    service: SolveService,
    owner: str | None,
) -> Response:
    """More turns on a stored session: ``POST /sessions/{id}/turns`` and its ``/solve`` alias."""
    with named_errors(body.field_names()):
        check_session_header(request, session_id)
        body.check_continuation()
        job = await service.continue_job(session_id, owner, body.to_plan, reference=body.reference)
        return await _respond(request, service, job, body)
