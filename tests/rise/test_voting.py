"""rise.voting: the majority vote (grouping by equivalence, abstentions, ties, margins) and the
final-answer rule (vote | last | oracle: which answer, which turn's text)."""

from __future__ import annotations

import pytest

from rise.answers import get_grader
from rise.episode import Episode, StopReason, Turn
from rise.loop import new_episode
from rise.voting import ANSWER_MODES, Vote, final_answer, majority_vote


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
    # docs/RISE.md §7: these two must not be merged into one group.
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


def _episode(answers: list[str | None], reference: str | None = None) -> Episode:
    episode = new_episode("q", reference=reference, grader="math")
    for index, answer in enumerate(answers):
        outcome = None if reference is None else get_grader("math").grade(answer, reference)
        episode.turns.append(
            Turn(index, "u", [], [], f"text {index}", "stop", True, answer, outcome)
        )
    return episode


def test_final_answer_vote_shows_the_winners_latest_turn() -> None:
    final = final_answer(_episode(["3", "4", "4", "5"]), "vote")
    assert (final.answer, final.turn, final.vote.margin) == ("4", 2, 1)
    silent = final_answer(_episode([None, None]), "vote")
    assert (silent.answer, silent.turn) == (None, 1)  # no answers: the last turn's text


def test_final_answer_last_and_no_turns() -> None:
    final = final_answer(_episode(["3", "4", "4", None]), "last")
    assert (final.answer, final.turn, final.vote.winner) == (None, 3, "4")
    for mode in ANSWER_MODES:
        empty = final_answer(_episode([]), mode)  # type: ignore[arg-type]
        assert (empty.answer, empty.turn, empty.vote.total) == (None, None, 0)


def test_final_answer_oracle_is_the_latest_correct_turn_else_the_vote() -> None:
    final = final_answer(_episode(["3", "7", "3", "7.0", "3"], reference="7"), "oracle")
    assert (final.answer, final.turn) == ("7.0", 3)
    missed = final_answer(_episode(["3", "4", "3"], reference="7"), "oracle")
    assert (missed.answer, missed.turn) == ("3", 2)
    ungraded = final_answer(_episode(["3", "4", "4"]), "oracle")
    assert (ungraded.answer, ungraded.turn) == ("4", 2)


def test_final_answer_ignores_why_the_episode_stopped() -> None:
    episode = _episode(["3", "3", "4"], reference="4")
    episode.stop_reason = StopReason.ORACLE  # the stop rule fired; the answer rule decides
    assert final_answer(episode, "vote").answer == "3"
    assert final_answer(episode, "oracle").answer == "4"
    with pytest.raises(ValueError, match="unknown answer mode"):
        final_answer(episode, "best")  # type: ignore[arg-type]
