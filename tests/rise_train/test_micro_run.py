"""RISE iterations: resuming a run (no engine), and one iteration end to end on CPU.

End to end: the tiny model goes through the real CLI, then the service.

``python -m rise_train iterate`` runs in a subprocess (as a user would run it; its vLLM engines
start and exit there): 16 GSM8K problems, 2 turns x 2 candidates, a few optimizer steps, base
and tuned evaluations on 8 held-out problems. The test then checks the trajectories, the
example weights, that training lowered the weighted loss on its own examples, and that the
trained checkpoint is served by the RISE service (``python -m app``) and answers ``POST /solve``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from typer.testing import CliRunner

from rise_train.cli import app as cli_app
from rise_train.data import WeightedCollator
from rise_train.datasets import Problem
from rise_train.iterate import DataSet, IterateConfig, format_run, open_manifest, run, save_manifest
from rise_train.metrics import compute_metrics, paired_comparison
from rise_train.objectives.rwr import weighted_nll
from testbed.processes import free_port

REPO = Path(__file__).resolve().parents[2]
REWARD = {"correct": 1.0, "wrong": 0.0, "unparseable": -1.0}
ENGINE_FLAGS = ["--max-model-len", "4096", "--kv-cache-gib", "0.25", "--block-size", "32"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weighted_loss(model_dir: Path, examples: list[dict], pad_id: int) -> float:
    """The training objective over every example in one batch (no dropout, no update)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = WeightedCollator(pad_token_id=pad_id)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(weighted_nll(logits, batch["labels"], batch["weights"]))


def solve_through_service(model_dir: Path, data_dir: Path, log: Path) -> dict:
    """Start ``python -m app`` on the checkpoint, wait for /ready, POST /solve, stop it."""
    port = free_port()
    env = {
        **os.environ,
        "RISE_MODEL": str(model_dir), "RISE_PORT": str(port), "RISE_DATA_DIR": str(data_dir),
        "RISE_MAX_MODEL_LEN": "4096", "RISE_KV_CACHE_GIB": "0.25", "RISE_BLOCK_SIZE": "32",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, f"the service exited:\n{log.read_text()[-3000:]}"
                try:
                    if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (
                    f"not ready in 180 s:\n{log.read_text()[-3000:]}"
                )
                time.sleep(1)
            body = {"question": "Tom has 3 apples and buys 4 more. How many?", "max_turns": 1,
                    "max_tokens": 24}  # fmt: skip
            response = httpx.post(f"{base}/solve", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_iterate(
    model: Path, gsm8k: Path, run_dir: Path, data_dir: Path, n_train: int, n_eval: int, *flags: str
) -> subprocess.CompletedProcess:
    """``python -m rise_train iterate`` on GSM8K problems with the tiny model, 2 turns, and the
    given flags; asserts that it succeeded."""
    command = [
        sys.executable, "-m", "rise_train", "iterate",
        "--train-data", f"gsm8k:{gsm8k / 'train.jsonl'}", "--train-limit", str(n_train),
        "--eval-data", f"gsm8k:{gsm8k / 'test.jsonl'}", "--eval-limit", str(n_eval),
        "--model", str(model), "--run-dir", str(run_dir), "--data-dir", str(data_dir),
        "--turns", "2", "--eval-turns", "2", "--learning-rate", "1e-3", "--batch-size", "8",
        "--grad-accum", "1", "--quiet", *ENGINE_FLAGS, *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.engine
@pytest.mark.slow
def test_micro_run_end_to_end(tmp_path: Path, tiny_model_dir: Path, shared_data: Path) -> None:
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    gsm8k = shared_data / "gsm8k"
    done = run_iterate(
        tiny_model_dir, gsm8k, run_dir, data_dir, 16, 8,
        "--samples", "1,3", "--max-tokens", "32",
        "--target", "dissimilar", "--first-turn", "unit", "--objective", "preference",
        "--pairs", "fix",
        "--eval-parallel", "2", "--epochs", "2",
    )  # fmt: skip
    assert "m1@t2" in done.stdout and "iter-0" in done.stdout
    # a clean exit: the engines (base, tuned) are shut down and collected before Python ends
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[
        -3000:
    ]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    (it,) = manifest["iterations"]
    assert manifest["data"]["train"]["problems"] == 16 and manifest["data"]["eval"]["problems"] == 8
    assert all(len(h) == 64 for h in manifest["data"]["train"]["files"].values())
    stages = {s["stage"] for s in manifest["stages"]}
    assert {"collect", "build", "train", "evaluate:base", "evaluate:iter-0"} <= stages
    assert set(it["wall_s"]) >= {"collect", "build", "train"}

    # Trajectories: one per problem, in order; chosen = first best; stop at the first success.
    records = read_jsonl(run_dir / it["trajectories"])
    problems = read_jsonl(run_dir / "problems" / "train.jsonl")
    assert [r["problem_id"] for r in records] == [p["id"] for p in problems]
    for record in records:
        assert 1 <= len(record["turns"]) <= 2
        for t, turn in enumerate(record["turns"]):
            # RISE's schedule: one attempt at turn 1, best-of-3 for the correction.
            assert turn["index"] == t and len(turn["candidates"]) + turn["dropped"] == (1, 3)[t]
            rewards = [c["reward"] for c in turn["candidates"]]
            assert turn["chosen"] == rewards.index(max(rewards))
            assert all(REWARD[c["outcome"]] == c["reward"] for c in turn["candidates"])
        outcomes = [t["candidates"][t["chosen"]]["outcome"] for t in record["turns"]]
        assert "correct" not in outcomes[:-1]

    # Examples: the chosen actions, loss only on the target, weight exp(r / 0.4).
    rows = read_jsonl(run_dir / it["examples"])
    examples = [r for r in rows if r["kind"] == "sft"]
    pairs = [r for r in rows if r["kind"] == "pair"]
    assert 0 < len(examples) <= sum(len(r["turns"]) for r in records)
    assert len(pairs) == it["build"]["pairs"]
    for pair in pairs:  # a correct correction preferred to the wrong attempt repeated
        assert pair["chosen_ids"] != pair["rejected_ids"] and pair["pair_type"] == "fix"
    assert set(it["build"]["composition"]) >= {"first", "wrong_to_right", "wrong_to_wrong"}
    for ex in examples:
        # first turn: unit weight; corrections: exp(r / 0.4)
        expected = 1.0 if ex["turn"] == 0 else math.exp(ex["reward"] / 0.4)
        assert ex["weight"] == pytest.approx(expected)
        assert ex["reward"] == REWARD[ex["outcome"]]
        n_context = next(i for i, label in enumerate(ex["labels"]) if label != -100)
        assert ex["labels"][n_context:] == ex["input_ids"][n_context:] and n_context > 0

    # Training: a few steps, and the weighted loss on its own examples went down.
    train = it["train"]
    assert 2 <= train["global_step"] <= 10 and train["losses"]
    model_dir = run_dir / it["model"]
    assert not list(model_dir.glob("checkpoint-*"))
    assert json.loads((model_dir / "rise_prompts.json").read_text())["introspection"]
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    before = weighted_loss(tiny_model_dir, examples, pad_id)
    after = weighted_loss(model_dir, examples, pad_id)
    print(f"micro run: weighted loss {before:.4f} -> {after:.4f}; logged {train['losses']}")
    assert after < before

    # Evaluations ran on vLLM for the base and for the checkpoint, and were plotted.
    for label in ("base", "iter-0"):
        report = json.loads((run_dir / manifest["evaluations"][label]["report"]).read_text())
        assert set(report["metrics"]) >= {"m1@t1", "m2@t1", "m1@t2", "p1@t2", "acc@t2"}
        assert report["problems"] == 8 and report["tokens"]["output"] > 0
    reports = [
        json.loads((run_dir / manifest["evaluations"][label]["report"]).read_text())
        for label in ("base", "iter-0")
    ]
    eval_ids = [p["id"] for p in read_jsonl(run_dir / "problems" / "eval.jsonl")]
    assert all(r["per_problem"]["ids"] == eval_ids for r in reports)
    assert paired_comparison(*reports)["problems"] == 8
    assert (run_dir / "accuracy_by_turn.png").stat().st_size > 0
    shown = CliRunner().invoke(cli_app, ["report", str(run_dir)])
    assert shown.exit_code == 0 and "evaluate:iter-0" in shown.output

    # The checkpoint serves through the RISE service.
    solved = solve_through_service(model_dir, data_dir, tmp_path / "service.log")
    assert solved["new_turns"] == 1 and len(solved["turns"]) == 1
    assert solved["turns"][0]["completion_tokens"] > 0


@pytest.mark.engine
@pytest.mark.slow
def test_on_policy_cycles_with_signed_advantages(
    tmp_path: Path, tiny_model_dir: Path, shared_data: Path
) -> None:
    """E4's mode end to end: two iterations, each collecting with the latest model; every
    candidate an example weighted by its advantage (some negative); the clipped ratio trains
    them, and the second iteration anchors first answers to the base model."""
    run_dir = tmp_path / "run"
    gsm8k = shared_data / "gsm8k"
    run_iterate(
        tiny_model_dir, gsm8k, run_dir, tmp_path / "data", 12, 4, "--iterations", "2",
        "--samples", "2,3", "--max-tokens", "24", "--continue-after-correct",
        "--objective", "advantage", "--progress-bonus", "1", "--policy-clip", "0.2",
        "--anchor-kl", "0.1", "--eval-parallel", "1", "--epochs", "1",
    )  # fmt: skip

    manifest = json.loads((run_dir / "manifest.json").read_text())
    first, second = manifest["iterations"]
    assert manifest["config"]["train"]["policy_clip"] == 0.2
    for k, it in enumerate((first, second)):
        records = read_jsonl(run_dir / it["trajectories"])
        rows = read_jsonl(run_dir / it["examples"])
        # Every scored candidate is an example (less the zero-advantage ones), signed.
        candidates = sum(len(t["candidates"]) for r in records for t in r["turns"])
        assert 0 < len(rows) <= candidates
        weights = [r["weight"] for r in rows]
        assert all(w != 0 for w in weights)
        # Leave-one-out advantages of one state sum to 0, so first answers (no progress bonus)
        # come with both signs whenever there are any.
        first = [r["weight"] for r in rows if r["turn"] == 0]
        assert not first or min(first) < 0 < max(first)
        history = json.loads((run_dir / it["model"] / "trainer_state.json").read_text())
        clip = [h["clip_fraction"] for h in history["log_history"] if "clip_fraction" in h]
        kl = [h["anchor_kl"] for h in history["log_history"] if "anchor_kl" in h]
        assert clip and kl and all(math.isfinite(x) for x in clip + kl)
        assert clip[0] == 0.0  # step 1 runs the collecting policy itself: ratio 1
        if k == 0:  # the anchor is the model being trained: no distance at step 1
            assert kl[0] == pytest.approx(0.0, abs=1e-6)
    # The second iteration started from the first one's model, anchored to the base: its first
    # answers are already some distance from the anchor at step 1.
    second_kl = json.loads((run_dir / second["model"] / "trainer_state.json").read_text())
    kl = [h["anchor_kl"] for h in second_kl["log_history"] if "anchor_kl" in h]
    assert kl[0] > 0.0
    assert set(manifest["evaluations"]) == {"base", "iter-0", "iter-1"}


@pytest.mark.engine
@pytest.mark.slow
def test_iterate_with_calculator_feedback_and_the_solution_teacher(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``iterate --feedback calculator --solution-teacher`` (issue 31's arm) end to end on
    generated problems, which carry their worked solutions: the rollouts and the evaluations are
    judged by the calculator, and every correction turn best-of-2 could not fix (the random tiny
    model fixes none) gets the problem's solution, which becomes the trained target."""
    from rise_train.arithmetic import make_problems
    from rise_train.datasets import write_problems

    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_problems(make_problems(8, 3, "train", 0.5, set()), train)
    write_problems(make_problems(4, 3, "eval", 0.5, set()), held)
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "rise_train", "iterate", "--train-data", str(train),
        "--eval-data", str(held), "--model", str(tiny_model_dir), "--run-dir", str(run_dir),
        "--data-dir", str(tmp_path / "data"), "--turns", "2", "--eval-turns", "2",
        "--samples", "1,2", "--max-tokens", "24", "--eval-parallel", "1", "--epochs", "1",
        "--batch-size", "4", "--grad-accum", "1", "--feedback", "calculator",
        "--solution-teacher", "--quiet", *ENGINE_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = manifest["config"]
    assert config["collect"]["feedback"] == "calculator" and config["collect"]["solution_teacher"]
    assert config["evaluate"]["feedback"] == "calculator"
    (it,) = manifest["iterations"]
    records = read_jsonl(run_dir / it["trajectories"])
    solutions = {p["id"]: p["solution"] for p in read_jsonl(train)}
    taught = 0
    for record in records:
        assert all(t["feedback"]["provider"] == "calculator" for t in record["turns"])
        if len(record["turns"]) < 2:
            continue
        second = record["turns"][1]
        policy = [c for c in second["candidates"] if c["source"] == "policy"]
        filled = [c for c in second["candidates"] if c["source"] == "solution"]
        if any(c["outcome"] == "correct" for c in policy):
            assert not filled
        else:
            assert [c["text"] for c in filled] == [solutions[record["problem_id"]]]
            assert second["candidates"][second["chosen"]]["source"] == "solution"
            taught += 1
    assert taught > 0 and it["collect"]["actions_by_source"]["solution"] == taught
    rows = read_jsonl(run_dir / it["examples"])
    assert sum(r["source"] == "solution" for r in rows) == taught
    for label in ("base", "iter-0"):
        report = json.loads((run_dir / manifest["evaluations"][label]["report"]).read_text())
        assert set(report["feedback"]["verdicts"]) == {"calculator"}


# -- resuming a run directory (no engine needed) -------------------------------------------------


def _data(n: int, tag: str) -> DataSet:
    return DataSet([Problem(f"{tag}-{i}", f"q{i}", "7", "t", "gsm8k") for i in range(n)], tag)


def test_open_manifest_resumes_only_the_same_run(tmp_path: Path) -> None:
    train, evals = _data(4, "train"), _data(2, "eval")
    config = IterateConfig(run_dir=str(tmp_path))
    manifest = open_manifest(tmp_path, config, train, evals)
    assert manifest["iterations"] == [] and manifest["data"]["train"]["problems"] == 4
    manifest["iterations"].append({"iteration": 0, "collect": {}})
    save_manifest(tmp_path, manifest)
    more = IterateConfig(run_dir=str(tmp_path), iterations=3, progress=False)
    assert open_manifest(tmp_path, more, train, evals)["iterations"][0]["collect"] == {}
    with pytest.raises(ValueError, match="different configuration or data"):
        open_manifest(tmp_path, IterateConfig(run_dir=str(tmp_path), model="other"), train, evals)
    with pytest.raises(ValueError, match="different configuration or data"):
        open_manifest(tmp_path, config, _data(5, "train"), evals)


def test_run_skips_finished_stages(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A finished run directory is read back without starting an engine or training."""
    train, evals = _data(4, "train"), _data(2, "eval")
    config = IterateConfig(run_dir=str(tmp_path), model=str(tiny_model_dir))
    manifest = open_manifest(tmp_path, config, train, evals)
    report = compute_metrics([], 5)
    for label in ("base", "iter-0"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "report.json").write_text(json.dumps(report))
        manifest["evaluations"][label] = {"report": f"{label}/report.json", "metrics": {}}
    manifest["iterations"] = [{"iteration": 0, "collect": {}, "build": {}, "train": {},
                               "model": "iter-0/model"}]  # fmt: skip
    save_manifest(tmp_path, manifest)
    done = run(config, train, evals)
    assert done["final_model"] == str(tmp_path / "iter-0" / "model")
    assert [s["stage"] for s in done["stages"]] == ["prepare_model"]
    assert (tmp_path / "accuracy_by_turn.png").exists()
    assert "prepare_model" in format_run(done)
