"""The records that flow through training: trajectories → examples and preference pairs.

``collect`` writes :class:`Trajectory` lines, ``build`` reads them and writes :class:`Example`
and :class:`PreferencePair` lines, ``train`` reads those. Each record is a dataclass with one
``to_dict``/``from_dict`` pair and each file kind has one reader and one writer here, so a
field is named, typed and defaulted in exactly one place. Rewards come from one table,
:attr:`rise.episode.Outcome.reward`; an example without a weight is an error (a silent 1.0
would train a wrong answer at the weight of a right one).

The JSON shapes are plain, so files stay readable by ``jq`` and by other tools::

    trajectory: {"problem_id", "question", "reference", "grader", "source", "context",
                 "turns": [{"index", "user_message", "prompt_ids", "candidates": [...],
                            "chosen", "dropped"}], "iteration", "seed"}
    candidate:  {"text", "output_ids", "ended_with_eos", "answer", "outcome", "reward",
                 "source"}
    example:    {"kind": "sft", "input_ids", "labels", "weight", "problem_id", "turn", ...}
    pair:       {"kind": "pair", "prompt_ids", "chosen_ids", "rejected_ids", "weight", ...}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from rise.episode import Outcome, Turn
from rise_train.datasets import jsonl_rows

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a context token: no loss (the Hugging Face convention)

# The transition an example's target makes from the previous chosen attempt of its trajectory.
Transition = Literal[
    "first", "wrong_to_right", "right_to_right", "wrong_to_wrong", "right_to_wrong"
]
TRANSITIONS: tuple[Transition, ...] = (
    "first", "wrong_to_right", "right_to_right", "wrong_to_wrong", "right_to_wrong",
)  # fmt: skip


def reward_of(outcome: str | Outcome | None) -> float:
    """The reward of an outcome, from the one table (:attr:`Outcome.reward`)."""
    if outcome is None:
        raise ValueError("no outcome to take a reward from")
    try:
        return Outcome(outcome).reward
    except ValueError:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {list(Outcome)}") from None


def transition(previous_reward: float | None, reward: float) -> Transition:
    """``first`` at turn 1, else wrong/right → wrong/right (right means reward 1)."""
    if previous_reward is None:
        return "first"
    before = "right" if previous_reward >= 1.0 else "wrong"
    after = "right" if reward >= 1.0 else "wrong"
    return f"{before}_to_{after}"  # type: ignore[return-value]


def _pick(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in known}


# -- trajectories ------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One scored candidate action of a turn."""

    text: str
    reward: float
    output_ids: list[int] | None = None  # None: stored as text only (rendered when building)
    ended_with_eos: bool = True
    answer: str | None = None
    outcome: str | None = None
    source: str = "policy"  # policy | teacher | solution (rise_train.collect)

    @property
    def correct(self) -> bool:
        return self.reward >= 1.0

    @classmethod
    def from_turn(cls, turn: Turn, source: str) -> Candidate:
        if turn.outcome is None:
            raise ValueError("a candidate needs a graded turn (the problem has no reference?)")
        return cls(
            text=turn.text,
            reward=turn.outcome.reward,
            output_ids=list(turn.output_ids),
            ended_with_eos=turn.ended_with_eos,
            answer=turn.answer,
            outcome=turn.outcome.value,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        data = dict(data)
        if data.get("reward") is None:
            if data.get("outcome") is None:
                raise ValueError("candidate has neither 'reward' nor 'outcome'")
            data["reward"] = reward_of(data["outcome"])
        data["reward"] = float(data["reward"])
        if data.get("output_ids") is not None:
            data["output_ids"] = list(data["output_ids"])
        data.setdefault("text", "")
        return cls(**_pick(cls, data))


@dataclass
class TurnRecord:
    """One turn of a trajectory: the state's prompt ids, every candidate, the chosen one."""

    index: int
    user_message: str
    candidates: list[Candidate]
    chosen: int = 0
    prompt_ids: list[int] | None = None  # None: rebuilt from the chosen actions when building
    dropped: int = 0  # degenerate candidates left out
    feedback: dict[str, Any] | None = None  # what followed the chosen action (rise.feedback)

    def __post_init__(self) -> None:
        if not self.candidates or not 0 <= self.chosen < len(self.candidates):
            raise ValueError(f"turn {self.index}: no candidate at 'chosen' ({self.chosen})")

    @property
    def action(self) -> Candidate:
        return self.candidates[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "user_message": self.user_message,
            "prompt_ids": None if self.prompt_ids is None else list(self.prompt_ids),
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": self.chosen,
            "dropped": self.dropped,
            "feedback": self.feedback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], position: int = 0) -> TurnRecord:
        candidates = [Candidate.from_dict(c) for c in data.get("candidates") or []]
        return cls(
            index=int(data.get("index", position)),
            user_message=data.get("user_message", ""),
            candidates=candidates,
            chosen=int(data.get("chosen", 0)),
            prompt_ids=None if data.get("prompt_ids") is None else list(data["prompt_ids"]),
            dropped=int(data.get("dropped", 0)),
            feedback=data.get("feedback"),
        )


@dataclass
class Trajectory:
    """One problem's rollout: the line ``collect`` writes."""

    problem_id: str
    question: str
    turns: list[TurnRecord] = field(default_factory=list)
    reference: str | None = None
    grader: str = "math"
    source: str = ""
    context: list[dict[str, str]] = field(default_factory=list)
    iteration: int = 0
    seed: int = 0

    @property
    def rewards(self) -> list[float]:
        """The chosen actions' rewards, turn by turn."""
        return [turn.action.reward for turn in self.turns]

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id,
            "question": self.question,
            "reference": self.reference,
            "grader": self.grader,
            "source": self.source,
            "context": self.context,
            "turns": [t.to_dict() for t in self.turns],
            "iteration": self.iteration,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        pid = data.get("problem_id")
        if pid is None:
            raise ValueError("trajectory has no 'problem_id'")
        turns = data.get("turns")
        if not isinstance(turns, list):
            raise ValueError(f"trajectory {pid!r} has no 'turns' list")
        try:
            parsed = [TurnRecord.from_dict(t, i) for i, t in enumerate(turns)]
        except ValueError as error:
            raise ValueError(f"trajectory {pid!r}: {error}") from None
        return cls(
            problem_id=str(pid),
            question=data.get("question", ""),
            turns=parsed,
            reference=data.get("reference"),
            grader=data.get("grader", "math"),
            source=data.get("source", ""),
            context=[dict(m) for m in data.get("context", [])],
            iteration=int(data.get("iteration", 0)),
            seed=int(data.get("seed", 0)),
        )


# -- training rows -----------------------------------------------------------------------------


@dataclass
class Example:
    """A supervised row: the loss covers the target turn only (labels of the context = -100)."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    problem_id: str = ""
    turn: int = 0
    reward: float | None = None
    outcome: str | None = None
    source: str | None = None
    transition: str | None = None
    feedback: str | None = None  # the provider and verdict of the feedback this target answers
    kind: Literal["sft"] = "sft"

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"example {self.problem_id!r}: input_ids and labels differ in length")

    @classmethod
    def from_ids(
        cls, prompt_ids: Sequence[int], target_ids: Sequence[int], weight: float, **meta: Any
    ) -> Example:
        return cls(
            input_ids=[*prompt_ids, *target_ids],
            labels=[IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
            weight=weight,
            **meta,
        )

    @property
    def n_context(self) -> int:
        return next((i for i, t in enumerate(self.labels) if t != IGNORE_INDEX), len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PreferencePair:
    """A preference row: in state ``prompt_ids``, ``chosen_ids`` is preferred to ``rejected_ids``.

    ``pair_type``: ``fix`` — after a wrong attempt, a correct candidate over the wrong attempt
    repeated verbatim (the copy the model must learn not to make); ``keep`` — after a right
    attempt, the right attempt repeated over a wrong candidate (keep what is right).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    weight: float = 1.0
    problem_id: str = ""
    turn: int = 0
    pair_type: str = "fix"
    kind: Literal["pair"] = "pair"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


TrainingRow = Example | PreferencePair


def row_from_dict(data: dict[str, Any], where: str = "") -> TrainingRow:
    """An example or a pair from its JSON object; a missing weight is an error."""
    kind = data.get("kind", "sft")
    cls: type[Example] | type[PreferencePair]
    if kind == "sft":
        cls, required = Example, ("input_ids", "labels", "weight")
    elif kind == "pair":
        cls, required = PreferencePair, ("prompt_ids", "chosen_ids", "rejected_ids", "weight")
    else:
        raise ValueError(f"{where}unknown row kind {kind!r} (expected 'sft' or 'pair')")
    missing = [k for k in required if data.get(k) is None]
    if missing:
        raise ValueError(f"{where}row is missing {', '.join(missing)}")
    row = _pick(cls, data)
    row["weight"] = float(row["weight"])
    return cls(**row)


# -- files -------------------------------------------------------------------------------------


def write_jsonl(rows: Iterable[Any], path: str | Path, *, fsync: bool = False) -> int:
    """Write records (with ``to_dict``) or dicts as JSONL, atomically; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            data = row.to_dict() if hasattr(row, "to_dict") else row
            f.write(json.dumps(data, ensure_ascii=False) + "\n")
            n += 1
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    return n


def append_trajectory(handle: Any, trajectory: Trajectory) -> None:
    """Append one trajectory line and fsync it: a finished problem survives a crash."""
    handle.write(json.dumps(trajectory.to_dict(), ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def read_trajectories(path: str | Path, *, repair: bool = False) -> list[Trajectory]:
    """Every trajectory of a file; errors name the file and line.

    With ``repair`` (collection resuming after a crash) a truncated last line is cut off the
    file; damage before the last line is always an error.
    """
    path = Path(path)
    if repair:
        if not path.exists():
            return []
        _repair_tail(path)
    out = []
    for index, row in jsonl_rows(path):
        try:
            out.append(Trajectory.from_dict(row))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}:{index + 1}: {error}") from None
    return out


def _repair_tail(path: Path) -> None:
    data = path.read_bytes()
    good_end = 0  # byte offset just after the last complete, valid line
    for raw in data.splitlines(keepends=True):
        try:
            complete = raw.endswith(b"\n") and isinstance(json.loads(raw), dict)
        except json.JSONDecodeError:
            complete = False
        if not complete:
            if good_end + len(raw) < len(data):  # damage before the end is not a crash
                raise ValueError(f"{path}: corrupt line at byte {good_end}; fix or delete the file")
            logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(raw))
            break
        good_end += len(raw)
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)


def read_rows(path: str | Path) -> list[TrainingRow]:
    """Every example and preference pair of a file written by ``build``."""
    return [row_from_dict(row, f"{path}:{index + 1}: ") for index, row in jsonl_rows(path)]
