"""The CLI: help everywhere, clear one-line errors with a non-zero exit, config files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rise_train.cli import app

COMMANDS = [
    "prepare-model",
    "collect",
    "merge-shards",
    "build",
    "train",
    "evaluate",
    "iterate",
    "report",
]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *needles: str) -> None:
    # stdout and stderr together; rich error boxes wrap lines, so compare on collapsed spaces.
    output = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in output, result.output


def trajectory(problem_id: str, outcomes: list[str]) -> dict:
    reward = {"correct": 1.0, "wrong": 0.0, "unparseable": -1.0}
    turns = [
        {
            "index": t,
            "user_message": "u",
            "prompt_ids": [1, len(problem_id), 3 + t],
            "candidates": [
                {
                    "text": o,
                    "output_ids": [10 + t, 11],
                    "ended_with_eos": True,
                    "answer": "7" if o == "correct" else str(5 - t),
                    "outcome": o,
                    "reward": reward[o],
                    "source": "policy",
                }
            ],
            "chosen": 0,
        }
        for t, o in enumerate(outcomes)
    ]
    return {"problem_id": problem_id, "question": "q", "reference": "7", "grader": "gsm8k",
            "source": "t", "context": [], "turns": turns, "iteration": 0, "seed": 0}  # fmt: skip


@pytest.fixture
def trajectories(tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    rows = [trajectory("a", ["wrong", "correct"]), trajectory("bb", ["wrong", "wrong"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_help_for_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
        sub = invoke(command, "--help")
        assert sub.exit_code == 0, sub.output
        assert "Usage" in sub.output


def test_no_command_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.output and result.exit_code in (0, 2)


def test_collect_needs_data() -> None:
    assert_clean_failure(invoke("collect"), "--data")


def test_missing_data_file(tmp_path: Path) -> None:
    result = invoke("collect", "--data", f"gsm8k:{tmp_path}/nope.jsonl")
    assert_clean_failure(result, "error:", "no such problem file")
    result = invoke("evaluate", "--data", f"{tmp_path}/nope.jsonl")
    assert_clean_failure(result, "no such problem file")


def test_unknown_problem_spec() -> None:
    assert_clean_failure(invoke("iterate", "--train-data", "csv:x"), "unknown problem spec")


def test_unknown_criteria(trajectories: Path) -> None:
    result = invoke("build", "--trajectories", trajectories, "--criteria", "nicest")
    assert_clean_failure(result, "criteria")


def test_build_missing_trajectories(tmp_path: Path) -> None:
    assert_clean_failure(invoke("build"), "--trajectories")
    result = invoke("build", "--trajectories", tmp_path / "nope.jsonl")
    assert_clean_failure(result, "no such file")


def test_train_missing_examples(tmp_path: Path) -> None:
    result = invoke("train", "--examples", tmp_path / "nope.jsonl")
    assert_clean_failure(result, "examples")


def test_train_signed_weights_without_policy_clip(tmp_path: Path, tiny_model_dir: Path) -> None:
    examples = tmp_path / "signed.jsonl"
    rows = [
        {"kind": "sft", "input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "weight": w}
        for w in (1.0, -1.0)
    ]
    examples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("train", "--model", tiny_model_dir, "--examples", examples)
    result = invoke(*args, "--output-dir", tmp_path / "out")
    assert_clean_failure(result, "negative weights", "--policy-clip")


def test_build_and_train_name_one_objective(
    tmp_path: Path, trajectories: Path, tiny_model_dir: Path
) -> None:
    """``build --objective advantage`` writes signed weights; ``train`` trains them only when
    told the same objective, and logs that objective's statistics."""
    examples = tmp_path / "signed.jsonl"
    result = invoke(
        "build", "--trajectories", trajectories, "--output", examples, "--objective", "advantage"
    )
    assert result.exit_code == 0, result.output
    weights = sorted(json.loads(line)["weight"] for line in examples.read_text().splitlines())
    assert weights == [-0.5, 0.5]  # turn 2: right (1) and wrong (0) against their mean
    args = (
        "train", "--model", tiny_model_dir, "--examples", examples, "--max-steps", "2",
        "--batch-size", "2", "--grad-accum", "1", "--train-arg", "save_strategy=no",
    )  # fmt: skip
    refused = invoke(*args, "--output-dir", tmp_path / "refused", "--objective", "preference")
    assert_clean_failure(refused, "negative weights", "--objective advantage")
    out = tmp_path / "out"
    result = invoke(*args, "--output-dir", out, "--objective", "advantage", "--anchor-kl", "0.1")
    assert result.exit_code == 0, result.output
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all("clip_fraction" in h and "anchor_kl" in h for h in logged)


def test_teacher_needs_url_and_model(tmp_path: Path, shared_data: Path) -> None:
    spec = f"gsm8k:{shared_data}/gsm8k/test.jsonl"
    result = invoke("collect", "--data", spec, "--limit", "2", "--teacher-url", "http://x/v1")
    assert_clean_failure(result, "--teacher-model")


def test_report_on_a_non_run(tmp_path: Path) -> None:
    assert_clean_failure(invoke("report", tmp_path), "neither a run directory nor a report")


def test_build_runs_and_config_file_precedence(tmp_path: Path, trajectories: Path) -> None:
    out = tmp_path / "ex.jsonl"
    config = tmp_path / "c.yaml"
    # criteria from the command's section, objective from the flat keys, then a flag wins.
    config.write_text(
        "objective: sft\nmax-tokens: 99\nbuild:\n  criteria: success\n  shuffle: false\n"
    )
    result = invoke("build", "--trajectories", trajectories, "--output", out, "--config", config)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["problem_id"], r["turn"], r["weight"]) for r in rows] == [("a", 1, 1.0)]

    result = invoke(
        "build", "--trajectories", trajectories, "--output", out, "--config", config,
        "--criteria", "all", "--objective", "rwr",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["examples"] == 4 and stats["by_outcome"] == {"wrong": 3, "correct": 1}
    weights = sorted(json.loads(line)["weight"] for line in out.read_text().splitlines())
    assert weights == pytest.approx([1.0, 1.0, 1.0, 12.182493960703473])


def test_config_file_errors(tmp_path: Path, trajectories: Path) -> None:
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("critera: all\n")
    result = invoke("build", "--trajectories", trajectories, "--config", bad_key)
    assert_clean_failure(result, "unknown key", "critera")
    bad_value = tmp_path / "bad2.json"
    bad_value.write_text(json.dumps({"criteria": "nicest"}))
    result = invoke("build", "--trajectories", trajectories, "--config", bad_value)
    assert_clean_failure(result, "criteria")
    result = invoke("build", "--trajectories", trajectories, "--config", tmp_path / "none.yaml")
    assert_clean_failure(result, "no such config file")
    not_a_map = tmp_path / "list.yaml"
    not_a_map.write_text("- 1\n- 2\n")
    result = invoke("build", "--trajectories", trajectories, "--config", not_a_map)
    assert_clean_failure(result, "mapping")


def test_bad_train_arg(tmp_path: Path) -> None:
    examples = tmp_path / "e.jsonl"
    examples.write_text("{}\n")
    result = invoke("train", "--examples", examples, "--train-arg", "no-equals-sign")
    assert_clean_failure(result, "KEY=VALUE")


def test_report_prints_a_run(tmp_path: Path) -> None:
    metric = {"value": 0.5, "count": 1, "n": 2, "ci95": [0.09, 0.91]}
    manifest = {
        "evaluations": {"base": {"metrics": {"m1@t1": metric, "acc@t1": metric}}},
        "iterations": [
            {
                "iteration": 0,
                "collect": {"problems": 2, "solved": 1},
                "build": {"examples": 3},
                "train": {"global_step": 2, "losses": [2.0, 1.0]},
            }
        ],
        "stages": [{"stage": "collect", "iteration": 0, "wall_s": 1.5}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("report", tmp_path)
    assert result.exit_code == 0, result.output
    assert "0.500 [0.09,0.91] 1/2" in result.output and "2.000 -> 1.000" in result.output
    assert "collect" in result.output
