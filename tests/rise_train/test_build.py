"""Trajectories → examples: criteria, weights, loss mask, de-dup, shuffle, truncation, rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rise_train.build import (
    IGNORE_INDEX,
    BuildConfig,
    build,
    build_examples,
    fit_pair,
    keeps,
    rwr_weight,
    truncate_left,
)
from rise_train.records import PreferencePair, read_rows

OUTCOME = {1.0: "correct", 0.0: "wrong", -1.0: "unparseable"}


def _cand(reward: float, output_ids: list[int]) -> dict[str, Any]:
    return {
        "text": f"answer {output_ids}",
        "output_ids": output_ids,
        "ended_with_eos": True,
        "outcome": OUTCOME[reward],
        "reward": reward,
        "source": "policy",
    }


def _trajectory(pid: str, turns: list[list[float]], chosen: list[int] | None = None) -> dict:
    """A trajectory whose turn t has candidates with rewards ``turns[t]``.

    Prompt ids are made unique per (problem, turn) and target ids per candidate, so examples
    can be told apart by their ids.
    """
    base = sum(map(ord, pid)) * 1000
    out = []
    for t, rewards in enumerate(turns):
        pick = chosen[t] if chosen else rewards.index(max(rewards))
        out.append(
            {
                "index": t,
                "user_message": f"turn {t}",
                "prompt_ids": [base + 10 * t + k for k in range(5 + t)],
                "candidates": [
                    _cand(r, [base + 500 + 10 * t + c, 2]) for c, r in enumerate(rewards)
                ],
                "chosen": pick,
            }
        )
    return {"problem_id": pid, "question": "q", "reference": "1", "grader": "gsm8k", "turns": out}


def _kept(criteria: str, trajectories: list[dict], **kw: Any) -> set[tuple[str, int]]:
    config = BuildConfig(criteria=criteria, shuffle=False, **kw)
    examples, _ = build_examples(trajectories, config)
    return {(e.problem_id, e.turn) for e in examples}


TRAJECTORIES = [
    _trajectory("a", [[0.0], [1.0]]),  # wrong → correct
    _trajectory("b", [[1.0]]),  # correct at once
    _trajectory("c", [[-1.0], [0.0]]),  # unparseable → wrong
    _trajectory("d", [[0.0], [-1.0], [0.0]]),  # wrong → unparseable → wrong
]


def test_build_criteria_all_keeps_every_chosen_action() -> None:
    assert _kept("all", TRAJECTORIES) == {
        ("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1), ("d", 0), ("d", 1), ("d", 2)
    }  # fmt: skip


def test_build_criteria_better_beats_previous_turn() -> None:
    # Turn 0 competes with a wrong answer's reward (0): kept only when correct.
    assert _kept("better", TRAJECTORIES) == {("a", 1), ("b", 0), ("c", 1), ("d", 2)}


def test_build_criteria_best_not_worse_than_any_earlier() -> None:
    assert _kept("best", TRAJECTORIES) == {
        ("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1), ("d", 0), ("d", 2)
    }  # fmt: skip


def test_build_criteria_success_only_correct() -> None:
    assert _kept("success", TRAJECTORIES) == {("a", 1), ("b", 0)}


def test_keeps_candidates_compare_with_chosen_history() -> None:
    assert keeps("better", 0.0, [-1.0, 0.0]) is False
    assert keeps("best", 0.0, [-1.0, 0.0]) is True
    assert keeps("best", -1.0, []) is True
    with pytest.raises(ValueError):
        keeps("most", 1.0, [])


def test_build_config_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="criteria"):
        BuildConfig(criteria="most")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective"):
        BuildConfig(objective="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs pairs"):
        BuildConfig(objective="preference")
    with pytest.raises(ValueError, match="'preference' only"):
        BuildConfig(pairs="fix")


def test_rwr_weight_values() -> None:
    assert round(rwr_weight(1.0), 2) == 12.18
    assert rwr_weight(0.0) == 1.0
    assert round(rwr_weight(-1.0), 3) == 0.082
    examples, _ = build_examples(TRAJECTORIES, BuildConfig(shuffle=False))
    by_key = {(e.problem_id, e.turn): e for e in examples}
    assert by_key[("a", 1)].weight == pytest.approx(math.exp(2.5))
    assert by_key[("a", 0)].weight == 1.0
    assert by_key[("c", 0)].weight == pytest.approx(math.exp(-2.5))
    assert by_key[("a", 1)].reward == 1.0 and by_key[("a", 1)].outcome == "correct"


def test_build_uniform_weights() -> None:
    examples, _ = build_examples(TRAJECTORIES, BuildConfig(objective="sft"))
    assert len(examples) == 8
    assert {e.weight for e in examples} == {1.0}


def test_build_awr_centred_on_all_attempts_of_the_problem() -> None:
    # Turn 0: wrong, unparseable, wrong, wrong (chosen 0); turn 1: correct, wrong (chosen 0).
    trajectory = _trajectory("p", [[0.0, -1.0, 0.0, 0.0], [1.0, 0.0]])
    same = _trajectory("s", [[0.0, 0.0]])  # every attempt equal: advantage 0 everywhere
    mean = (4 * 1.0 + math.exp(-2.5) + math.exp(2.5)) / 6
    config = BuildConfig(objective="awr", shuffle=False)
    examples, stats = build_examples([trajectory, same], config)
    # The wrong chosen turn 0 is below the mean: clipped to 0 and dropped.
    assert [(e.problem_id, e.turn) for e in examples] == [("p", 1)]
    assert examples[0].weight == pytest.approx(math.exp(2.5) - mean)
    assert stats.zero_weight == 2
    every, _ = build_examples(
        [trajectory], BuildConfig(objective="awr", shuffle=False, include_candidates=True)
    )
    assert len(every) == 1  # only the correct candidate beats the problem's mean


def test_build_include_candidates_makes_every_attempt_an_example() -> None:
    trajectory = _trajectory("p", [[0.0, -1.0, 0.0], [1.0, 0.0]])
    config = BuildConfig(shuffle=False, include_candidates=True, objective="sft")
    examples, stats = build_examples([trajectory], config)
    assert stats.actions == 5
    assert [(e.turn, e.reward) for e in examples] == [
        (0, 0.0), (0, -1.0), (0, 0.0), (1, 1.0), (1, 0.0)
    ]  # fmt: skip
    better, _ = build_examples(
        [trajectory], BuildConfig(criteria="better", shuffle=False, include_candidates=True)
    )
    assert [(e.turn, e.reward) for e in better] == [(1, 1.0)]


def test_build_loss_mask_covers_target_only() -> None:
    examples, _ = build_examples([_trajectory("a", [[0.0], [1.0]])], BuildConfig(shuffle=False))
    turn1 = TRAJECTORIES[0]["turns"][1]
    prompt, target = turn1["prompt_ids"], turn1["candidates"][0]["output_ids"]
    example = examples[1]
    assert example.input_ids == prompt + target
    assert example.labels == [IGNORE_INDEX] * len(prompt) + target
    assert len(example.input_ids) == len(example.labels)


def test_build_dedups_identical_pairs() -> None:
    twice = [_trajectory("a", [[0.0], [1.0]]), _trajectory("a", [[0.0], [1.0]])]
    examples, stats = build_examples(twice, BuildConfig())
    assert len(examples) == 2 and stats.duplicates == 2
    kept, _ = build_examples(twice, BuildConfig(dedup=False))
    assert len(kept) == 4


def _order(trajectories: list[dict], **kw: Any) -> list[tuple[str, int]]:
    examples, _ = build_examples(trajectories, BuildConfig(**kw))
    return [(e.problem_id, e.turn) for e in examples]


def test_build_shuffle_is_deterministic() -> None:
    many = [_trajectory(f"q{i}", [[0.0], [1.0]]) for i in range(20)]
    assert _order(many, seed=7) == _order(many, seed=7)
    assert _order(many, seed=7) != _order(many, seed=8)
    unshuffled = _order(many, shuffle=False)
    shuffled = _order(many, seed=7)
    assert sorted(shuffled) == sorted(unshuffled)
    assert shuffled != unshuffled


def test_truncate_left_keeps_target() -> None:
    prompt, target = list(range(10)), [100, 101, 102, 103]
    assert truncate_left(prompt, target, 20) == (prompt, target)
    assert truncate_left(prompt, target, 8) == ([6, 7, 8, 9], target)
    assert truncate_left(prompt, target, 5) == ([9], target)
    assert truncate_left(prompt, target, 4) is None  # no context token left to predict from
    assert truncate_left(prompt, target, None) == (prompt, target)


def test_fit_pair_cuts_the_prompt_for_the_longer_response() -> None:
    pair = PreferencePair(list(range(10)), [7, 8], [9, 9, 9], pair_type="keep")
    fitted = fit_pair(pair, 6)
    assert fitted is not None and fitted.prompt_ids == [7, 8, 9]
    assert (fitted.chosen_ids, fitted.rejected_ids, fitted.pair_type) == ([7, 8], [9, 9, 9], "keep")
    assert pair.prompt_ids == list(range(10))  # the input is left as it was
    assert fit_pair(pair, 3) is None and fit_pair(pair, None) == pair


def test_build_truncates_and_drops_too_long() -> None:
    trajectory = _trajectory("a", [[0.0], [1.0]])  # prompts of 5 and 6 tokens, targets of 2
    examples, stats = build_examples([trajectory], BuildConfig(shuffle=False, max_length=7))
    assert [len(e.input_ids) for e in examples] == [7, 7]
    assert (
        examples[1].input_ids == trajectory["turns"][1]["prompt_ids"][-5:] + examples[1].labels[-2:]
    )
    assert stats.truncated == 1
    _, dropped = build_examples([trajectory], BuildConfig(max_length=2))
    assert dropped.too_long == 2 and dropped.examples == 0


def test_build_drops_empty_targets() -> None:
    trajectory = _trajectory("a", [[0.0]])
    trajectory["turns"][0]["candidates"][0]["output_ids"] = []
    examples, stats = build_examples([trajectory], BuildConfig())
    assert examples == [] and stats.empty_target == 1


def test_build_renders_text_only_trajectories(tiny_tokenizer: Any) -> None:
    from rise.prompts import ChatRenderer

    renderer = ChatRenderer(tiny_tokenizer)
    context = [{"role": "system", "content": "Be brief."}]
    users = ["Solve 3 + 4.", "The answer is incorrect. Please try again."]
    texts = ["It is 8. \\boxed{8}", "It is 7. \\boxed{7}"]
    trajectory = {
        "problem_id": "t",
        "question": "3 + 4",
        "context": context,
        "turns": [
            {"index": t, "user_message": users[t], "chosen": 0,
             "candidates": [{"text": texts[t], "reward": float(t), "source": "teacher"}]}
            for t in range(2)
        ],
    }  # fmt: skip
    examples, _ = build_examples([trajectory], BuildConfig(shuffle=False), renderer=renderer)
    prompt0 = renderer.render([*context, {"role": "user", "content": users[0]}])
    target0, _ = renderer.response_ids(texts[0])
    target1, _ = renderer.response_ids(texts[1])
    prompt1 = prompt0 + target0 + renderer.continuation_ids(users[1], ended_with_eos=True)
    assert examples[0].input_ids == prompt0 + target0
    assert examples[1].input_ids == prompt1 + target1
    assert examples[1].labels == [IGNORE_INDEX] * len(prompt1) + target1
    # The rendered state is the chat template's rendering of the whole conversation.
    full = renderer.render(
        [*context, {"role": "user", "content": users[0]},
         {"role": "assistant", "content": texts[0]}, {"role": "user", "content": users[1]}]
    )  # fmt: skip
    assert tiny_tokenizer.decode(prompt1) == tiny_tokenizer.decode(full)


def test_build_text_only_without_tokenizer_is_an_error() -> None:
    trajectory = _trajectory("a", [[1.0]])
    del trajectory["turns"][0]["prompt_ids"]
    with pytest.raises(ValueError, match="without token ids"):
        build_examples([trajectory], BuildConfig())


def test_build_files_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "trajectories.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in TRAJECTORIES))
    stats = build(source, tmp_path / "out" / "examples.jsonl", BuildConfig(criteria="success"))
    examples = read_rows(tmp_path / "out" / "examples.jsonl")
    assert stats.examples == len(examples) == 2
    assert stats.by_outcome == {"correct": 2}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRAJECTORIES[0]) + "\n[1]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        build(bad, tmp_path / "x.jsonl")


# -- the anti-collapse options ----------------------------------------------------------------


def _turn(t: int, cands: list[tuple[float, list[int], str | None]], chosen: int = 0) -> dict:
    return {
        "index": t,
        "user_message": f"turn {t}",
        "prompt_ids": [900 + 10 * t + k for k in range(4 + t)],
        "candidates": [
            {"text": "x", "output_ids": ids, "answer": ans, "outcome": OUTCOME[r], "reward": r}
            for r, ids, ans in cands
        ],
        "chosen": chosen,
    }


def _traj(pid: str, *turns: dict) -> dict:
    return {"problem_id": pid, "question": "q", "grader": "gsm8k", "turns": list(turns)}


def test_within_trajectory_dedup_drops_repeats_of_earlier_action_and_wrong_answer() -> None:
    copy = _traj("copy", _turn(0, [(0.0, [1, 2, 3], "5")]), _turn(1, [(0.0, [1, 2, 3], "5")]))
    same = _traj("same", _turn(0, [(0.0, [1, 2, 3], "5")]), _turn(1, [(0.0, [7, 8], "5.0")]))
    new = _traj("new", _turn(0, [(0.0, [1, 2, 3], "5")]), _turn(1, [(0.0, [7, 8], "6")]))
    # dedup=False: the three share their turn-1 state, which the global de-dup would merge.
    rows, stats = build_examples([copy, same, new], BuildConfig(shuffle=False, dedup=False))
    assert [(r.problem_id, r.turn) for r in rows] == [
        ("copy", 0),
        ("same", 0),
        ("new", 0),
        ("new", 1),
    ]
    assert stats.repeats_earlier_action == 1 and stats.repeats_wrong_answer == 1
    everything, _ = build_examples(
        [copy, same, new], BuildConfig(dedup_trajectory=False, dedup=False)
    )
    assert len(everything) == 6


def test_dissimilar_target_is_the_correct_candidate_least_like_the_attempt() -> None:
    attempt = [1, 2, 3, 4, 5, 6]
    near, far = [1, 2, 3, 4, 5, 9], [7, 8, 9]
    traj = _traj(
        "p",
        _turn(0, [(0.0, attempt, "1")]),
        _turn(1, [(0.0, [1, 2], "2"), (1.0, near, "3"), (1.0, far, "3")], chosen=1),
    )
    chosen, _ = build_examples([traj], BuildConfig(shuffle=False, criteria="success"))
    assert chosen[0].input_ids[-len(near) :] == near
    rows, stats = build_examples(
        [traj], BuildConfig(shuffle=False, criteria="success", target="dissimilar")
    )
    assert rows[0].input_ids[-len(far) :] == far
    assert stats.target_edit_ratio["n"] == 1 and stats.target_edit_ratio["mean"] == 0.0


def test_first_turn_control_and_progress_bonus_weights() -> None:
    traj = [
        _traj("wr", _turn(0, [(0.0, [1], "1")]), _turn(1, [(1.0, [2], "2")])),
        _traj("r", _turn(0, [(1.0, [3], "2")])),
        _traj("rw", _turn(0, [(1.0, [4], "2")]), _turn(1, [(0.0, [5], "3")])),
    ]
    full, _ = build_examples(traj, BuildConfig(shuffle=False))
    assert {(r.problem_id, r.turn): r.weight for r in full}[("r", 0)] == pytest.approx(
        math.exp(2.5)
    )
    unit, _ = build_examples(traj, BuildConfig(shuffle=False, first_turn="unit"))
    weights = {(r.problem_id, r.turn): r.weight for r in unit}
    assert weights[("r", 0)] == 1.0 and weights[("wr", 0)] == 1.0
    assert weights[("wr", 1)] == pytest.approx(math.exp(2.5))
    excluded, stats = build_examples(traj, BuildConfig(shuffle=False, first_turn="exclude"))
    assert {r.turn for r in excluded} == {1} and stats.first_turn_excluded == 3
    bonus, stats = build_examples(traj, BuildConfig(shuffle=False, progress_bonus=2.0))
    weights = {(r.problem_id, r.turn): r.weight for r in bonus}
    assert weights[("wr", 1)] == pytest.approx(math.exp(2.5) + 2.0)
    assert ("rw", 1) not in weights and stats.zero_weight == 1  # 1.0 - 2.0 clipped to 0


def test_composition_counts_and_weight_shares() -> None:
    traj = [
        _traj("wr", _turn(0, [(0.0, [1], "1")]), _turn(1, [(1.0, [2], "2")])),
        _traj("ww", _turn(0, [(0.0, [3], "1")]), _turn(1, [(0.0, [4], "4")])),
        _traj("rr", _turn(0, [(1.0, [5], "2")]), _turn(1, [(1.0, [6], "2")])),
    ]
    _, stats = build_examples(traj, BuildConfig(shuffle=False, objective="sft"))
    comp = stats.composition
    assert comp["first"]["count"] == 3 and comp["wrong_to_right"]["count"] == 1
    assert comp["wrong_to_wrong"]["count"] == 1 and comp["right_to_right"]["count"] == 1
    assert comp["right_to_wrong"]["count"] == 0
    assert comp["first"]["share"] == pytest.approx(0.5)
    _, rwr = build_examples(traj, BuildConfig(shuffle=False))
    total = 2 * math.exp(2.5) + 1 + 1 + 1 + math.exp(2.5)  # first: wrong, wrong, right
    assert rwr.composition["wrong_to_right"]["weight_share"] == pytest.approx(math.exp(2.5) / total)


def test_preference_pairs_fix_and_keep() -> None:
    wrong = _traj(
        "w", _turn(0, [(0.0, [1, 1], "1")]), _turn(1, [(0.0, [5], "5"), (1.0, [2, 2], "2")], 1)
    )
    right = _traj(
        "r", _turn(0, [(1.0, [3, 3], "2")]), _turn(1, [(1.0, [3, 3], "2"), (0.0, [4], "9")])
    )
    rows, stats = build_examples(
        [wrong, right], BuildConfig(shuffle=False, objective="preference", pairs="fix")
    )
    pairs = [r for r in rows if isinstance(r, PreferencePair)]
    assert len(pairs) == 1 and stats.pairs == 1
    (fix,) = pairs
    assert (fix.chosen_ids, fix.rejected_ids, fix.pair_type) == ([2, 2], [1, 1], "fix")
    assert fix.prompt_ids == wrong["turns"][1]["prompt_ids"]
    rows, stats = build_examples(
        [wrong, right], BuildConfig(shuffle=False, objective="preference", pairs="fix+keep")
    )
    keep = [r for r in rows if isinstance(r, PreferencePair) and r.pair_type == "keep"]
    assert [(k.chosen_ids, k.rejected_ids) for k in keep] == [([3, 3], [4])]
    assert stats.pairs_by_type == {"fix": 1, "keep": 1}


def test_rows_round_trip_and_missing_weight_is_an_error(tmp_path: Path) -> None:
    from rise_train.records import Example, row_from_dict, write_jsonl

    rows = [
        Example.from_ids([1, 2], [3], 2.5, problem_id="a", transition="first"),
        PreferencePair([1], [2], [3], weight=0.5, pair_type="keep"),
    ]
    write_jsonl(rows, tmp_path / "rows.jsonl")
    assert read_rows(tmp_path / "rows.jsonl") == rows
    with pytest.raises(ValueError, match="weight"):
        row_from_dict({"input_ids": [1], "labels": [1]})
    with pytest.raises(ValueError, match="kind"):
        row_from_dict({"kind": "ppo", "weight": 1})


def test_advantage_weights_are_signed_leave_one_out_with_progress_bonus() -> None:
    """Every candidate is an example weighted r − (mean of its state's other candidates), a
    one-candidate state against its turn's mean over the input; negative repeats are kept."""
    p = _traj(
        "p",
        _turn(0, [(0.0, [1, 2, 3], "5")]),
        _turn(1, [(1.0, [7, 8], "6"), (0.0, [1, 2, 3], "5"), (0.0, [4, 4], "5")]),
    )
    q = _traj("q", _turn(0, [(1.0, [3, 3], "6")]))
    config = BuildConfig(shuffle=False, objective="advantage", progress_bonus=0.5)
    rows, stats = build_examples([p, q], config)
    got = [(r.problem_id, r.turn, r.input_ids[-2:], r.weight) for r in rows]
    assert got == [
        ("p", 0, [2, 3], -0.5),  # 0 − turn-1 mean 0.5
        ("p", 1, [7, 8], 1.5),  # 1 − mean(0, 0) + 0.5·(1 − 0)
        ("p", 1, [2, 3], -0.5),  # the verbatim copy: 0 − mean(1, 0), kept to be pushed down
        ("p", 1, [4, 4], -0.5),  # the same wrong answer again, also kept
        ("q", 0, [3, 3], 0.5),
    ]
    assert stats.repeats_earlier_action == stats.repeats_wrong_answer == 0
    assert stats.composition["first"]["weight_share"] == pytest.approx(1.0 / 3.5)
    unit = BuildConfig(shuffle=False, objective="advantage", first_turn="unit")
    assert [r.weight for r in build_examples([p, q], unit)[0] if r.turn == 0] == [-1.0, 1.0]
    half = BuildConfig(shuffle=False, objective="advantage", progress_bonus=0.5, negative_scale=0.5)
    assert [r.weight for r in build_examples([p, q], half)[0]] == [-0.25, 1.5, -0.25, -0.25, 0.5]
    dropped, stats = build_examples([p, q], BuildConfig(objective="advantage", negative_scale=0))
    assert sorted(r.weight for r in dropped) == [0.5, 1.0] and stats.zero_weight == 3
    for bad in ({"negative_scale": -0.1}, {"negative_scale": 1.5}):
        with pytest.raises(ValueError, match="negative_scale"):
            BuildConfig(objective="advantage", **bad)
    with pytest.raises(ValueError, match="advantage' only"):
        BuildConfig(negative_scale=0.5)


def test_mask_negative_stop_leaves_the_stop_of_negative_examples_only() -> None:
    """A negative example's final stop token (it ended with EOS) gets no loss; a positive one,
    a negative one cut off by max_tokens, and a negative one that is the stop alone are handled
    as the docstring says."""
    stop = 2
    p = _traj(
        "p",
        _turn(0, [(0.0, [1, 5, stop], "5")]),
        _turn(1, [(1.0, [7, 8, stop], "6"), (0.0, [4, 4, stop], "5"), (0.0, [stop], None)]),
    )
    p["turns"][1]["candidates"].append(
        {"text": "x", "output_ids": [6, 6, 6], "answer": "5", "outcome": OUTCOME[0.0],
         "reward": 0.0, "ended_with_eos": False}
    )  # fmt: skip
    q = _traj("q", _turn(0, [(1.0, [3, 3, stop], "6")]))  # turn-1 mean 0.5: p's first is < 0
    plain = BuildConfig(shuffle=False, objective="advantage")
    masked = BuildConfig(shuffle=False, objective="advantage", mask_negative_stop=True)
    before, _ = build_examples([p, q], plain)
    after, stats = build_examples([p, q], masked)
    target = {tuple(r.input_ids[r.n_context :]): r for r in before}
    labels = {tuple(r.input_ids[r.n_context :]): r.labels[r.n_context :] for r in after}
    assert labels[(1, 5, stop)] == [1, 5, IGNORE_INDEX]  # turn 1, weight 0 − 0.5 < 0
    assert labels[(3, 3, stop)] == [3, 3, stop]
    assert labels[(7, 8, stop)] == [7, 8, stop]  # positive: the stop is taught
    assert labels[(4, 4, stop)] == [4, 4, IGNORE_INDEX]
    assert labels[(6, 6, 6)] == [6, 6, 6]  # cut off: its last token is not a stop
    assert (stop,) in target and (stop,) not in labels  # the stop alone: nothing left
    assert stats.stops_masked == 2 and stats.empty_target == 1
    kept = [r for r in before if r.input_ids[r.n_context :] != [stop]]
    assert [(r.input_ids, r.weight) for r in after] == [(r.input_ids, r.weight) for r in kept]
    with pytest.raises(ValueError, match="advantage' only"):
        BuildConfig(mask_negative_stop=True)


def test_advantage_drops_a_positive_repeat_and_needs_criteria_all() -> None:
    copy = _traj(
        "c",
        _turn(0, [(0.0, [1, 2, 3], "5")]),
        _turn(1, [(0.0, [1, 2, 3], "5"), (-1.0, [9], None)]),
    )
    rows, stats = build_examples([copy], BuildConfig(shuffle=False, objective="advantage"))
    # turn 1 alone in its turn: weight 0 − 0 = 0, dropped; the copy beats the unparseable
    # candidate (+1) but repeats the attempt: dropped; the unparseable one: −1 − 0 = −1.
    assert [(r.turn, r.input_ids[-1:], r.weight) for r in rows] == [(1, [9], -1.0)]
    assert stats.repeats_earlier_action == 1 and stats.zero_weight == 1
    with pytest.raises(ValueError, match="criteria 'all'"):
        BuildConfig(objective="advantage", criteria="success")


def test_copy_penalty_ranks_a_repeated_wrong_answer_below_a_changed_one() -> None:
    """A wrong correction repeating the wrong attempt (its tokens or its answer) counts as
    r − c inside the advantages: a changed wrong answer then beats the copies, the state still
    sums to zero, a state of wrong corrections only gains contrast, and the rows keep their
    true rewards."""
    attempt = (0.0, [1, 2, 3], "5")
    p = _traj(
        "p",
        _turn(0, [attempt]),
        _turn(
            1,
            [(1.0, [7, 8], "6"), (0.0, [1, 2, 3], "5"), (0.0, [4, 4], "5.0"), (0.0, [9], "7")],
        ),
    )
    r = _traj("r", _turn(0, [attempt]), _turn(1, [(0.0, [1, 2, 3], "5"), (0.0, [4, 5], "8")]))
    q = _traj("q", _turn(0, [(1.0, [3, 3], "6")]))
    plain = BuildConfig(shuffle=False, objective="advantage")
    rows, stats = build_examples([p, r, q], plain)
    assert [(r.problem_id, r.turn, r.weight) for r in rows if r.turn == 1] == [
        ("p", 1, 1.0), ("p", 1, pytest.approx(-1 / 3)), ("p", 1, pytest.approx(-1 / 3)),
        ("p", 1, pytest.approx(-1 / 3)),
    ]  # fmt: skip
    assert stats.copies_penalised == 0 and stats.zero_weight == 2  # r's state: no contrast

    shaped = BuildConfig(shuffle=False, objective="advantage", copy_penalty=1.0)
    rows, stats = build_examples([p, r, q], shaped)
    got = [(r.problem_id, r.turn, r.input_ids[-1], r.weight, r.reward) for r in rows]
    assert got == [
        ("p", 0, 3, pytest.approx(-1 / 3), 0.0),  # turn 1: 0 − the turn's mean (0 + 0 + 1) / 3
        ("p", 1, 8, pytest.approx(5 / 3), 1.0),  # 1 − mean(−1, −1, 0)
        ("p", 1, 3, -1.0, 0.0),  # the verbatim copy: (0 − 1) − mean(1, −1, 0)
        ("p", 1, 4, -1.0, 0.0),  # the same answer in other words
        ("p", 1, 9, pytest.approx(1 / 3), 0.0),  # changed, still wrong: now above its state
        ("r", 0, 3, pytest.approx(-1 / 3), 0.0),
        ("r", 1, 3, -1.0, 0.0),  # all wrong: the copy goes down ...
        ("r", 1, 5, 1.0, 0.0),  # ... and the change up
        ("q", 0, 3, pytest.approx(2 / 3), 1.0),
    ]
    assert sum(w for pid, t, _, w, _ in got if pid == "p" and t == 1) == pytest.approx(0.0)
    assert stats.copies_penalised == 3 and stats.zero_weight == 0
    assert stats.weight_total["positive"] == pytest.approx(5 / 3 + 1 / 3 + 1.0 + 2 / 3)
    assert stats.weight_total["negative"] == pytest.approx(-1 / 3 - 2.0 - 1 / 3 - 1.0)
    with pytest.raises(ValueError, match="copy_penalty must be >= 0"):
        BuildConfig(objective="advantage", copy_penalty=-1.0)
    with pytest.raises(ValueError, match="advantage' only"):
        BuildConfig(copy_penalty=1.0)


def test_max_corrections_draws_corrections_uniformly_and_keeps_every_first_answer() -> None:
    full, _ = build_examples(TRAJECTORIES, BuildConfig(shuffle=False, dedup=False))
    assert sum(r.turn > 0 for r in full) == 4 and sum(r.turn == 0 for r in full) == 4
    config = BuildConfig(shuffle=False, dedup=False, max_corrections=2)
    rows, stats = build_examples(TRAJECTORIES, config)
    assert sum(r.turn == 0 for r in rows) == 4 and sum(r.turn > 0 for r in rows) == 2
    assert stats.over_budget == 2 and stats.examples == 6
    before = [(r.problem_id, r.turn, r.weight) for r in full]
    after = [(r.problem_id, r.turn, r.weight) for r in rows]
    assert [x for x in before if x in after] == after  # a subset, in the input order
    corrections = sum(stats.composition[k]["count"] for k in stats.composition if k != "first")
    assert corrections == 2 and stats.composition["first"]["count"] == 4
    assert stats.weight_total["positive"] == pytest.approx(sum(r.weight for r in rows))
    again, _ = build_examples(TRAJECTORIES, config)
    assert [(r.problem_id, r.turn) for r in again] == [(r.problem_id, r.turn) for r in rows]
    other, _ = build_examples(TRAJECTORIES, BuildConfig(shuffle=False, dedup=False, seed=3,
                                                        max_corrections=2))  # fmt: skip
    assert sum(r.turn > 0 for r in other) == 2
    roomy = BuildConfig(shuffle=False, dedup=False, max_corrections=4)
    assert build_examples(TRAJECTORIES, roomy)[1].over_budget == 0
    none, stats = build_examples(TRAJECTORIES, BuildConfig(dedup=False, max_corrections=0))
    assert {r.turn for r in none} == {0} and stats.over_budget == 4
    with pytest.raises(ValueError, match="max_corrections"):
        BuildConfig(max_corrections=-1)
