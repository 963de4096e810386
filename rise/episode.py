"""Episode and Turn: the state of one RISE multi-turn MDP (docs/RISE.md §1).

An episode keeps both views of the conversation: the messages a person reads, and the exact
token ids the engine saw and produced at every turn. The ids are the source of truth for
continuation (turn t+1's prompt extends turn t's prompt + output) and for training; the text is
what graders, voting and clients read. Everything here is plain data, serialisable to JSON and
back without loss, so the service can persist sessions and the trainer can write trajectories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from rise.affinity import new_root


class Outcome(StrEnum):
    """How one turn's answer compares with the reference (docs/RISE.md §1).

    The public code folds "no parseable answer" into reward -1; it is kept as its own outcome.
    """

    CORRECT = "correct"
    WRONG = "wrong"
    UNPARSEABLE = "unparseable"

    @property
    def reward(self) -> float:
        """The paper's scalar reward: 1 correct, 0 wrong, -1 no parseable answer."""
        return {Outcome.CORRECT: 1.0, Outcome.WRONG: 0.0, Outcome.UNPARSEABLE: -1.0}[self]


class StopReason(StrEnum):
    """Why an episode ended; one value per stopping rule of the loop."""

    MAX_TURNS = "max_turns"
    ORACLE = "oracle"
    CONVERGED = "converged"
    TOKEN_BUDGET = "token_budget"
    CONTEXT_FULL = "context_full"
    CANCELLED = "cancelled"
    ERROR = "error"


class Verdict(StrEnum):
    """What a provider knows about an attempt."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Feedback:
    """A provider's judgement of one turn: the message the next turn answers, and a verdict."""

    provider: str
    verdict: Verdict
    message: str  # the next turn's user message
    slips: tuple[str, ...] = ()  # the calculator's wrong statements ("12 x 6 = 72, not 62")
    error: str | None = None  # a verifier that failed: timeout | unreachable | status | malformed
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "verdict": self.verdict.value,
            "message": self.message,
            "slips": list(self.slips),
            "error": self.error,
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feedback:
        return cls(
            provider=str(data["provider"]),
            verdict=Verdict(data["verdict"]),
            message=str(data["message"]),
            slips=tuple(data.get("slips") or ()),
            error=data.get("error"),
            latency_s=float(data.get("latency_s") or 0.0),
        )


@dataclass
class Turn:
    """One action a_t of the MDP, with everything needed to replay, grade, bill and train on it."""

    index: int  # 0-based turn number
    user_message: str  # the user message right before this action (first-turn or introspection)
    prompt_ids: list[int]  # the exact prompt sent to the engine
    output_ids: list[int]  # the exact tokens generated (a closing EOS included when emitted)
    text: str  # decoded response, special tokens removed
    finish_reason: str  # "stop" | "length" | "abort"
    ended_with_eos: bool = True  # whether output_ids already close the assistant turn
    answer: str | None = None  # the extracted final answer, None when none could be parsed
    outcome: Outcome | None = None  # only when a reference is known
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    latency_s: float = 0.0  # submit → last token
    first_token_s: float | None = None  # submit → first token
    feedback: Feedback | None = None  # the plan's provider on this turn (rise.feedback)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def reward(self) -> float | None:
        return None if self.outcome is None else self.outcome.reward

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every token id one by one, and sessions are
        # written after every turn (it was ~75% of the service's CPU per solve). Shallow copies
        # of the id lists give the same dict.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["prompt_ids"] = list(self.prompt_ids)
        data["output_ids"] = list(self.output_ids)
        data["outcome"] = None if self.outcome is None else self.outcome.value
        data["feedback"] = None if self.feedback is None else self.feedback.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("outcome") is not None:
            kwargs["outcome"] = Outcome(kwargs["outcome"])
        if kwargs.get("feedback") is not None:
            kwargs["feedback"] = Feedback.from_dict(kwargs["feedback"])
        return cls(**kwargs)


@dataclass
class Episode:
    """A problem and the turns taken on it so far."""

    question: str
    reference: str | None = None
    grader: str = "math"
    # Messages before the first turn's user message (system prompt, a demonstration, earlier chat).
    context: list[dict[str, str]] = field(default_factory=list)
    id: str = field(default_factory=new_root)  # the session id (rise.affinity)
    turns: list[Turn] = field(default_factory=list)
    stop_reason: StopReason | None = None
    final_answer: str | None = None  # set by the loop from the vote or the last turn
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def answers(self) -> list[str | None]:
        return [turn.answer for turn in self.turns]

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def output_tokens(self) -> int:
        return sum(turn.output_tokens for turn in self.turns)

    @property
    def prompt_tokens(self) -> int:
        return sum(turn.prompt_tokens for turn in self.turns)

    @property
    def cached_tokens(self) -> int:
        return sum(turn.cached_tokens for turn in self.turns)

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages: what a person (or a text-only client) reads."""
        out = [dict(m) for m in self.context]
        for turn in self.turns:
            out.append({"role": "user", "content": turn.user_message})
            out.append({"role": "assistant", "content": turn.text})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "reference": self.reference,
            "grader": self.grader,
            "context": self.context,
            "turns": [turn.to_dict() for turn in self.turns],
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "final_answer": self.final_answer,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Episode:
        stop = data.get("stop_reason")
        return cls(
            id=data["id"],
            question=data["question"],
            reference=data.get("reference"),
            grader=data.get("grader", "math"),
            context=[dict(m) for m in data.get("context", [])],
            turns=[Turn.from_dict(t) for t in data.get("turns", [])],
            stop_reason=None if stop is None else StopReason(stop),
            final_answer=data.get("final_answer"),
            metadata=dict(data.get("metadata", {})),
        )
