"""The request plan: how one run of RISE turns goes, built once per request (docs/RISE.md §1, §5).

Every surface translates what it was given into one frozen :class:`RequestPlan` and hands that
on; nothing downstream reads a request again:

- ``POST /solve`` and ``POST /sessions/{id}/turns`` (``app/api/solve.py``);
- ``/v1/chat/completions``: the ``rise-N[-mode]/`` model name and the ``rise`` extra body
  (``app/api/openai.py``);
- ``python -m rise solve`` (``rise/cli.py``);
- collection and evaluation, which build their plans from their configs.

The turn loop (:class:`rise.loop.TurnLoop`) runs the plan itself, and
:meth:`RequestPlan.sampling` is the engine's config: every field and every validation rule of a
run exists here once.

``max_turns`` has one meaning everywhere: **the turns this run takes**. For a new episode that
is all of its turns; a continued session takes that many more on top of the ones it has (and so
does ``token_budget``).

The answer rule (``mode``, see :func:`rise.voting.final_answer`) and the stop rules
(``stop_on_correct`` — the oracle, or a verifier's "correct" —, ``converge_k``, ``token_budget``)
are separate fields; the APIs' single ``mode`` field sets both for ``oracle`` (:func:`mode_rules`).
``feedback`` names what the introspection turn says (:mod:`rise.feedback`): ``fixed`` (RISE's
prompt), ``oracle``, ``calculator``, or a verifier the deployment configured.

Defaults live here and nowhere else: a plan field's default is the default of every surface.
The service caps ``max_tokens`` at its ``RISE_MAX_TOKENS`` and takes ``max_turns`` from
``RISE_DEFAULT_MAX_TURNS``; a continuation runs :data:`CONTINUE_TURNS` turns unless told;
the CLI starts from :data:`CLI_PLAN`. The sampling defaults are the engine contract's own
(:class:`rise.engine.base.SamplingConfig`), read from it so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from rise.engine.base import SamplingConfig
from rise.voting import ANSWER_MODES, AnswerMode

FIXED_FEEDBACK, ORACLE_FEEDBACK, CALCULATOR_FEEDBACK = "fixed", "oracle", "calculator"
BUILTIN_FEEDBACK = (FIXED_FEEDBACK, ORACLE_FEEDBACK, CALCULATOR_FEEDBACK)
"""The feedback providers every deployment has (rise.feedback; the names are owned here so the
plan can check them without importing the providers)."""

if TYPE_CHECKING:
    from rise.episode import Episode

__all__ = [
    "BUILTIN_FEEDBACK",
    "CLI_PLAN",
    "CONTINUE_TURNS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TURNS",
    "PlanError",
    "PlanLimits",
    "RequestPlan",
    "mode_rules",
]

_ENGINE = SamplingConfig()
DEFAULT_MAX_TURNS = 5  # turns of a new solve (the paper's evaluation uses 5)
DEFAULT_MAX_TOKENS = _ENGINE.max_tokens  # tokens per turn (512); /v1 used RISE_MAX_TOKENS before
CONTINUE_TURNS = 1  # turns a continued session takes when the request names none


class PlanError(ValueError):
    """A plan that cannot run; ``field`` names the plan (or episode) field at fault.

    The API layer turns it into a 400 naming the request's own JSON field.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PlanLimits:
    """A deployment's upper bounds on a plan (the service's ``RISE_MAX_*`` settings)."""

    max_turns: int
    max_tokens: int
    n: int
    feedback: tuple[str, ...] = BUILTIN_FEEDBACK  # the providers offered (+ its verifiers)


@dataclass(frozen=True)
class RequestPlan:
    """Turns, episodes, answer rule, stop rules, context and sampling of one run."""

    # -- how much work
    max_turns: int = DEFAULT_MAX_TURNS  # turns this run takes (see the module docstring)
    n: int = 1  # independent episodes of the same prompt (OpenAI's `n`)
    # -- the answer rule: vote | last | oracle (rise.voting.final_answer)
    mode: AnswerMode = "vote"
    # -- stop rules, besides max_turns
    stop_on_correct: bool = False  # the oracle: stop at the first turn graded correct
    converge_k: int | None = None  # stop once the last k answers agree (k >= 2)
    token_budget: int | None = None  # generated tokens of this run, all turns together
    # -- what the model sees
    context_window: int | None = None  # keep the last k attempts; None keeps every turn
    feedback: str = FIXED_FEEDBACK  # what the introspection turn says (rise.feedback)
    # -- sampling, per turn
    temperature: float = _ENGINE.temperature
    top_p: float = _ENGINE.top_p
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None  # per-request seed; each episode and turn derives its own
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            ("max_turns", self.max_turns >= 1, "must be at least 1"),
            ("n", self.n >= 1, "must be at least 1"),
            ("mode", self.mode in ANSWER_MODES, f"must be one of {', '.join(ANSWER_MODES)}"),
            ("converge_k", self.converge_k is None or self.converge_k >= 2, "must be >= 2"),
            ("token_budget", self.token_budget is None or self.token_budget >= 1, "must be >= 1"),
            ("context_window", self.context_window is None or self.context_window >= 1, ">= 1"),
            ("feedback", bool(self.feedback), "must name a feedback provider"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("max_tokens", self.max_tokens >= 1, "must be at least 1"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise PlanError(f"{name} {message} (got {getattr(self, name)!r})", name)

    # -- building -----------------------------------------------------------------------------

    def updated(self, **changes: Any) -> RequestPlan:
        """This plan with the given fields replaced; ``None`` leaves a field as it is.

        How every surface applies a request's options: an option the request leaves unset
        keeps the default (a new run) or the session's value (a continuation).
        """
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def options(self) -> dict[str, Any]:
        """The plan as JSON (a session stores it; :meth:`from_options` reads it back)."""
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **changes: Any) -> RequestPlan:
        """A stored plan, then ``changes`` (as :meth:`updated`); unknown keys are ignored.

        Reads sessions stored before the plan existed too: their ``stop_on_convergence``
        meant ``converge_k = 2``, and their ``mode = oracle`` implied the oracle stop rule.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in options.items() if k in known and v is not None}
        if options.get("stop_on_convergence") and "converge_k" not in values:
            values["converge_k"] = 2
        if "stop_on_correct" not in options:
            values["stop_on_correct"] = options.get("mode") == "oracle"
        return cls(**values).updated(**changes)

    # -- checking -----------------------------------------------------------------------------

    @property
    def needs_reference(self) -> bool:
        """Whether turns must be graded against a reference: the oracle answer rule or
        feedback, or stopping at a correct turn with no verifier to say so."""
        if self.mode == "oracle" or self.feedback == ORACLE_FEEDBACK:
            return True
        return self.stop_on_correct and self.feedback in BUILTIN_FEEDBACK

    def check(self, limits: PlanLimits, episodes: Iterable[Episode] = ()) -> None:
        """Raise :class:`PlanError` beyond the deployment's bounds or without a needed reference."""
        for name in ("max_turns", "max_tokens", "n"):
            value, limit = getattr(self, name), getattr(limits, name)
            if value > limit:
                raise PlanError(f"{name} must be at most {limit} here (got {value})", name)
        if self.feedback not in limits.feedback:
            offered = ", ".join(limits.feedback)
            raise PlanError(f"feedback must be one of {offered} here (got {self.feedback!r})",
                            "feedback")  # fmt: skip
        if self.needs_reference and any(e.reference is None for e in episodes):
            raise PlanError(f"mode {self.mode!r} needs a reference answer", "reference")

    # -- what the core runs -------------------------------------------------------------------

    def sampling(self) -> SamplingConfig:
        """The engine's sampling config for every turn (seeds are derived per episode/turn)."""
        return SamplingConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
            stop=self.stop,
        )


def mode_rules(mode: AnswerMode | None) -> dict[str, Any]:
    """A surface's single ``mode`` as the plan's rules: ``oracle`` also stops at a correct turn.

    ``{}`` for ``None`` (unset: keep what the plan has).
    """
    if mode is None:
        return {}
    return {"mode": mode, "stop_on_correct": mode == "oracle"}


# `python -m rise solve` shows the bundled 135M model, which rambles to the token cap at
# temperature 1.0 (README, "The experiment"): the CLI starts from a cooler, shorter plan.
CLI_PLAN = RequestPlan(temperature=0.7, max_tokens=384)
