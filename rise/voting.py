"""The final-answer rule of an episode, and the majority vote behind it (docs/RISE.md §5).

:func:`final_answer` is the one place that decides which answer an episode gives and which
turn's text stands for it; the loop, the service, both APIs and the CLI call it. The rule is an
:data:`AnswerMode`:

- ``vote``: the answer most turns agree on (metric m1@t5); its text is the latest turn in the
  winning group (the last turn when no turn had an answer);
- ``last``: the last turn's answer and text;
- ``oracle``: the latest turn graded correct against the reference (p1@t5: some turn was
  right), or the vote when none was.

The answer rule never looks at why the episode stopped: stopping at the first correct turn is a
separate *stop rule* (:attr:`rise.plan.RequestPlan.stop_on_correct`); with it, the latest correct
turn is the last one.

Answers are grouped by mathematical equivalence, not by spelling (`0.5` and `\\frac{1}{2}` are
one vote block), turns without an answer abstain, and a tie goes to the group holding the
latest turn among the tied ones, because later turns have seen more introspection. The same
vote serves the evaluator (m1@t5, m5@t1 over parallel samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rise.answers import get_grader, is_equivalent
from rise.episode import Episode, Outcome

__all__ = ["ANSWER_MODES", "AnswerMode", "FinalAnswer", "Vote", "final_answer", "majority_vote"]

AnswerMode = Literal["vote", "last", "oracle"]
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)


@dataclass(frozen=True)
class Vote:
    """The outcome of one vote."""

    winner: str | None  # the answer chosen (spelling of the latest turn in the winning group)
    winner_turn: int | None  # 0-based index of the latest turn whose answer is in the winning group
    counts: dict[str, int]  # one entry per equivalence group: latest spelling -> votes
    margin: int  # winner votes minus runner-up votes (winner votes when alone; 0 when no answers)
    total: int  # number of turns that had an answer

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "winner_turn": self.winner_turn,
            "counts": dict(self.counts),
            "margin": self.margin,
            "total": self.total,
        }


@dataclass
class _Group:
    """Turns whose answers are equivalent to the group's first answer."""

    first: str  # what later answers are compared with, so membership does not drift
    latest: str  # spelling of the group's latest turn (reported as the answer)
    latest_turn: int
    votes: int = 0


def majority_vote(
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool] = is_equivalent,
) -> Vote:
    """Vote over `answers` (one per turn, None or blank when a turn had no answer).

    Answers are compared with surrounding whitespace stripped; the winner is reported in that
    stripped spelling.

    `equivalent(earlier, later)` decides grouping; pass a grader's `equivalent` to vote with its
    notion of sameness. Identical spellings skip the comparison, so the cost is at most one
    `equivalent` call per (distinct spelling, group) pair: O(n · groups).
    """
    groups: list[_Group] = []
    group_of: dict[str, _Group] = {}  # spelling -> its group
    total = 0
    for turn, raw in enumerate(answers):
        answer = None if raw is None else raw.strip()
        if not answer:
            continue
        total += 1
        group = group_of.get(answer)
        if group is None:
            group = next((g for g in groups if equivalent(g.first, answer)), None)
            if group is None:
                group = _Group(first=answer, latest=answer, latest_turn=turn)
                groups.append(group)
            group_of[answer] = group
        group.votes += 1
        group.latest, group.latest_turn = answer, turn
    if not groups:
        return Vote(winner=None, winner_turn=None, counts={}, margin=0, total=0)

    # Most votes first; among equal votes the group with the later latest turn first.
    ranked = sorted(groups, key=lambda g: (g.votes, g.latest_turn), reverse=True)
    best = ranked[0]
    runner_up = ranked[1].votes if len(ranked) > 1 else 0
    return Vote(
        winner=best.latest,
        winner_turn=best.latest_turn,
        counts={g.latest: g.votes for g in groups},
        margin=best.votes - runner_up,
        total=total,
    )


@dataclass(frozen=True)
class FinalAnswer:
    """What an episode answers under one rule: the answer, the turn shown, the vote."""

    answer: str | None  # None when the chosen turn (or every turn) had no parseable answer
    turn: int | None  # index of the turn whose text is the response; None without turns
    vote: Vote  # the vote over every turn, reported whatever the rule


def final_answer(episode: Episode, mode: AnswerMode) -> FinalAnswer:
    """The episode's final answer under ``mode`` (see the module docstring)."""
    if mode not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {mode!r}; expected one of {', '.join(ANSWER_MODES)}")
    turns = episode.turns
    vote = majority_vote(episode.answers, get_grader(episode.grader).equivalent)
    last = len(turns) - 1 if turns else None
    if mode == "oracle":
        correct = [i for i, t in enumerate(turns) if t.outcome is Outcome.CORRECT]
        if correct:
            return FinalAnswer(turns[correct[-1]].answer, correct[-1], vote)
    if mode == "last":
        return FinalAnswer(turns[-1].answer if turns else None, last, vote)
    turn = vote.winner_turn if vote.winner_turn is not None else last
    return FinalAnswer(vote.winner, turn, vote)
