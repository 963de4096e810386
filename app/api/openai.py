"""OpenAI chat completions on the RISE service — protocol, translation, router (``/v1``).

The conversation's last user message is the question; earlier messages are the episode's
context; the first turn sends the messages exactly as given, so with one turn (the plain model
name) this is a plain chat model. RISE comes in through the model name (``rise-5/<model>``, or
``rise-5-last/<model>``) and the extra body field ``rise`` (``{"max_turns": 5, "mode": "vote"}``;
it overrides the prefix). Each of the ``n`` choices is one episode (one session); its message
is the response of the turn :func:`rise.voting.final_answer` chose, and every turn is in the
choice's ``rise`` field. Sampling options left unset take the service's defaults, the same as
``/solve``'s (512 tokens per turn, at most ``RISE_MAX_TOKENS``).

Streaming follows OpenAI's chunk format: a role chunk per choice, content deltas, a finish
chunk, an optional usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. With one
turn the content streams token by token; with more, the chosen turn is only known at the end,
so each turn end is a progress chunk (empty delta, the turn in ``rise``) and the chosen
response follows as one delta.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.common import (
    ERROR_RESPONSES,
    GraderName,
    Params,
    Question,
    Seed,
    StrictRequest,
    Text,
    TurnPublic,
    VotePublic,
    episode_from_messages,
    respond,
    stream_error,
    turn_public,
    usage_of,
    vote_public,
    wire_errors,
)
from app.auth import Owner
from app.deps import ServiceDep
from app.errors import InvalidRequest, NotFound
from app.service import ServiceEvent, SolveResult, SolveService, Started
from rise.episode import Episode
from rise.loop import EpisodeEvent, TokenEvent, TurnEvent
from rise.plan import RequestPlan, mode_rules
from rise.prompt_file import prompts_to_dict
from rise.voting import AnswerMode, FinalAnswer

# ---- protocol ----------------------------------------------------------------------------------


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send many optional fields


class ContentPart(_OpenAIRequest):
    type: str
    text: Text | None = None


class ChatMessage(_OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_OpenAIRequest):
    include_usage: bool = False


class RiseOptions(StrictRequest):
    """RISE options in the OpenAI body's extra field `rise` (override a `rise-N/` prefix)."""

    max_turns: int | None = Field(None, ge=1)
    mode: AnswerMode | None = None
    reference: Question | None = None
    grader: GraderName | None = None
    stop_on_convergence: bool = False
    context_window: int | None = Field(None, ge=1)


class ResponseFormat(_OpenAIRequest):
    type: str = "text"


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(
        None, description="A name from /v1/models; `rise-N/<model>` = N turns."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, description="Choices (independent episodes); at most RISE_MAX_CHOICES.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = (
        Field(None, max_length=4)
    )
    seed: Seed | None = None
    # Accepted for compatibility; values that would change the result are refused (400).
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: ResponseFormat | None = None
    rise: RiseOptions | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class RiseChoice(BaseModel):
    session_id: str
    answer: str | None
    stop_reason: str | None
    chosen_turn: int = Field(description="The turn whose response is the message content.")
    vote: VotePublic
    turns: list[TurnPublic]


class ChatChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: None = None
    rise: RiseChoice


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage


class PromptsPublic(BaseModel):
    """The prompts the model runs with (RISE_PROMPTS, or its checkpoint's rise_prompts.json)."""

    first_turn: str
    introspection: str
    system: str | None
    demonstrations: list[list[str]]
    source: str = Field(description="default, configured: PATH, or checkpoint: PATH.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rise"
    max_model_len: int
    prompts: PromptsPublic


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- translation: request → plan and episodes --------------------------------------------------

_PREFIX = re.compile(r"^rise-(\d{1,3})(?:-(vote|last))?/(.+)$")


def parse_model(name: str | None, served: str) -> tuple[int | None, AnswerMode | None]:
    """(turns, mode) named by a ``rise-N[-mode]/`` prefix; 404 for a model not served here."""
    if name is None or name == served:
        return None, None
    match = _PREFIX.match(name)
    if match is None or match.group(3) != served:
        raise NotFound(
            f"model {name!r} is not served here; see /v1/models",
            param="model",
            code="model_not_found",
        )
    return int(match.group(1)), match.group(2)  # type: ignore[return-value]


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"only text content is supported (got {part.type!r})", param=f"messages.{index}"
            )
        parts.append(part.text)
    return "".join(parts)


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.logprobs:
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    if request.tools:
        raise InvalidRequest("tools are not supported", param="tools")
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest("only text responses are supported", param="response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise InvalidRequest(f"{name} is not supported", param=name)


def request_plan(request: ChatCompletionRequest, defaults: RequestPlan, served: str) -> RequestPlan:
    """The plan a chat completion asks for: ``rise`` over the model prefix over one plain turn."""
    prefix_turns, prefix_mode = parse_model(request.model, served)
    rise = request.rise or RiseOptions()
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    return defaults.updated(
        max_turns=rise.max_turns or prefix_turns or 1,  # the plain model name: one turn
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        seed=request.seed,
        stop=stop,
        converge_k=2 if rise.stop_on_convergence else None,
        context_window=rise.context_window,
        **mode_rules(rise.mode or prefix_mode or "vote"),
    )


def request_params(request: ChatCompletionRequest) -> Params:
    """Service terms → the fields of this request (where a value came from)."""
    rise = request.rise
    return {
        "prompt": "messages",
        "max_turns": "rise.max_turns" if rise and rise.max_turns else "model",
        "max_tokens": "max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        "mode": "rise.mode" if rise and rise.mode else "model",
        "stop_on_correct": "rise.mode" if rise and rise.mode else "model",
        "converge_k": "rise.stop_on_convergence",
        "context_window": "rise.context_window",
        "reference": "rise.reference",
    }


def request_episodes(
    request: ChatCompletionRequest, plan: RequestPlan, grader: str
) -> list[Episode]:
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
        for i, m in enumerate(request.messages)
    ]
    rise = request.rise or RiseOptions()
    return [
        episode_from_messages(messages, rise.reference, rise.grader or grader)
        for _ in range(plan.n)
    ]


# ---- translation: results → response -----------------------------------------------------------


def _finish_reason(episode: Episode, final: FinalAnswer) -> str:
    return "stop" if final.turn is None else episode.turns[final.turn].finish_reason


def _rise_choice(result: SolveResult, index: int) -> RiseChoice:
    episode, final = result.sessions[index].episode, result.final(index)
    return RiseChoice(
        session_id=episode.id,
        answer=final.answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        chosen_turn=len(episode.turns) - 1 if final.turn is None else final.turn,
        vote=vote_public(final.vote),
        turns=[turn_public(t) for t in episode.turns[result.turns_before[index] :]],
    )


def _usage(result: SolveResult) -> ChatUsage:
    usage = usage_of([t for s in result.sessions for t in s.episode.turns])
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def completion_response(result: SolveResult, model: str) -> ChatCompletionResponse:
    choices = []
    for index, session in enumerate(result.sessions):
        episode, final = session.episode, result.final(index)
        text = "" if final.turn is None else episode.turns[final.turn].text
        choices.append(
            ChatChoice(
                index=index,
                message=ChatCompletionMessage(content=text),
                finish_reason=_finish_reason(episode, final),
                rise=_rise_choice(result, index),
            )
        )
    return ChatCompletionResponse(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=_usage(result),
    )


async def completion_chunks(
    events: AsyncIterator[ServiceEvent],
    plan: RequestPlan,
    model: str,
    include_usage: bool,
    params: Params,
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion (errors become a final error event)."""
    head: dict[str, Any] = {"id": f"chatcmpl-{secrets.token_hex(12)}", "model": model}
    head |= {"object": "chat.completion.chunk", "created": int(time.time())}
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    plain = plan.max_turns == 1
    result: SolveResult | None = None
    index_of: dict[str, int] = {}

    def data(payload: dict[str, Any]) -> str:
        return "data: " + json.dumps(payload) + "\n\n"

    def chunk(index: int, delta: dict, finish: str | None = None, **extra: object) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data(head | {"choices": [choice | extra]} | tail)

    try:
        async for event in events:
            if isinstance(event, Started):
                result = event.result
                index_of = {session.id: i for i, session in enumerate(result.sessions)}
                for index in range(len(result.sessions)):
                    yield chunk(index, {"role": "assistant", "content": ""})
            elif isinstance(event, TokenEvent) and plain and event.text:
                yield chunk(index_of[event.episode_id], {"content": event.text})
            elif isinstance(event, TurnEvent) and not plain:
                turn = turn_public(event.turn).model_dump()
                yield chunk(index_of[event.episode_id], {}, rise={"turn": turn})
            elif isinstance(event, EpisodeEvent) and result is not None:
                index, final = index_of[event.episode.id], event.final
                if not plain and final.turn is not None:
                    yield chunk(index, {"content": event.episode.turns[final.turn].text})
                rise = _rise_choice(result, index).model_dump()
                yield chunk(index, {}, _finish_reason(event.episode, final), rise=rise)
        if include_usage and result is not None:
            yield data(head | {"choices": [], "usage": _usage(result).model_dump()})
    except Exception as error:
        yield data(stream_error(error, params))
    yield "data: [DONE]\n\n"


def model_list(service: SolveService) -> ModelList:
    """The served model, plain and as a RISE alias, each with the prompts it runs with."""
    created = int(time.time())
    served, turns = service.model_name, service.settings.default_max_turns
    active = service.prompts
    prompts = PromptsPublic(**prompts_to_dict(active.prompts), source=active.source)
    return ModelList(
        data=[
            ModelCard(
                id=name,
                created=created,
                max_model_len=service.engine.max_model_len,
                prompts=prompts,
            )
            for name in (served, f"rise-{turns}/{served}")
        ]
    )


# ---- router ------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(service: ServiceDep, owner: Owner) -> ModelList:
    """The served model, plain and as a RISE alias (`rise-N/<model>`), with its prompts."""
    return model_list(service)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: ServiceDep, owner: Owner
) -> Response:
    """OpenAI chat completions; the content is the chosen turn, all turns are in `rise`."""
    params = request_params(body)
    with wire_errors(params):
        _refuse_unsupported(body)
        plan = request_plan(body, service.defaults, service.model_name)
        plan.check(service.limits)  # before building n episodes
        episodes = request_episodes(body, plan, service.settings.default_grader)
        job = service.new_job(episodes, plan, owner)
        model = body.model or service.model_name
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await respond(
            request,
            service,
            job,
            stream=body.stream,
            stream_body=lambda events: completion_chunks(events, plan, model, usage, params),
            json_body=lambda result: completion_response(result, model),
        )
