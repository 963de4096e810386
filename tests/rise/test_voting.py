"""Tests for rise.voting.majority_vote: grouping by equivalence, abstentions, ties, margins."""

from __future__ import annotations

from rise.answers import get_grader
from rise.voting import Vote, majority_vote


def test_vote_empty_list() -> None:
    vote = majority_vote([])
    assert vote == Vote(winner=None, winner_turn=None, counts={}, margin=0, total=0)


def test_vote_all_abstain() -> None:
    vote = majority_vote([None, None, "  "])
    assert vote.winner is None
    assert vote.winner_turn is None
    assert vote.total == 0
    assert vote.margin == 0


def test_vote_single_answer() -> None:
    vote = majority_vote([None, "42", None])
    assert (vote.winner, vote.winner_turn, vote.total, vote.margin) == ("42", 1, 1, 1)
    assert vote.counts == {"42": 1}


def test_vote_majority_wins_and_margin() -> None:
    vote = majority_vote(["3", "5", "3", "7", "3"])
    assert vote.winner == "3"
    assert vote.winner_turn == 4
    assert vote.counts == {"3": 3, "5": 1, "7": 1}
    assert vote.margin == 2
    assert vote.total == 5


def test_vote_none_is_ignored() -> None:
    vote = majority_vote([None, "5", None, "5", "6"])
    assert vote.winner == "5"
    assert vote.winner_turn == 3
    assert vote.total == 3
    assert vote.margin == 1


def test_vote_tie_goes_to_latest_turn() -> None:
    vote = majority_vote(["1", "2", "2", "1"])
    assert vote.winner == "1"
    assert vote.winner_turn == 3
    assert vote.margin == 0
    vote = majority_vote(["1", "1", "2", "2", None])
    assert (vote.winner, vote.winner_turn) == ("2", 3)


def test_vote_tie_ignores_groups_with_fewer_votes() -> None:
    # "9" is the latest turn but has fewer votes than the tied groups.
    vote = majority_vote(["1", "2", "1", "2", "9"])
    assert (vote.winner, vote.winner_turn, vote.margin) == ("2", 3, 0)


def test_vote_groups_by_equivalence() -> None:
    vote = majority_vote([r"\frac{1}{2}", "3", "0.5", "3", r"\dfrac{1}{2}"])
    assert vote.winner == r"\dfrac{1}{2}"  # spelling of the group's latest turn
    assert vote.winner_turn == 4
    assert vote.counts == {r"\dfrac{1}{2}": 3, "3": 2}
    assert vote.margin == 1
    assert vote.total == 5


def test_vote_nested_fractions_stay_apart() -> None:
    # RISE.md §7: these two must not be merged into one group.
    vote = majority_vote([r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{4}", r"\frac{\sqrt{3}}{4}"])
    assert vote.winner == r"\frac{\sqrt{3}}{4}"
    assert vote.counts == {r"\frac{\sqrt{3}}{2}": 1, r"\frac{\sqrt{3}}{4}": 2}


def test_vote_strips_whitespace() -> None:
    vote = majority_vote([" 5", "5 ", "6"])
    assert vote.counts == {"5": 2, "6": 1}


def test_vote_with_custom_equivalence() -> None:
    exact = get_grader("exact").equivalent
    vote = majority_vote(["0.5", r"\frac{1}{2}", "0.5"], equivalent=exact)
    assert vote.counts == {"0.5": 2, r"\frac{1}{2}": 1}
    vote = majority_vote(["Paris", "paris", "Rome"], equivalent=exact)
    assert (vote.winner, vote.counts) == ("paris", {"paris": 2, "Rome": 1})


def test_vote_calls_equivalence_once_per_spelling_and_group() -> None:
    calls: list[tuple[str, str]] = []

    def equivalent(a: str, b: str) -> bool:
        calls.append((a, b))
        return a == b

    majority_vote(["a", "b", "a", "b", "a", "c", "c"], equivalent=equivalent)
    # "b" is compared with group a; "c" with groups a and b; repeats hit the spelling cache.
    assert calls == [("a", "b"), ("a", "c"), ("b", "c")]


def test_vote_to_dict() -> None:
    vote = majority_vote(["4", None, "4.0"])
    assert vote.to_dict() == {
        "winner": "4.0",
        "winner_turn": 2,
        "counts": {"4.0": 2},
        "margin": 2,
        "total": 2,
    }
