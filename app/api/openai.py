"""OpenAI chat completions on the RISE service — protocol, translation, router (``/v1``).

The conversation's last user message is the question; earlier messages are the episode's
context; the first turn sends the messages exactly as given, so with one turn (the plain model
name) this is a plain chat model. RISE comes in through the model name (``rise-5/<model>``, or
``rise-5-last/<model>``) and the extra body field ``rise`` (``{"max_turns": 5, "mode": "vote"}``;
it overrides the prefix). Each of the ``n`` choices is one episode (one session); its message
is the response of the turn :func:`rise.voting.final_answer` chose, and every turn is in the
choice's ``rise`` field. Sampling options left unset take the service's defaults, the same as
``/solve``'s (512 tokens per turn, at most ``RISE_TOKEN_LIMIT``).

With more than one turn, the turns are the model's visible thinking: they stream live as
``delta.reasoning_content`` (the field vLLM uses for reasoning models, which chat UIs such as
Open WebUI show as a collapsible "thinking" block), each labelled ``**Turn k**`` and, from turn
2 on, preceded by the introspection prompt the model was given (quoted); a non-streamed
response carries the same text in ``message.reasoning_content``. The chosen turn's response is
the ``content``. With one turn it is a plain chat model: no reasoning, content only.

Streaming follows OpenAI's chunk format: a role chunk per choice, then reasoning and content
deltas, a finish chunk, an optional usage chunk (``stream_options.include_usage``) and
``data: [DONE]``. Each turn's end is also a progress chunk (empty delta, the turn in ``rise``);
the chosen response is known only once all turns are done, so it follows as one delta.

``return_token_ids`` (vLLM's name) adds token ids for rollout use: the response's
``prompt_token_ids`` (the conversation as sent, the first turn's prompt), each choice's
``token_ids`` (the chosen turn's output) and every turn's own ``prompt_token_ids`` and
``token_ids`` in ``rise.turns``; streamed, each delta carries its ``token_ids``, each turn's
progress chunk the turn's ids, and each choice's finish chunk ``prompt_token_ids`` (vLLM sends
it first; here the prompt is rendered only when turn 1 starts).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

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
    VotePublic,
    episode_from_messages,
    on_request,
    turn_public,
    usage_of,
    vote_public,
)
from app.api.responding import request_root, respond
from app.auth import Owner
from app.deps import ServiceDep
from app.errors import FieldNames, InvalidRequest, NotFound, named_errors, stream_error
from app.service import ServiceEvent, SolveResult, SolveService, Started
from rise.episode import Episode, Turn
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
    feedback: FeedbackName | None = Field(None, description=FEEDBACK_DESCRIPTION)
    stop_on_correct: bool | None = Field(
        None, description="Stop at the first turn known correct (the reference's or a verifier's)."
    )


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
    return_token_ids: bool = Field(
        False, description="Token ids of the prompt, the chosen output and every turn (vLLM)."
    )
    rise: RiseOptions | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str | None = on_request(
        "With more than one turn: every turn, labelled, with the introspection prompts between."
    )


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
    token_ids: list[int] | None = on_request("With return_token_ids: the chosen turn's output.")
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
    prompt_token_ids: list[int] | None = on_request(
        "With return_token_ids: the first turn's prompt (the conversation as sent)."
    )


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
    plan = defaults.updated(
        max_turns=rise.max_turns or prefix_turns or 1,  # the plain model name: one turn
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        seed=request.seed,
        stop=stop,
        converge_k=2 if rise.stop_on_convergence else None,
        context_window=rise.context_window,
        feedback=rise.feedback,
        **mode_rules(rise.mode or prefix_mode or "vote"),
    )
    if rise.stop_on_correct is not None:
        plan = replace(plan, stop_on_correct=rise.stop_on_correct)
    return plan


def request_params(request: ChatCompletionRequest) -> FieldNames:
    """Service terms → the fields of this request (where a value came from)."""
    rise = request.rise
    return {
        "prompt": "messages",
        "max_turns": "rise.max_turns" if rise and rise.max_turns else "model",
        "max_tokens": "max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        "mode": "rise.mode" if rise and rise.mode else "model",
        "stop_on_correct": (
            "rise.stop_on_correct"
            if rise and rise.stop_on_correct is not None
            else "rise.mode"
            if rise and rise.mode
            else "model"
        ),
        "feedback": "rise.feedback",
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


def reasoning_heading(index: int, user_message: str) -> str:
    """What opens turn ``index`` (0-based) in ``reasoning_content``.

    Turn 1 is only labelled (its user message is the client's own); a later turn is preceded
    by the introspection prompt the model was given, quoted, so a reader sees why it tries again.
    """
    label = f"**Turn {index + 1}**\n\n"
    if index == 0:
        return label
    quoted = "\n".join(f"> {line}" if line else ">" for line in user_message.splitlines())
    return f"\n\n{quoted}\n\n{label}"


def reasoning_text(turns: Sequence[Turn]) -> str:
    """Every turn as the stream sends it, headings included (the non-streamed field)."""
    return "".join(reasoning_heading(t.index, t.user_message) + t.text for t in turns)


def _finish_reason(episode: Episode, final: FinalAnswer) -> str:
    return "stop" if final.turn is None else episode.turns[final.turn].finish_reason


def _rise_choice(result: SolveResult, index: int, token_ids: bool = False) -> RiseChoice:
    episode, final = result.sessions[index].episode, result.final(index)
    return RiseChoice(
        session_id=episode.id,
        answer=final.answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        chosen_turn=len(episode.turns) - 1 if final.turn is None else final.turn,
        vote=vote_public(final.vote),
        turns=[turn_public(t, token_ids) for t in episode.turns[result.turns_before[index] :]],
    )


def _usage(result: SolveResult) -> ChatUsage:
    usage = usage_of([t for s in result.sessions for t in s.episode.turns])
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def completion_response(
    result: SolveResult, plan: RequestPlan, model: str, token_ids: bool = False
) -> ChatCompletionResponse:
    choices = []
    for index, session in enumerate(result.sessions):
        episode, final = session.episode, result.final(index)
        chosen = None if final.turn is None else episode.turns[final.turn]
        reasoning = reasoning_text(episode.turns) if plan.max_turns > 1 else None
        choices.append(
            ChatChoice(
                index=index,
                message=ChatCompletionMessage(
                    content="" if chosen is None else chosen.text, reasoning_content=reasoning
                ),
                finish_reason=_finish_reason(episode, final),
                token_ids=list(chosen.output_ids) if token_ids and chosen is not None else None,
                rise=_rise_choice(result, index, token_ids),
            )
        )
    first = result.sessions[0].episode.turns[:1]
    return ChatCompletionResponse(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=_usage(result),
        prompt_token_ids=list(first[0].prompt_ids) if token_ids and first else None,
    )


async def completion_chunks(
    events: AsyncIterator[ServiceEvent],
    plan: RequestPlan,
    model: str,
    include_usage: bool,
    params: FieldNames,
    user_message: Callable[[Episode, int], str],
    token_ids: bool = False,
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion (errors become a final error event).

    ``user_message(episode, k)`` is the message turn ``k`` is given (the loop's own rule), for
    the turn's reasoning heading; it is asked at the turn's first token, when the episode holds
    exactly the turns before it, as when the loop asked.
    """
    head: dict[str, Any] = {"id": f"chatcmpl-{secrets.token_hex(12)}", "model": model}
    head |= {"object": "chat.completion.chunk", "created": int(time.time())}
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    plain = plan.max_turns == 1
    result: SolveResult | None = None
    index_of: dict[str, int] = {}
    opened: set[tuple[int, int]] = set()  # (choice, turn) whose reasoning heading is out

    def data(payload: dict[str, Any]) -> str:
        return "data: " + json.dumps(payload) + "\n\n"

    def chunk(
        index: int, delta: dict, finish: str | None = None, top: dict | None = None, **extra: object
    ) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data(head | {"choices": [choice | extra]} | (top or {}) | tail)

    def ids(values: Sequence[int]) -> dict[str, Any]:
        return {"token_ids": list(values)} if token_ids else {}

    def reasoning(index: int, turn: int, text: str, values: Sequence[int]) -> str:
        """A reasoning delta; the turn's heading goes before its first text."""
        if (index, turn) not in opened:
            opened.add((index, turn))
            episode = result.sessions[index].episode  # type: ignore[union-attr]
            text = reasoning_heading(turn, user_message(episode, turn)) + text
        return chunk(index, {"reasoning_content": text}, **ids(values))

    try:
        async for event in events:
            if isinstance(event, Started):
                result = event.result
                index_of = {session.id: i for i, session in enumerate(result.sessions)}
                for index in range(len(result.sessions)):
                    yield chunk(index, {"role": "assistant", "content": ""})
            elif isinstance(event, TokenEvent) and (event.text or event.token_ids):
                index = index_of[event.episode_id]
                if plain:
                    yield chunk(index, {"content": event.text}, **ids(event.token_ids))
                else:
                    yield reasoning(index, event.turn, event.text, event.token_ids)
            elif isinstance(event, TurnEvent) and not plain:
                index, done = index_of[event.episode_id], event.turn
                if (index, done.index) not in opened:  # a turn that streamed no text
                    yield reasoning(index, done.index, done.text, done.output_ids)
                turn = turn_public(done, token_ids).model_dump(exclude_none=True)
                yield chunk(index, {}, rise={"turn": turn})
            elif isinstance(event, EpisodeEvent) and result is not None:
                index, final = index_of[event.episode.id], event.final
                if not plain and final.turn is not None:
                    chosen = event.episode.turns[final.turn]
                    yield chunk(index, {"content": chosen.text}, **ids(chosen.output_ids))
                rise = _rise_choice(result, index, token_ids).model_dump(exclude_none=True)
                first = event.episode.turns[:1]  # its prompt is rendered when turn 1 starts
                top = {"prompt_token_ids": list(first[0].prompt_ids)} if token_ids and first else {}
                yield chunk(index, {}, _finish_reason(event.episode, final), top, rise=rise)
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
    with named_errors(params):
        _refuse_unsupported(body)
        plan = request_plan(body, service.defaults, service.model_name)
        plan.check(service.limits)  # before building n episodes
        episodes = request_episodes(body, plan, service.settings.default_grader)
        job = service.new_job(episodes, plan, owner, root=request_root(request))
        model = body.model or service.model_name
        usage = bool(body.stream_options and body.stream_options.include_usage)
        ids = body.return_token_ids
        return await respond(
            request,
            service,
            job,
            stream=body.stream,
            stream_body=lambda events: completion_chunks(
                events, plan, model, usage, params, service.loop.user_message, ids
            ),
            json_body=lambda result: completion_response(result, plan, model, ids),
        )
