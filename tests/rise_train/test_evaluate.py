"""Evaluation metrics on hand-made episodes (exact numbers), Wilson intervals, the runner, files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from rise.answers import get_grader
from rise.engine.base import GenerationChunk, SamplingConfig
from rise.episode import Episode, Turn
from rise_train.datasets import Problem
from rise_train.evaluate import EvalConfig, ablation_pairs, run_evaluation
from rise_train.metrics import compute_metrics, paired_comparison
from rise_train.report import (
    error_bars,
    format_comparison,
    format_evidence,
    format_paired,
    format_per_turn,
    format_table,
    plot_accuracy_by_turn,
    plot_copy_by_turn,
    read_report,
    write_evaluation,
)
from rise_train.stats import paired_bootstrap, paired_mean, wilson_interval
from tests.scripted_engine import ScriptedEngineBase


def episode(answers: Sequence[str | None], reference: str = "7", graded: bool = True) -> Episode:
    """An episode whose turns answered ``answers`` (graded now, or left for the evaluator)."""
    grader = get_grader("gsm8k")
    turns = [
        Turn(
            index=i,
            user_message="u",
            prompt_ids=[],
            output_ids=[],
            text=f"answer {a}",
            finish_reason="stop",
            answer=a,
            outcome=grader.grade(a, reference) if graded else None,
        )
        for i, a in enumerate(answers)
    ]
    return Episode(question="q", reference=reference, grader="gsm8k", turns=turns)


# A: always right. B: wrong -> right. C: right -> wrong (a three-way tie at the end goes to the
# latest answer, 6). D: reference 0.5; never right sequentially, right by the parallel vote
# (\frac{1}{2}, 0.5 and 1/2 are one answer).
EPISODES = [
    episode(["7", "7", "7"]),
    episode(["5", "7", "7"]),
    episode(["7", "5", "6"]),
    episode([None, "4", "4"], reference="0.5", graded=False),
]
PARALLEL = [
    ["7", "7", "5", "5", "5"],
    ["7", "8", "7", None, None],
    ["6", "6", "7", "7", "7"],
    ["\\frac{1}{2}", "0.5", "3", "3", "1/2"],
]


def counts(metric: dict) -> tuple[int, int]:
    return metric["count"], metric["n"]


def test_metrics_on_hand_made_episodes() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    m = report["metrics"]
    assert list(m) == ["m1@t1", "m5@t1", "m1@t3", "p1@t3", "acc@t1", "acc@t2", "acc@t3"]
    assert counts(m["m1@t1"]) == (2, 4)
    assert counts(m["m5@t1"]) == (3, 4)
    assert counts(m["m1@t3"]) == (2, 4)
    assert counts(m["p1@t3"]) == (3, 4)
    assert [counts(m[f"acc@t{k}"]) for k in (1, 2, 3)] == [(2, 4), (2, 4), (2, 4)]
    assert m["m5@t1"]["value"] == 0.75
    per_turn = report["per_turn"]
    assert [r["turn"] for r in per_turn] == [1, 2, 3]
    assert [counts(r["vote"]) for r in per_turn] == [(2, 4), (2, 4), (2, 4)]
    assert [counts(r["oracle"]) for r in per_turn] == [(2, 4), (3, 4), (3, 4)]
    assert "wrong_to_right" not in per_turn[0]
    assert counts(per_turn[1]["wrong_to_right"]) == (1, 4)  # B
    assert counts(per_turn[1]["right_to_wrong"]) == (1, 4)  # C
    assert counts(per_turn[2]["wrong_to_right"]) == (0, 4)
    assert counts(per_turn[2]["right_to_wrong"]) == (0, 4)
    for metric in m.values():
        low, high = metric["ci95"]
        assert (low, high) == pytest.approx(wilson_interval(metric["count"], metric["n"]))


def test_sequential_gain_and_repeated_turns() -> None:
    report = compute_metrics(EPISODES, 3, PARALLEL)
    # per problem, final vote minus first turn: A 0, B +1, C -1, D 0
    gain = report["sequential_gain"]
    assert (gain["value"], gain["n"], gain["better"], gain["worse"]) == (0.0, 4, 1, 1)
    # the interval is the paired bootstrap over problems (seeded, so exact)
    assert gain["ci95"] == pytest.approx(paired_bootstrap([0, 1, -1, 0])["ci95"])
    # turn 2 repeats turn 1's text only in A; turn 3 repeats turn 2 in A, B and D
    per_turn = report["per_turn"]
    assert "identical_to_previous" not in per_turn[0]
    assert [counts(r["identical_to_previous"]) for r in per_turn[1:]] == [(1, 4), (3, 4)]
    assert report["per_problem"]["first_turn"] == [True, False, True, False]
    assert report["per_problem"]["final_vote"] == [True, True, False, False]
    text = format_per_turn(report)
    assert text.splitlines()[0].endswith("same text")
    assert format_paired("m1@t3 - m1@t1", gain) in text
    assert text.splitlines()[-2].endswith("(1 better, 1 worse of 4)")
    # the compute-matched comparison closes the table: m1@t3 − m5@t1 per problem
    assert text.splitlines()[-1] == format_paired("m1@t3 - m5@t1", report["sequential_vs_parallel"])


def test_paired_comparison_pairs_problems_by_id() -> None:
    def tagged(episodes: list[Episode], ids: str) -> list[Episode]:
        for e, problem_id in zip(episodes, ids, strict=True):
            e.metadata["problem_id"] = problem_id
        return episodes

    base = compute_metrics(tagged(list(EPISODES), "ABCD"), 3)
    tuned_episodes = [
        episode(["7", "7", "7"]),  # E: not in base, left out
        episode(["5", "7", "7"]),  # C: wrong first, right by vote (base: right, then wrong)
        episode(["7", "7", "7"]),  # B: right from the start
        episode(["7", "7", "7"]),  # A: unchanged
        episode([None, "4", "4"], reference="0.5", graded=False),  # D: unchanged
    ]
    tuned = compute_metrics(tagged(tuned_episodes, "ECBAD"), 3)
    paired = paired_comparison(base, tuned)
    assert paired["problems"] == 4
    assert paired["m1@t1"]["value"] == 0.0  # B +1, C -1
    assert (paired["m1@t3"]["value"], paired["m1@t3"]["better"]) == (0.25, 1)  # C
    # gains: base (A 0, B +1, C -1, D 0), tuned (0, 0, +1, 0): differences 0, -1, +2, 0
    gain = paired["sequential_gain"]
    assert (gain["value"], gain["better"], gain["worse"]) == (0.25, 1, 1)
    lines = format_comparison("rise", "base", paired).splitlines()
    assert lines[0] == "rise minus base, paired over 4 problems:"
    assert [line.split()[0] for line in lines[1:]] == ["m1@t1", "m1@t3", "sequential_gain"]
    assert lines[3].split()[1] == "+0.250" and lines[3].endswith("(1 better, 1 worse of 4)")
    assert paired_comparison({"metrics": {}}, tuned) == {}
    assert paired_mean([])["n"] == 0


def test_metrics_without_parallel_and_with_short_episodes() -> None:
    # A run cut short keeps its last answer for the turns it could not take.
    report = compute_metrics([episode(["5", "7"]), episode([])], 4)
    m = report["metrics"]
    assert "m5@t1" not in m
    assert [counts(m[f"acc@t{k}"]) for k in (1, 2, 3, 4)] == [(0, 2), (1, 2), (1, 2), (1, 2)]
    assert counts(m["m1@t4"]) == (1, 2)  # 5, 7, 7, 7
    assert counts(m["p1@t4"]) == (1, 2)


def test_metrics_need_a_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        compute_metrics([Episode(question="q", turns=episode(["7"], graded=False).turns)], 1)


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(1, 64) == pytest.approx((0.0028, 0.0833), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k in range(0, 21):
        low, high = wilson_interval(k, 20)
        assert 0.0 <= low <= k / 20 <= high <= 1.0


def test_report_files_plot_and_table(tmp_path) -> None:
    base = compute_metrics(EPISODES, 3, PARALLEL)
    tuned = compute_metrics(EPISODES[:2] * 2, 3, PARALLEL)
    png = plot_accuracy_by_turn([("base", base), ("rise", tuned)], tmp_path / "p" / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table([("base", base), ("rise", tuned)])
    assert table.splitlines()[0].split() == ["model", "m1@t1", "m5@t1", "m1@t3", "p1@t3"]
    assert "0.500 [0.15,0.85] 2/4" in table and table.splitlines()[2].startswith("rise")


class TurnScriptedEngine(ScriptedEngineBase):
    """Answers ``6 + turn`` (so turn 2 is the first correct one for reference 7)."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.seeds: list[int | None] = []

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        self.seeds.append(sampling.seed)
        turn = self.tokenizer.decode(prompt_ids).count("<|im_start|>assistant") - 1
        reply = f"The answer is {6 + turn}."
        yield GenerationChunk(self.reply_ids(reply), reply, True, "stop")


async def test_run_evaluation_on_scripted_engine(tmp_path, tiny_tokenizer) -> None:
    engine = TurnScriptedEngine(tiny_tokenizer)
    problems = [Problem(f"e-{i}", f"What is {i}?", "7", "t", "gsm8k") for i in range(3)]
    config = EvalConfig(max_turns=3, n_parallel=4)
    result = await run_evaluation(engine, problems, config, label="s", progress=False)
    assert len(engine.seeds) == 3 * (3 + 3) and len(set(engine.seeds)) == len(engine.seeds)
    assert all(len(e.turns) == 3 for e in result.episodes)
    assert all(len(extra) == 3 for extra in result.parallel)
    m = result.report["metrics"]
    assert counts(m["m1@t1"]) == (0, 3) and counts(m["m4@t1"]) == (0, 3)
    assert [counts(m[f"acc@t{k}"]) for k in (1, 2, 3)] == [(0, 3), (3, 3), (0, 3)]
    assert counts(m["p1@t3"]) == (3, 3)
    assert counts(m["m1@t3"]) == (0, 3)  # 6, 7, 8: a tie, the latest (8) wins
    flips = result.report["per_turn"][2]
    assert counts(flips["right_to_wrong"]) == (3, 3)
    assert result.report["ci"].startswith("Wilson")
    assert result.report["tokens"]["output"] > 0

    path = write_evaluation(result, tmp_path)
    assert read_report(tmp_path) == json.loads(path.read_text()) == result.report
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["turns"]) == 3 and len(rows[0]["parallel"]) == 3


def test_plot_with_zero_and_full_proportions(tmp_path) -> None:
    # 0/10 at turn 1, 10/10 at turn 2: the Wilson bound is off the value by -1e-16, which
    # matplotlib rejected as a negative error bar.
    assert wilson_interval(10, 10)[1] < 1.0
    report = compute_metrics([episode(["5", "7"]) for _ in range(10)], 2, [["5", "5"]] * 10)
    assert counts(report["metrics"]["acc@t1"]) == (0, 10)
    assert counts(report["metrics"]["acc@t2"]) == (10, 10)
    png = plot_accuracy_by_turn([("edge", report)], tmp_path / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    below, above = error_bars(
        [report["per_turn"][1]["accuracy"], {"value": 0, "ci95": [1e-17, 0.3]}]
    )
    assert min(below + above) == 0.0
    copy = plot_copy_by_turn(
        [("edge", report), ("old", {"per_turn": [{"turn": 1}]})], tmp_path / "c.png"
    )
    assert copy is not None and copy.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_copy_by_turn([("old", {"per_turn": [{"turn": 1}]})], tmp_path / "x.png") is None


def test_ablation_pairs_pick_the_next_other_problem() -> None:
    def tagged(answers: list[str | None], pid: str) -> Episode:
        e = episode(answers)
        e.metadata["problem_id"] = pid
        return e

    a, b, c, a2 = (
        tagged(["5", "7"], "A"),
        tagged(["7", "7"], "B"),
        tagged(["4", "4"], "C"),
        tagged(["3", "7"], "A"),
    )
    short = tagged(["5"], "D")  # no turn 2: not in the ablation
    pairs = ablation_pairs([a, b, c, a2, short])
    assert [(e, o) for e, o in pairs] == [(a, c), (c, a2), (a2, c)]  # a2 -> a is the same problem
    assert ablation_pairs([a, a2]) == [(a, None), (a2, None)]


async def test_run_evaluation_repeats_and_ablation(tmp_path, tiny_tokenizer) -> None:
    engine = TurnScriptedEngine(tiny_tokenizer)  # turn 1 answers 6 (wrong), turn 2 answers 7
    problems = [Problem(f"e-{i}", f"What is {i}?", "7", "t", "gsm8k") for i in range(3)]
    config = EvalConfig(max_turns=2, n_parallel=2, repeats=2, ablation=True, context_window=1)
    result = await run_evaluation(engine, problems, config, label="s", progress=False)
    # 6 episodes x (2 turns + 1 parallel sample) + 6 ablation cases x (foreign + none)
    assert len(engine.seeds) == 6 * 3 + 6 * 2 == len(set(engine.seeds))
    assert [e.metadata["repeat"] for e in result.episodes] == [0, 1] * 3
    report = result.report
    assert (report["repeats"], report["context_window"], report["config"]["ablation"]) == (
        2,
        1,
        True,
    )
    assert "problem×repeat" in report["ci"] and "bootstrap" in report["ci"]
    assert report["per_problem"]["repeats"] == [2, 2, 2]
    assert report["per_problem"]["first_turn"] == [0.0, 0.0, 0.0]
    assert counts(report["metrics"]["m1@t1"]) == (0, 6)

    ablation = report["ablation"]
    assert ablation["cases"] == 6
    assert counts(ablation["own"]["accuracy"]) == (6, 6)
    assert counts(ablation["foreign"]["accuracy"]) == (6, 6)  # the scripted model always fixes
    assert counts(ablation["none"]["accuracy"]) == (0, 6)
    assert counts(ablation["none"]["same_as_own_attempt"]) == (6, 6)
    assert counts(ablation["foreign"]["changed"]) == (6, 6)
    for case in result.ablation:
        own = case.episode
        assert case.foreign is not None
        assert case.foreign.metadata["foreign_problem_id"] != own.metadata["problem_id"]
        # the attempts are token-identical here, so the foreign turn-2 prompt must be the own
        # one exactly: the same chat template, introspection message and window
        assert case.foreign.turns[1].prompt_ids == own.turns[1].prompt_ids
        assert case.none.prompt_ids == own.turns[0].prompt_ids
    # repeat 0 draws what a single-repeat run draws; later repeats are salted with their index
    single = TurnScriptedEngine(tiny_tokenizer)
    await run_evaluation(single, problems, EvalConfig(max_turns=2, n_parallel=2), progress=False)
    assert set(single.seeds) < set(engine.seeds)

    write_evaluation(result, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "ablation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"attempt", "own", "foreign", "none"} <= set(rows[0])
    assert "ablation" in format_evidence(read_report(tmp_path))


def test_evaluate_cli_options() -> None:
    from typing import get_args

    from typer.testing import CliRunner

    from rise.answers import GRADER_NAMES
    from rise_train.cli import GraderName, _data_name, app

    assert get_args(GraderName) == GRADER_NAMES
    assert _data_name("gsm8k:data/test.jsonl") == "test"
    assert _data_name("jsonl:/x/held.out.jsonl") == "held.out"
    assert _data_name("data/math500.jsonl") == "math500"
    assert _data_name("hf:openai/gsm8k:main") == "gsm8k"
    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    for option in (
        "--data",
        "--data-name",
        "--grader",
        "--repeats",
        "--ablation",
        "--context-window",
    ):
        assert option in result.output


def test_evaluate_cli_several_datasets(tmp_path, tiny_tokenizer, monkeypatch) -> None:
    """Two held-out sets, one engine: a subfolder, plots and a table row each; --grader."""
    from typer.testing import CliRunner

    import rise.engine
    from rise_train.cli import app

    engines: list[TurnScriptedEngine] = []

    def scripted(settings) -> TurnScriptedEngine:
        engines.append(TurnScriptedEngine(tiny_tokenizer))
        return engines[-1]

    monkeypatch.setattr(rise.engine, "build_engine", scripted)
    for name in ("alpha", "beta"):
        rows = [{"question": f"{name} {i}?", "answer": "7"} for i in range(2)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["evaluate", "--turns", "2", "--parallel", "2", "--quiet", "--label", "m"]
    data = ["--data", f"jsonl:{tmp_path}/alpha.jsonl", "--data", str(tmp_path / "beta.jsonl")]
    out = ["--output-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, *data, *out, "--grader", "exact"])
    assert result.exit_code == 0, result.output
    assert len(engines) == 1
    for name in ("alpha", "beta"):
        folder = tmp_path / "out" / name
        report = read_report(folder)
        # "The answer is 7." is right for the data's gsm8k grader, not for the exact one
        assert counts(report["metrics"]["acc@t2"]) == (0, 2)
        assert (folder / "accuracy_by_turn.png").is_file()
        assert (folder / "copy_by_turn.png").is_file()
        episode_row = json.loads((folder / "episodes.jsonl").read_text().splitlines()[0])
        assert episode_row["grader"] == "exact"
    table = result.output[result.output.index("model  data") :].splitlines()
    assert [line.split()[:2] for line in table[1:3]] == [["m", "alpha"], ["m", "beta"]]

    # once: the old layout (no subfolder), and --compare against the folder of several
    once = [*args, "--data", str(tmp_path / "beta.jsonl"), "--output-dir", str(tmp_path / "one")]
    compare = ["--compare", str(tmp_path / "out" / "beta"), "--grader", "gsm8k"]
    result = CliRunner().invoke(app, [*once, *compare])
    assert result.exit_code == 0, result.output
    assert counts(read_report(tmp_path / "one")["metrics"]["acc@t2"]) == (2, 2)
    assert "m minus beta, paired over 2 problems:" in result.output
    named = [*args, "--data", "a.jsonl", "--data", "b.jsonl", "--data-name", "x"]
    assert CliRunner().invoke(app, named).exit_code != 0
