"""Majority vote over the final answers of a RISE episode's turns (RISE.md §5, metric m1@t5).

Without an oracle the episode's answer is the one most turns agree on. Answers are grouped by
mathematical equivalence, not by spelling (`0.5` and `\\frac{1}{2}` are one vote block), turns
without an answer abstain, and a tie goes to the group holding the latest turn among the tied
ones, because later turns have seen more introspection. The same function serves the evaluator
(m1@t5, m5@t1 over parallel samples) and the service's no-oracle final answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rise.answers import is_equivalent

__all__ = ["Vote", "majority_vote"]


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
