"""Wire models of the service (pydantic v2), in one place.

Request bodies of the RISE API forbid unknown fields, so a typo is a 400 naming it rather than a
silently ignored option. The OpenAI request ignores fields it does not know (clients send many
optional ones); the few that would change the result and are not supported are refused by the
translator in :mod:`app.chat`. Bounds that depend on the deployment (``max_turns``,
``max_tokens``, ``n``) are checked by the service against the settings and written into the
OpenAPI schema by :func:`app.main.create_app`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rise.answers import GRADER_NAMES


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
Mode = Literal["vote", "last", "oracle"]
GraderName = Literal[GRADER_NAMES]  # type: ignore[valid-type]
SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- POST /solve, POST /sessions/{id}/turns ----------------------------------------------------


class SamplingOptions(_Request):
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
    mode: Mode | None = Field(
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


class SolveMessage(_Request):
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


class SolveResponse(BaseModel):
    session_id: str
    model: str
    mode: Mode
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
    mode: Mode
    answer: str | None
    stop_reason: str | None
    turns: list[TurnPublic]
    vote: VotePublic
    messages: list[MessagePublic]
    options: dict[str, Any]
    created_at: float
    updated_at: float


# ---- /v1 (OpenAI) ------------------------------------------------------------------------------


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_OpenAIRequest):
    type: str
    text: Text | None = None


class ChatMessage(_OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_OpenAIRequest):
    include_usage: bool = False


class RiseOptions(_Request):
    """RISE options in the OpenAI body's extra field `rise` (override a `rise-N/` prefix)."""

    max_turns: int | None = Field(None, ge=1)
    mode: Mode | None = None
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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rise"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- operations and errors ---------------------------------------------------------------------


class Status(BaseModel):
    status: str
    model: str | None = None


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
