"""OpenAI chat completions on the RISE service: request → solve job, results → OpenAI JSON/SSE.

The conversation's last user message is the question; earlier messages are the episode's
context; the first turn sends the messages exactly as given, so with one turn (the default)
this is a plain chat model. RISE comes in through the model name (``rise-5/<model>``, or
``rise-5-last/<model>``) and the extra body field ``rise`` (``{"max_turns": 5, "mode": "vote"}``;
it overrides the prefix). Each of the ``n`` choices is one episode (one session); its message
is the response of the chosen turn (the vote winner's latest turn, or the last turn), and every
turn is in the choice's ``rise`` field.

Streaming follows OpenAI's chunk format: a role chunk per choice, content deltas, a finish
chunk, an optional usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. With one
turn the content streams token by token; with more, the chosen turn is only known at the end,
so each turn end is a progress chunk (empty delta, the turn in ``rise``) and the chosen
response follows as one delta.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator

from app.errors import InvalidRequest, NotFound, ServiceError, error_body
from app.schemas import (
    ChatChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatUsage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    RiseChoice,
)
from app.service import (
    ServiceEvent,
    SolveJob,
    SolveService,
    Started,
    TurnPlan,
    check_bound,
    episode_from_messages,
)
from app.views import turn_public, usage_of, vote_public
from rise.loop import EpisodeEvent, TokenEvent, TurnEvent

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"^rise-(\d{1,3})(?:-(vote|last))?/(.+)$")


def parse_model(name: str | None, served: str) -> tuple[int | None, str | None]:
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
    return int(match.group(1)), match.group(2)


def model_list(service: SolveService) -> ModelList:
    created = int(time.time())
    served, turns = service.model_name, service.settings.default_max_turns
    return ModelList(
        data=[
            ModelCard(id=name, created=created, max_model_len=service.engine.max_model_len)
            for name in (served, f"rise-{turns}/{served}")
        ]
    )


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


def build_job(request: ChatCompletionRequest, service: SolveService, owner: str | None) -> SolveJob:
    """Translate a chat completion request into a solve job (400/404 on what cannot run)."""
    settings = service.settings
    _refuse_unsupported(request)
    prefix_turns, prefix_mode = parse_model(request.model, service.model_name)
    check_bound(request.n, settings.max_choices, "n")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
        for i, m in enumerate(request.messages)
    ]
    rise = request.rise
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    plan = TurnPlan(
        max_turns=(rise and rise.max_turns) or prefix_turns or 1,
        mode=(rise and rise.mode) or prefix_mode or "vote",  # type: ignore[arg-type]
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        max_tokens=request.max_completion_tokens or request.max_tokens or settings.max_tokens,
        seed=request.seed,
        stop=stop,
        stop_on_convergence=bool(rise and rise.stop_on_convergence),
        context_window=rise.context_window if rise else None,
    )
    reference = rise.reference if rise else None
    grader = (rise and rise.grader) or settings.default_grader
    episodes = [episode_from_messages(messages, reference, grader) for _ in range(request.n)]
    turns_param = "rise.max_turns" if rise and rise.max_turns else "model"
    return service.new_job(
        episodes,
        plan,
        owner,
        stream=request.stream,
        prompt_param="messages",
        max_turns_param=turns_param,
    )


def _chosen_turn(job: SolveJob, index: int) -> int:
    episode = job.sessions[index].episode
    vote = job.votes.get(episode.id)
    if job.plan.mode == "vote" and vote is not None and vote.winner_turn is not None:
        return vote.winner_turn
    return len(episode.turns) - 1


def _rise_choice(job: SolveJob, index: int) -> RiseChoice:
    episode = job.sessions[index].episode
    before = job.turns_before[index]
    return RiseChoice(
        session_id=episode.id,
        answer=episode.final_answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        chosen_turn=_chosen_turn(job, index),
        vote=vote_public(job.votes[episode.id]),
        turns=[turn_public(t) for t in episode.turns[before:]],
    )


def _usage(job: SolveJob) -> ChatUsage:
    turns = [t for s in job.sessions for t in s.episode.turns]
    usage = usage_of(turns)
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def completion_response(job: SolveJob, model: str) -> ChatCompletionResponse:
    choices = []
    for index, session in enumerate(job.sessions):
        turns = session.episode.turns
        chosen = turns[_chosen_turn(job, index)] if turns else None
        choices.append(
            ChatChoice(
                index=index,
                message=ChatCompletionMessage(content=chosen.text if chosen else ""),
                finish_reason=chosen.finish_reason if chosen else "stop",
                rise=_rise_choice(job, index),
            )
        )
    return ChatCompletionResponse(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=_usage(job),
    )


async def completion_chunks(
    events: AsyncIterator[ServiceEvent], job: SolveJob, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion (errors become a final error event)."""
    head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion.chunk"}
    head |= {"created": int(time.time()), "model": model}
    tail = {"usage": None} if include_usage else {}
    plain = job.plan.max_turns == 1
    index_of = {session.id: i for i, session in enumerate(job.sessions)}

    def chunk(index: int, delta: dict, finish: str | None = None, **extra: object) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return "data: " + json.dumps(head | {"choices": [choice | extra]} | tail) + "\n\n"

    try:
        async for event in events:
            if isinstance(event, Started):
                for index in range(len(job.sessions)):
                    yield chunk(index, {"role": "assistant", "content": ""})
            elif isinstance(event, TokenEvent) and plain and event.text:
                yield chunk(index_of[event.episode_id], {"content": event.text})
            elif isinstance(event, TurnEvent) and not plain:
                turn = turn_public(event.turn).model_dump()
                yield chunk(index_of[event.episode_id], {}, rise={"turn": turn})
            elif isinstance(event, EpisodeEvent):
                index = index_of[event.episode.id]
                turns = event.episode.turns
                chosen = turns[_chosen_turn(job, index)] if turns else None
                if not plain and chosen is not None:
                    yield chunk(index, {"content": chosen.text})
                rise = _rise_choice(job, index).model_dump()
                finish = chosen.finish_reason if chosen else "stop"
                yield chunk(index, {}, finish, rise=rise)
        if include_usage:
            usage = _usage(job).model_dump()
            yield "data: " + json.dumps(head | {"choices": [], "usage": usage}) + "\n\n"
    except ServiceError as error:
        yield "data: " + json.dumps(error.body()) + "\n\n"
    except Exception:
        logger.exception("chat completion stream failed")
        yield "data: " + json.dumps(error_body("internal server error", "internal_error")) + "\n\n"
    yield "data: [DONE]\n\n"
