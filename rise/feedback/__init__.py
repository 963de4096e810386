"""Feedback: what the introspection turn says about an attempt (issue 31; docs/RISE.md §1).

RISE's introspection turn is fixed ("The answer is incorrect. Please try again. ..."): it says
nothing the model can use. Many users have a verifier for their domain, and its verdict belongs
exactly there. A :class:`FeedbackProvider` judges one attempt (the problem, the attempt's text
and extracted answer, the reference where there is one) and returns :class:`Feedback`: the next
introspection message and a verdict (correct / incorrect / unknown). Providers:

- ``fixed`` — RISE's prompt whatever the attempt, verdict unknown (the paper's setting and the
  default: unchanged behaviour);
- ``oracle`` — right or wrong from the reference (the ``oracle`` answer mode's feedback);
- ``calculator`` — every arithmetic statement checked exactly (:mod:`rise.feedback.calculator`);
  the first wrong ones are named, verdict incorrect; none found is verdict unknown, since a
  calculator cannot prove an answer right;
- a *verifier*: an HTTP checker the operator names in settings (``RISE_VERIFIERS``,
  :mod:`rise.feedback.verifier`), picked by a request by name only.

Which provider a run uses is the request plan's ``feedback`` field, chosen per request like the
answer mode. The wording lives in the prompt file (:class:`rise.prompts.PromptConfig`'s
``feedback_*`` templates), so a checkpoint trained with feedback carries it and is served with
it. The loop (:mod:`rise.loop`) asks the plan's provider after every turn and keeps the result
on the turn; the next turn's user message is the feedback's message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rise.episode import Feedback, Outcome, Verdict
from rise.plan import BUILTIN_FEEDBACK, CALCULATOR_FEEDBACK, FIXED_FEEDBACK, ORACLE_FEEDBACK
from rise.prompts import PromptConfig

__all__ = [
    "BUILTIN_PROVIDERS",
    "CALCULATOR",
    "FIXED",
    "ORACLE",
    "Attempt",
    "CalculatorFeedback",
    "Feedback",
    "FeedbackProvider",
    "FeedbackProviders",
    "FixedFeedback",
    "OracleFeedback",
    "Verdict",
    "configured_providers",
]

FIXED, ORACLE, CALCULATOR = FIXED_FEEDBACK, ORACLE_FEEDBACK, CALCULATOR_FEEDBACK
BUILTIN_PROVIDERS = BUILTIN_FEEDBACK
MAX_SLIPS_NAMED = 2  # the calculator names the first two wrong statements


@dataclass(frozen=True)
class Attempt:
    """One turn as a provider sees it."""

    question: str
    text: str  # the attempt as written
    answer: str | None  # its extracted final answer
    turn: int  # 0-based index of the turn judged
    reference: str | None = None
    outcome: Outcome | None = None  # the grade against the reference, when there is one


class FeedbackProvider(Protocol):
    """Judges one attempt; never raises for a bad attempt or a failing checker."""

    @property
    def name(self) -> str: ...

    async def judge(self, attempt: Attempt, prompts: PromptConfig) -> Feedback: ...


@dataclass(frozen=True)
class FixedFeedback:
    """RISE's introspection prompt after every attempt (the paper; the default)."""

    name: str = FIXED

    async def judge(self, attempt: Attempt, prompts: PromptConfig) -> Feedback:
        return Feedback(self.name, Verdict.UNKNOWN, prompts.introspection_message(attempt.question))


@dataclass(frozen=True)
class OracleFeedback:
    """Right or wrong from the reference: RISE's prompt after a wrong attempt (as the oracle
    mode always had it), ``feedback_correct`` after a right one. Plans that use it need a
    reference (:meth:`rise.plan.RequestPlan.needs_reference`)."""

    name: str = ORACLE

    async def judge(self, attempt: Attempt, prompts: PromptConfig) -> Feedback:
        if attempt.outcome is Outcome.CORRECT:
            return Feedback(self.name, Verdict.CORRECT, prompts.correct_message(attempt.question))
        verdict = Verdict.UNKNOWN if attempt.outcome is None else Verdict.INCORRECT
        return Feedback(self.name, verdict, prompts.introspection_message(attempt.question))


@dataclass(frozen=True)
class CalculatorFeedback:
    """Every arithmetic statement of the attempt checked with exact arithmetic; the first
    :data:`MAX_SLIPS_NAMED` wrong ones named (verdict incorrect). Without a slip it says what
    RISE's prompt says, verdict unknown: it cannot prove an answer right."""

    name: str = CALCULATOR

    async def judge(self, attempt: Attempt, prompts: PromptConfig) -> Feedback:
        from rise.feedback.calculator import find_slips

        started = time.perf_counter()
        # In a worker thread: a long attempt is checked in time quadratic in its length at worst
        # (rise/feedback/calculator.py), and the service's event loop must not wait on it.
        found = await asyncio.to_thread(find_slips, attempt.text)
        slips = tuple(str(slip) for slip in found[:MAX_SLIPS_NAMED])
        latency = time.perf_counter() - started
        if not slips:
            message = prompts.introspection_message(attempt.question)
            return Feedback(self.name, Verdict.UNKNOWN, message, latency_s=latency)
        message = prompts.slips_message(attempt.question, "; ".join(slips))
        return Feedback(self.name, Verdict.INCORRECT, message, slips, latency_s=latency)


@dataclass
class FeedbackProviders:
    """The providers a deployment offers, by name: the built-ins and its configured verifiers."""

    verifiers: Mapping[str, FeedbackProvider] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.verifiers) & set(BUILTIN_PROVIDERS))
        if clash:
            raise ValueError(f"verifier names {clash} are taken by built-in feedback providers")
        self._providers: dict[str, FeedbackProvider] = {
            FIXED: FixedFeedback(),
            ORACLE: OracleFeedback(),
            CALCULATOR: CalculatorFeedback(),
            **self.verifiers,
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._providers)

    def get(self, name: str) -> FeedbackProvider:
        """The provider called ``name`` (KeyError naming the known ones)."""
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(
                f"unknown feedback {name!r}; this deployment offers {', '.join(self.names)}"
            ) from None

    def is_verifier(self, name: str) -> bool:
        return name in self.verifiers

    async def aclose(self) -> None:
        """Close the verifiers' HTTP clients."""
        for verifier in self.verifiers.values():
            close = getattr(verifier, "aclose", None)
            if close is not None:
                await close()


def configured_providers() -> FeedbackProviders:
    """The built-in providers and the verifiers ``RISE_VERIFIERS`` names (what the service,
    collection and evaluation offer)."""
    from rise.feedback.verifier import VerifierSettings

    return FeedbackProviders(VerifierSettings().providers())  # type: ignore[call-arg]
