"""Service settings (env prefix ``RISE_``): the engine's, plus HTTP, sessions and limits.

This class is the single source of truth for the service's port and every ``RISE_*`` variable;
the Docker and Kubernetes files are checked against it by the deployment tests.

The deployment's upper bounds on a request are named as bounds (``RISE_TURN_LIMIT``,
``RISE_TOKEN_LIMIT``), because a request's ``max_turns`` and ``max_tokens`` are the values it
runs with: under the same names, a bound read as the value a request gets. The old names
(``RISE_MAX_TURNS``, ``RISE_MAX_TOKENS``) are still read, each with a deprecation warning in the
log (:class:`RenamedEnv`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource

from rise.answers import GRADER_NAMES
from rise.engine.config import EngineSettings
from rise.feedback.verifier import VerifierSettings, parse_verifiers
from rise.plan import BUILTIN_FEEDBACK, DEFAULT_MAX_TURNS, PlanLimits

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000


class Settings(EngineSettings, VerifierSettings):
    """Everything the service reads from the environment (the engine's and the verifiers'
    settings included)."""

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
    turn_limit: int = Field(
        10,
        ge=1,
        le=50,
        description="Upper bound on a request's max_turns (formerly RISE_MAX_TURNS).",
    )
    default_max_turns: int = Field(
        DEFAULT_MAX_TURNS,
        ge=1,
        description="Turns of a new /solve, and N of rise-N/ in /v1/models.",
    )
    token_limit: int = Field(
        1024,
        ge=1,
        description="Upper bound on a request's max_tokens, per turn (formerly RISE_MAX_TOKENS).",
    )
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
        verifiers = tuple(parse_verifiers(self.verifiers))
        return PlanLimits(
            max_turns=self.turn_limit,
            max_tokens=self.token_limit,
            n=self.max_choices,
            feedback=(*BUILTIN_FEEDBACK, *verifiers),
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources, with the renamed variables read just after the new ones
        (so a new name, or an argument, wins over an old one)."""
        renamed = RenamedEnv(settings_cls, RENAMED)
        return init_settings, env_settings, renamed, dotenv_settings, file_secret_settings

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
        if self.default_max_turns > self.turn_limit:
            raise ValueError("default_max_turns must not exceed turn_limit")
        return self


RENAMED = {"RISE_MAX_TURNS": "turn_limit", "RISE_MAX_TOKENS": "token_limit"}
"""Deprecated environment variables -> the settings fields that replaced them."""


class RenamedEnv(PydanticBaseSettingsSource):
    """Environment variables under their old names, each read with a deprecation warning.

    A renamed setting must not break a deployment that still sets the old name: its value is
    used (unless the new name is set too, which wins) and the log says what to set instead.
    """

    def __init__(self, settings_cls: type[BaseSettings], renamed: dict[str, str]) -> None:
        super().__init__(settings_cls)
        self.renamed = renamed

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the old names itself

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        environ = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for old, field in self.renamed.items():
            if old not in environ:
                continue
            new = f"{prefix}{field}".upper()
            if new in environ:
                logger.warning("%s is deprecated and ignored: %s is set", old, new)
            else:
                logger.warning(
                    "%s is deprecated: set %s instead (the same bound, renamed)", old, new
                )
                values[field] = environ[old]
        return values
