"""The experiment tables read evaluation-only folders too, and recompute new diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.experiment_report import print_summary, summarize_run
from rise.episode import Episode, Turn


def _episode(answers: list[str], parallel: list[str], pid: str) -> dict:
    def turn(i: int, answer: str) -> Turn:
        return Turn(
            index=i, user_message="u", prompt_ids=[], output_ids=[i], text=f"it is {answer}",
            finish_reason="stop", answer=answer,
        )  # fmt: skip

    row = Episode(
        question="q", reference="7", grader="gsm8k",
        turns=[turn(i, a) for i, a in enumerate(answers)], metadata={"problem_id": pid},
    ).to_dict()  # fmt: skip
    row["parallel"] = [turn(0, a).to_dict() for a in parallel]
    return row


def test_an_evaluation_folder_is_summarized_with_recomputed_anchoring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder ``--evaluate-model`` wrote (eval/ and eval-<set>/, no manifest) is read as one
    model; a report written before anchoring existed gets it from its episodes."""
    rows = [_episode(["5", "5"], ["5", "3"], "a"), _episode(["7", "7"], ["7", "7"], "b")]
    for folder in ("eval", "eval-oot"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "episodes.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        (tmp_path / folder / "report.json").write_text(
            json.dumps({"max_turns": 2, "n_parallel": 3, "metrics": {}})
        )
    result = summarize_run(tmp_path)
    assert set(result["sets"]) == {"eval", "oot"}
    wrong = result["sets"]["eval"]["model"]["anchoring"]["given_wrong"]
    assert (wrong["turn2"]["count"], wrong["samples"]["count"], wrong["samples"]["n"]) == (1, 1, 2)
    assert (tmp_path / "results.json").exists()
    print_summary([tmp_path])
    assert "100% / 50%" in capsys.readouterr().out  # t1 wrong: t2 keeps / samples give


def test_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="neither a run directory"):
        summarize_run(tmp_path)


def test_answer_follows_work_compares_the_answer_with_the_last_result() -> None:
    from bench.experiment_report import answer_follows_work

    def turn(i: int, text: str, answer: str | None) -> Turn:
        return Turn(index=i, user_message="u", prompt_ids=[], output_ids=[i], text=text,
                    finish_reason="stop", answer=answer)  # fmt: skip

    episode = Episode(
        question="q",
        turns=[
            turn(0, "20 - 4 = 16 left.\nThe answer is \\boxed{16}.", "16"),  # follows
            turn(1, "20 - 4 = 12, then 12 + 4 = 16.\nThe answer is \\boxed{2}.", "2"),  # not
            turn(2, "I think it is \\boxed{7}.", "7"),  # no "= N": not counted
            turn(3, "So 3 * 4 = 12 \\boxed{12}", "12"),  # no answer line: cut at \boxed
            turn(4, "5 + 5 = 10.\nThe answer is \\boxed{ten}.", "ten"),  # not a number
            turn(5, "5 + 5 = 10.", None),  # no answer: not counted
        ],
    )
    got = answer_follows_work([episode])
    assert (got["first"]["count"], got["first"]["n"]) == (1, 1)
    assert (got["later"]["count"], got["later"]["n"]) == (1, 3)


def test_seed_mean_averages_seeds_per_problem_before_the_bootstrap() -> None:
    from bench.experiment_report import seed_mean

    def report(first: list[float], final: list[float]) -> dict:
        ids = [f"p{i}" for i in range(len(first))]
        return {"per_problem": {"ids": ids, "first_turn": first, "final_vote": final}}

    base = report([0, 0, 1, 1], [0, 1, 1, 0])  # gain per problem 0, +1, 0, -1
    seeds = [report([1, 0, 1, 0], [1, 1, 1, 0]), report([1, 0, 0, 0], [1, 0, 1, 1])]
    result = seed_mean(base, seeds)
    # seed-mean gains per problem: 0, 0.5, 0.5, 0.5 -> 0.375; minus the base's: 0, -0.5, .5, 1.5
    assert result["gain"]["value"] == pytest.approx(0.375)
    assert result["gain_minus_base_gain"]["value"] == pytest.approx(0.375)
    assert result["m1@t1_minus_base"]["value"] == pytest.approx((1 + 0 - 0.5 - 1) / 4)
    assert result["gain"]["n"] == 4
