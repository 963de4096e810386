"""The wire types the API surfaces share (after vLLM's ``entrypoints/openai/protocol.py``).

Each surface keeps its own request and response models beside its router; what both ``/solve``
and ``/v1`` put on the wire lives here once, so the two cannot drift apart:

- request field types: text the tokenizer can encode, a non-blank question, a grader name, a
  seed, and :class:`StrictRequest` (RISE's own bodies refuse unknown fields);
- response models: a turn, a vote, token usage, and the error body with the OpenAPI entries of
  the errors every route may answer;
- a conversation as an episode (:func:`episode_from_messages`): both surfaces accept chat
  messages and must read them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.errors import InvalidRequest
from rise.answers import GRADER_NAMES
from rise.episode import Episode, Turn
from rise.loop import new_episode
from rise.voting import Vote

# ---- request field types -----------------------------------------------------------------------


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
FeedbackName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][\w-]*$")]
FEEDBACK_DESCRIPTION = (
    "What the introspection turn says (docs/RISE.md, 'Feedback'): fixed (RISE's prompt, the "
    "default), oracle (right/wrong from `reference`), calculator (names wrong arithmetic), or "
    "the name of a verifier this deployment configures (RISE_VERIFIERS; GET /feedback lists them)."
)


class StrictRequest(BaseModel):
    """A RISE request body: unknown fields are a 400 naming them, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ---- response models ---------------------------------------------------------------------------


def _is_none(value: object) -> bool:
    return value is None


def on_request(description: str) -> Any:
    """A response field sent only when asked for: left out of the JSON while it is ``None``."""
    return Field(None, description=description, exclude_if=_is_none)


class FeedbackPublic(BaseModel):
    provider: str = Field(description="fixed, oracle, calculator, or a verifier's name.")
    verdict: Literal["correct", "incorrect", "unknown"]
    message: str = Field(description="What the next turn was (or would be) told.")
    slips: list[str] = Field(
        description="The calculator's wrong statements, '12 x 6 = 72, not 62'."
    )
    error: str | None = Field(
        description="A verifier that failed: timeout, unreachable, status or malformed."
    )
    latency_s: float


class TurnPublic(BaseModel):
    index: int
    text: str
    answer: str | None
    outcome: Literal["correct", "wrong", "unparseable"] | None
    feedback: FeedbackPublic | None = Field(
        None, description="The feedback provider's judgement of this turn (none: stored before)."
    )
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
        feedback=None if turn.feedback is None else FeedbackPublic(**turn.feedback.to_dict()),
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


# ---- a conversation as an episode ----------------------------------------------------------------


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
