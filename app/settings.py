"""Service settings (env prefix ``RISE_``): the engine's, plus HTTP, sessions and limits.

This class is the single source of truth for the service's port and every ``RISE_*`` variable;
the Docker and Kubernetes files are checked against it by the deployment tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from rise.answers import GRADER_NAMES
from rise.engine.config import EngineSettings
from rise.plan import DEFAULT_MAX_TURNS, PlanLimits

DEFAULT_PORT = 8000


class Settings(EngineSettings):
    """Everything the service reads from the environment."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in containers.")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="TCP port the service listens on.")
    served_model_name: str | None = Field(
        None, description="Name under /v1/models; defaults to the model's name."
    )
    redis_url: str | None = Field(
        None, description="Redis for sessions (redis://host:6379/0); unset = in-process memory."
    )
    session_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="How long sessions live.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted Bearer keys, comma separated; empty = no authentication.",
    )
    max_turns: int = Field(10, ge=1, le=50, description="Upper bound on turns per request.")
    default_max_turns: int = Field(
        DEFAULT_MAX_TURNS,
        ge=1,
        description="Turns of a new /solve, and N of rise-N/ in /v1/models.",
    )
    max_tokens: int = Field(1024, ge=1, description="Upper bound on tokens per turn.")
    max_concurrent_solves: int = Field(32, ge=1, description="Solves running at once.")
    max_queued_solves: int = Field(64, ge=0, description="Solves waiting beyond those; then 429.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest accepted request body.")
    log_level: str = Field(
        "info", description="Log level of the service and uvicorn: debug, info, warning, error."
    )
    # -- added with the service (app/) ------------------------------------------------------
    default_grader: str = Field(
        "gsm8k",
        description="Grader when a request names none: gsm8k reads \\boxed{} or the last number.",
    )
    max_choices: int = Field(8, ge=1, le=128, description="Upper bound on OpenAI `n`.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 429 and 503.")
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, how long running solves may finish before they are "
        "cancelled and persisted as they stand.",
    )
    redis_timeout_s: float = Field(
        2.0, gt=0, description="Socket timeout of each Redis call; an outage answers 503 after it."
    )
    prompts: Path | None = Field(
        None,
        description="Prompt file (JSON or YAML: first_turn, introspection, system, "
        "demonstrations). Default: the model folder's rise_prompts.json, else the paper's.",
    )
    prompts_override: bool = Field(
        False,
        description="Serve with RISE_PROMPTS even where the model folder's rise_prompts.json "
        "(the prompts it was trained with) differs; without it that is a start-up error.",
    )
    session_lease_s: int = Field(
        300,
        ge=10,
        description="A running solve holds its session this long (renewed per turn) "
        "so that no other replica continues it at the same time.",
    )

    def plan_limits(self) -> PlanLimits:
        """The bounds every request plan is checked against."""
        return PlanLimits(max_turns=self.max_turns, max_tokens=self.max_tokens, n=self.max_choices)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("default_grader")
    @classmethod
    def _known_grader(cls, value: str) -> str:
        if value not in GRADER_NAMES:
            raise ValueError(f"unknown grader {value!r}; expected one of {', '.join(GRADER_NAMES)}")
        return value

    @model_validator(mode="after")
    def _check_turns(self) -> Settings:
        if self.default_max_turns > self.max_turns:
            raise ValueError("default_max_turns must not exceed max_turns")
        return self
