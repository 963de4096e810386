"""The reviewer-facing metrics on hand-made episodes (exact counts), and the paired bootstrap."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from rise.answers import get_grader
from rise.episode import Episode, Turn
from rise_train.metrics import (
    AblationCase,
    ablation_metrics,
    compute_metrics,
    distinct_answers,
    distribution,
    paired_comparison,
    same_answer,
)
from rise_train.report import (
    format_ablation,
    format_anchoring,
    format_evidence,
    format_exploration,
    format_flips,
)
from rise_train.stats import paired_bootstrap, paired_mean

GSM8K = get_grader("gsm8k")


def turn(text: str, answer: str | None, ids: Sequence[int], index: int = 0) -> Turn:
    return Turn(
        index=index,
        user_message="u",
        prompt_ids=[],
        output_ids=list(ids),
        text=text,
        finish_reason="stop",
        answer=answer,
        outcome=GSM8K.grade(answer, "7"),
    )


def episode(turns: Sequence[tuple[str, str | None, Sequence[int]]], pid: str | None = None):
    e = Episode(
        question="q",
        reference="7",
        grader="gsm8k",
        turns=[turn(text, a, ids, i) for i, (text, a, ids) in enumerate(turns)],
    )
    if pid is not None:
        e.metadata["problem_id"] = pid
    return e


# Reference 7 throughout. Correct per turn: E1 RRR, E2 WWR, E3 RWW, E4 WWW.
EPISODES = [
    # right, copied verbatim after right, then the same answer reworded
    episode([("The answer is 7.", "7", [1, 2, 3, 4]), ("The answer is 7.", "7", [1, 2, 3, 4]),
             ("So it is 7.", "7", [1, 2, 3, 9])]),
    # wrong, copied verbatim after wrong, then corrected
    episode([("It is 5.", "5", [5, 5]), ("It is 5.", "5", [5, 5]), ("Now 7.", "7", [6, 6])]),
    # right, then talked out of it, then the wrong turn copied
    episode([("7.", "7", [7]), ("5.", "5", [8]), ("5.", "5", [8])]),
    # no answer twice (one answer: "no answer"), then a wrong one
    episode([("no idea", None, [1, 2]), ("no clue", None, [1, 3]),
             ("maybe 4", "4", [1, 3, 5, 5])]),
]  # fmt: skip
PARALLEL = [["7", "7.0", "5"], ["5", "5", "5"], ["7", None, None], [None, "3", "4"]]


def counts(metric: dict) -> tuple[int, int]:
    return metric["count"], metric["n"]


def selectivity(c: dict) -> list[tuple[int, int]]:
    keys = ("identical_given_right", "identical_given_wrong")
    keys += ("same_answer_given_right", "same_answer_given_wrong")
    return [counts(c[k]) for k in keys]


def test_copy_selectivity_per_turn_and_pooled() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    per_turn = report["per_turn"]
    assert "copy_selectivity" not in per_turn[0]
    # turn 2 after right: E1 (copied), E3 (changed); after wrong: E2 (copied), E4 (None again)
    assert selectivity(per_turn[1]["copy_selectivity"]) == [(1, 2), (1, 2), (1, 2), (2, 2)]
    # turn 3 after right: E1 (same answer, new text); after wrong: E2, E3 (copied), E4
    assert selectivity(per_turn[2]["copy_selectivity"]) == [(0, 1), (1, 3), (1, 1), (1, 3)]
    pooled = report["copy_selectivity"]
    assert pooled["pairs"] == 8
    assert selectivity(pooled) == [(1, 3), (2, 5), (2, 3), (3, 5)]


def test_edit_ratio_distribution() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    turn_2 = report["per_turn"][1]["copy_selectivity"]["edit_ratio"]
    # ratios 1.0 (E1), 1.0 (E2), 0.0 (E3), 0.5 (E4: one substitution in two tokens)
    assert turn_2["n"] == 4 and turn_2["mean"] == pytest.approx(0.625)
    assert turn_2["quartiles"] == pytest.approx([0.375, 0.75, 1.0])
    assert turn_2["histogram"]["counts"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert turn_2["histogram"]["edges"][0] == 0.0 and turn_2["histogram"]["edges"][-1] == 1.0
    # turn 3: 0.75, 0.0, 1.0, 0.5; pooled over both turns
    pooled = report["copy_selectivity"]["edit_ratio"]
    assert pooled["n"] == 8 and pooled["mean"] == pytest.approx(4.75 / 8)
    assert pooled["histogram"]["counts"] == [2, 0, 0, 0, 0, 2, 0, 1, 0, 3]
    empty = distribution([])
    assert empty["n"] == 0 and empty["mean"] is None and sum(empty["histogram"]["counts"]) == 0


def test_pooled_flips() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    # turn 2: E3 right -> wrong; turn 3: E2 wrong -> right
    assert report["flips"] == {
        "wrong_to_right": 1,
        "right_to_wrong": 1,
        "ratio": 1.0,
        "transitions": 8,
    }
    only_up = compute_metrics(EPISODES[1:2], 3)["flips"]
    assert (only_up["wrong_to_right"], only_up["right_to_wrong"], only_up["ratio"]) == (1, 0, None)
    assert "no right->wrong" in format_flips({"flips": only_up})
    assert "wrong->right 1, right->wrong 1 (1.00 : 1) of 8" in format_flips(report)


def test_parallel_pass_and_distinct_answers() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    exploration = report["exploration"]
    assert counts(exploration["p1@t3"]) == (3, 4)
    assert counts(exploration["p3@t1"]) == (2, 4)  # E1 and E3 have a correct sample
    distinct = exploration["distinct_answers"]
    # sequential: {7}, {5, 7}, {7, 5}, {None, 4}; parallel: {7 = 7.0, 5}, {5}, {7, None},
    # {None, 3, 4}
    assert distinct["sequential"] == pytest.approx(7 / 4)
    assert distinct["parallel"] == pytest.approx(8 / 4)
    assert (distinct["turns"], distinct["samples"]) == (3, 3)
    assert list(report["metrics"]) == ["m1@t1", "m3@t1", "m1@t3", "p1@t3", "acc@t1", "acc@t2",
                                       "acc@t3"]  # fmt: skip
    text = format_exploration(report)
    assert "p1@t3 0.75 (3/4), p3@t1 0.50 (2/4)" in text and "1.75 over 3 turns" in text
    without = compute_metrics(EPISODES, 3)["exploration"]
    assert "p3@t1" not in without and "parallel" not in without["distinct_answers"]


def test_sequential_vote_against_the_parallel_vote_paired_over_problems() -> None:
    """m1@t3 − m3@t1 per problem: only E3 differs (its turns vote 5, its samples 7)."""
    report = compute_metrics(EPISODES, 3, PARALLEL)
    matched = report["sequential_vs_parallel"]
    assert matched["value"] == pytest.approx(
        report["metrics"]["m1@t3"]["value"] - report["metrics"]["m3@t1"]["value"]
    )
    assert (matched["value"], matched["better"], matched["worse"]) == (-0.25, 0, 1)
    assert "sequential_vs_parallel" not in compute_metrics(EPISODES, 3)


def test_anchoring_against_the_independent_samples() -> None:
    """Turn 2 keeping turn 1's answer vs the other parallel samples giving it, by turn 1."""
    short = episode([("It is 5.", "5", [5])])  # no turn 2: left out
    report = compute_metrics([*EPISODES, short], 3, [*PARALLEL, ["5", "5", "5"]])
    wrong, right = report["anchoring"]["given_wrong"], report["anchoring"]["given_right"]
    # wrong turn 1: E2 keeps 5 (its samples: 5, 5), E4 keeps "no answer" (samples: 3, 4)
    assert counts(wrong["turn2"]) == (2, 2) and counts(wrong["samples"]) == (2, 4)
    assert wrong["excess"]["value"] == pytest.approx((1 - 1 + 1 - 0) / 2)
    # right turn 1: E1 keeps 7 (samples 7.0 and 5), E3 changes to 5 (samples: no answer twice)
    assert counts(right["turn2"]) == (1, 2) and counts(right["samples"]) == (1, 4)
    assert right["excess"]["value"] == pytest.approx((1 - 0.5 + 0 - 0) / 2)
    # being right at turn 2 vs the samples: E2 5 (samples 5, 5), E4 none (3, 4): none right;
    # E1 7 (7.0 right, 5 not): 1 − 0.5; E3 5 (no answers): 0 − 0
    assert counts(wrong["turn2_correct"]) == (0, 2) and counts(wrong["samples_correct"]) == (0, 4)
    assert wrong["correct_excess"]["value"] == 0.0
    assert counts(right["turn2_correct"]) == (1, 2) and counts(right["samples_correct"]) == (1, 4)
    assert right["correct_excess"]["value"] == pytest.approx((0.5 + 0.0) / 2)
    text = format_anchoring(report)
    assert "after a wrong turn 1: keeps its answer 1.00 (2/2) vs samples give it 0.50 (2/4)" in text
    assert "(excess +50.0 [" in text and "right 0.00 (0/2) vs samples 0.00 (0/4)" in text
    assert "after a right turn 1: keeps its answer 0.50 (1/2) vs samples give it 0.25 (1/4)" in text
    assert "anchoring" not in compute_metrics(EPISODES, 3) and format_anchoring({}) == ""


def test_same_and_distinct_answers_with_none() -> None:
    eq = GSM8K.equivalent
    assert same_answer(None, None, eq) and not same_answer(None, "4", eq)
    assert same_answer("0.5", "1/2", eq) and not same_answer("0.5", "2", eq)
    assert distinct_answers([None, "\\frac{1}{2}", "0.5", None, "3"], eq) == 3
    assert distinct_answers([], eq) == 0


def test_repeats_average_per_problem() -> None:
    # Problem A twice (right first time / wrong then corrected), B once (always wrong).
    right = [("7", "7", [1]), ("7", "7", [1])]
    fixed = [("5", "5", [2]), ("7", "7", [1])]
    wrong = [("5", "5", [2]), ("4", "4", [3])]
    episodes = [episode(right, "A"), episode(fixed, "A"), episode(wrong, "B")]
    report = compute_metrics(episodes, 2)
    assert counts(report["metrics"]["m1@t1"]) == (1, 3)  # Wilson over problem×repeat episodes
    rows = report["per_problem"]
    assert rows == {
        "ids": ["A", "B"],
        "first_turn": [0.5, 0.0],
        "final_vote": [1.0, 0.0],  # A: 7,7 and 5,7 (a tie goes to the latest, 7)
        "repeats": [2, 1],
    }
    gain = report["sequential_gain"]  # per problem: A +0.5, B 0
    assert (gain["value"], gain["n"], gain["better"], gain["worse"]) == (0.25, 2, 1, 0)
    assert gain["ci95"] == pytest.approx(paired_bootstrap([0.5, 0.0])["ci95"])

    # tuned vs base on the fractional per-problem means
    tuned = compute_metrics([episode(right, "A"), episode(fixed, "B")], 2)
    paired = paired_comparison(report, tuned)
    assert paired["problems"] == 2
    assert paired["m1@t1"]["value"] == pytest.approx((0.5 + 0.0) / 2)  # A 1-0.5, B 0-0
    assert paired["m1@t2"]["value"] == pytest.approx(0.5)  # A 1-1, B 1-0
    # gains: tuned A 0, B +1; base A +0.5, B 0 -> -0.5, +1
    assert paired["sequential_gain"]["value"] == pytest.approx(0.25)
    json.dumps(report)  # the report is plain JSON


def test_paired_bootstrap() -> None:
    assert paired_bootstrap([]) == paired_mean([])
    constant = paired_bootstrap([0.5] * 7)
    assert constant["value"] == 0.5 and constant["ci95"] == pytest.approx([0.5, 0.5])
    assert (constant["better"], constant["worse"], constant["n"]) == (7, 0, 7)
    d = [1, 0, 0, -1, 1, 1, 0, 0.5, -0.5, 1]
    one, again = paired_bootstrap(d), paired_bootstrap(d)
    assert one == again  # seeded
    assert paired_bootstrap(d, seed=1)["ci95"] != one["ci95"]
    low, high = one["ci95"]
    assert min(d) <= low < one["value"] < high <= max(d)
    assert (one["better"], one["worse"]) == (5, 2)
    # with many problems it agrees with the normal approximation
    many = [(-1, 0, 0, 1, 1)[i % 5] for i in range(500)]
    assert paired_bootstrap(many)["ci95"] == pytest.approx(paired_mean(many)["ci95"], abs=0.01)
    assert paired_bootstrap([1, 0] * 3, n_boot=10)["n"] == 6


def foreign_episode(shown: tuple[str, str | None], sample: tuple[str, str | None]) -> Episode:
    return episode([(shown[0], shown[1], [1]), (sample[0], sample[1], [2])])


def test_ablation_metrics() -> None:
    # A: own turn 2 repeats its wrong 5; after B's attempt (3) it answers 7; fresh it says 5.
    # B: own turn 2 fixes 3 -> 7; after A's attempt (5) it copies 5; fresh it says 7.
    # C: no answer, then no answer again; no foreign attempt left; fresh it says 8.
    cases = [
        AblationCase(
            episode([("5", "5", [1]), ("5", "5", [1])], "A"),
            foreign_episode(("3", "3"), ("7", "7")),
            turn("5", "5", [1]),
        ),
        AblationCase(
            episode([("3", "3", [1]), ("7", "7", [2])], "B"),
            foreign_episode(("5", "5"), ("5", "5")),
            turn("7", "7", [2]),
        ),
        AblationCase(
            episode([("?", None, [1]), ("??", None, [2])], "C"), None, turn("8", "8", [3])
        ),
    ]
    report = ablation_metrics(cases)
    assert report["cases"] == 3

    def row(name: str) -> tuple:
        c = report[name]
        return c["n"], counts(c["accuracy"]), counts(c["same_as_own_attempt"]), counts(c["changed"])

    assert row("own") == (3, (1, 3), (2, 3), (1, 3))
    assert row("foreign") == (2, (1, 2), (0, 2), (1, 2))
    assert row("none") == (3, (1, 3), (1, 3), (2, 3))
    paired = report["paired"]
    assert list(paired) == [
        "changed: own - foreign",
        "same_as_own_attempt: own - foreign",
        "same_as_own_attempt: own - none",
        "accuracy: own - none",
    ]
    assert (paired["changed: own - foreign"]["value"], paired["changed: own - foreign"]["n"]) == (
        0.0,
        2,
    )
    assert paired["same_as_own_attempt: own - foreign"]["value"] == 0.5
    assert paired["same_as_own_attempt: own - none"]["value"] == pytest.approx(1 / 3)
    assert paired["accuracy: own - none"]["value"] == 0.0
    text = format_ablation({"ablation": report})
    assert text.startswith("turn-2 context ablation (3 wrong first turns):")
    assert "foreign  2  0.50 (1/2)" in text

    full = compute_metrics([c.episode for c in cases], 2, ablation=cases)
    assert full["ablation"] == report
    assert format_ablation(full) in format_evidence(full)
    assert cases[0].to_dict()["foreign"]["answer"] == "7"
    assert cases[2].to_dict()["foreign"] is None


def test_old_reports_still_format() -> None:
    old = {"metrics": {}, "per_turn": [{"turn": 1}]}
    assert format_evidence(old) == ""


def test_copy_rates_bootstrap_over_problems_not_pairs() -> None:
    """Turn pairs of one episode are not independent: a rate whose pairs come in all-or-nothing
    groups gets a wider interval than a Wilson interval over the pairs would give, and the
    interval of a steady rate stays narrow."""
    from rise_train.stats import cluster_bootstrap, wilson_interval

    clustered = cluster_bootstrap([(5, 5)] * 10 + [(0, 5)] * 10)  # 100 pairs, 20 problems
    assert clustered["value"] == 0.5 and (clustered["count"], clustered["n"]) == (50, 100)
    low, high = clustered["ci95"]
    w_low, w_high = wilson_interval(50, 100)
    assert high - low > 1.5 * (w_high - w_low)
    steady = cluster_bootstrap([(1, 2)] * 20)  # every problem at 50%
    assert steady["ci95"] == [0.5, 0.5]
    assert cluster_bootstrap([(0, 0)])["n"] == 0


def test_feedback_effects_follow_every_named_slip_into_the_next_turn() -> None:
    from rise.episode import Feedback, Outcome, Verdict
    from rise_train.metrics import feedback_effects

    def judged(text: str, answer: str, index: int, slips: tuple[str, ...] = ()) -> Turn:
        verdict = Verdict.INCORRECT if slips else Verdict.UNKNOWN
        t = turn(text, answer, [index], index)
        t.outcome = Outcome.CORRECT if answer == "72" else Outcome.WRONG
        t.feedback = Feedback("calculator", verdict, "m", slips)
        return t

    slip = ("12 x 6 = 72, not 62",)
    fixed = Episode(question="q", reference="72", grader="gsm8k", turns=[
        judged("12 x 6 = 62", "62", 0, slip), judged("12 x 6 = 72", "72", 1)])  # fmt: skip
    repeated = Episode(question="r", reference="72", grader="gsm8k", turns=[
        judged("12 x 6 = 62", "62", 0, slip), judged("12 x 6 = 62", "62", 1, slip)])  # fmt: skip
    report = feedback_effects([fixed, repeated], max_turns=2)
    assert report is not None
    assert report["verdicts"] == {"calculator": {"incorrect": 3, "unknown": 1}}
    assert report["slips_named"] == 2  # the last turn's slip has no next turn
    assert (report["slips_fixed"]["count"], report["slips_repeated"]["count"]) == (1, 1)
    assert report["next_turn_right_after_slip"]["value"] == 0.5
    plain = Episode(question="p", turns=[turn("t", None, [1])])
    assert feedback_effects([plain], max_turns=1) is None
