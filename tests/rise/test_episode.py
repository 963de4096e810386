"""Episode and Turn serialise to JSON and back without loss."""

from __future__ import annotations

import json

from rise.episode import Episode, Outcome, StopReason, Turn


def _episode() -> Episode:
    episode = Episode(
        question="1+1?", reference="2", grader="gsm8k", context=[{"role": "system", "content": "s"}]
    )
    episode.turns.append(
        Turn(
            0,
            "Solve 1+1?",
            [1, 2, 3],
            [4, 5, 6],
            "\\boxed{3}",
            "stop",
            True,
            "3",
            Outcome.WRONG,
            cached_tokens=0,
            latency_s=0.5,
            first_token_s=0.1,
        )
    )
    episode.turns.append(
        Turn(
            1,
            "Try again",
            [1, 2, 3, 4, 5, 6, 7],
            [8, 9],
            "\\boxed{2}",
            "length",
            False,
            "2",
            Outcome.CORRECT,
            cached_tokens=6,
            latency_s=0.25,
        )
    )
    episode.stop_reason = StopReason.ORACLE
    episode.final_answer = "2"
    episode.metadata["source"] = "unit"
    return episode


def test_episode_json_round_trip_is_lossless() -> None:
    episode = _episode()
    restored = Episode.from_dict(json.loads(json.dumps(episode.to_dict())))
    assert restored == episode
    assert restored.turns[1].outcome is Outcome.CORRECT
    assert restored.stop_reason is StopReason.ORACLE


def test_episode_totals_and_messages() -> None:
    episode = _episode()
    assert episode.prompt_tokens == 10 and episode.output_tokens == 5
    assert episode.cached_tokens == 6
    assert episode.answers == ["3", "2"]
    roles = [m["role"] for m in episode.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_outcome_rewards_follow_the_paper() -> None:
    assert [o.reward for o in Outcome] == [1.0, 0.0, -1.0]
    turn = _episode().turns[0]
    assert turn.reward == 0.0 and turn.prompt_tokens == 3 and turn.output_tokens == 3


def test_episode_ids_are_unguessable_and_unique() -> None:
    ids = {Episode(question="q").id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 20 for i in ids)
