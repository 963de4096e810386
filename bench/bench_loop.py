"""Turn-loop throughput against its limit, and prefix-cache reuse per turn (issue: RISE core).

32 episodes × 5 turns on the tiny model, greedy. Two runs on one engine, cache reset before
each, alternated over repeats:

- **loop**: ``TurnLoop.run`` — renders prompts, streams, grades, votes;
- **limit**: the raw ``AsyncLLM`` generating the same token sequences — each episode's recorded
  prompts sent in turn order with ``max_tokens`` = the recorded output length, no rendering,
  grading or event plumbing. Same dependency structure (turn t+1 waits for turn t), same
  concurrency, so the ratio isolates what the loop adds.

Prints generated tok/s of both and their ratio (target >= 0.9), and for each turn >= 2 the share
of earlier-turn tokens (previous prompt + previous output) served from the prefix cache
(target >= 90%; only full KV blocks are reused, so the block size bounds it).

    python bench/bench_loop.py [--episodes 32] [--turns 5] [--max-tokens 128] [--block-size 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tiny model lives in tests/

from rise.engine import EngineSettings, SamplingConfig
from rise.engine.vllm_engine import VLLMEngine
from rise.episode import Episode
from rise.loop import LoopConfig, TurnLoop, new_episode
from rise.prompts import ChatRenderer
from tests.tiny_models import build_tiny_model


async def run_loop(
    engine: VLLMEngine, questions: list[str], config: LoopConfig
) -> tuple[float, list[Episode]]:
    loop = TurnLoop(engine, ChatRenderer(engine.tokenizer))
    episodes = [new_episode(q, grader="gsm8k") for q in questions]
    await engine.reset_prefix_cache()
    started = time.perf_counter()
    await loop.run(episodes, config)
    return time.perf_counter() - started, episodes


async def run_limit(engine: VLLMEngine, episodes: list[Episode]) -> tuple[float, float]:
    """Replay the recorded turns on the raw engine: (seconds, share of identical outputs)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    same = 0

    async def replay(episode: Episode) -> None:
        nonlocal same
        for turn in episode.turns:
            params = SamplingParams(temperature=0.0, max_tokens=len(turn.output_ids))
            final = None
            async for out in engine.llm.generate(
                TokensPrompt(prompt_token_ids=turn.prompt_ids),
                params,
                request_id=os.urandom(8).hex(),
            ):
                final = out
            same += final is not None and list(final.outputs[0].token_ids) == turn.output_ids

    await engine.reset_prefix_cache()
    started = time.perf_counter()
    await asyncio.gather(*(replay(e) for e in episodes))
    elapsed = time.perf_counter() - started
    return elapsed, same / sum(len(e.turns) for e in episodes)


def cache_share_by_turn(episodes: list[Episode]) -> list[tuple[int, int, int]]:
    """(turn number, earlier-turn tokens, of which cached) for turns >= 2."""
    rows = []
    for index in range(1, max(len(e.turns) for e in episodes)):
        earlier = cached = 0
        for episode in episodes:
            if index < len(episode.turns):
                before, turn = episode.turns[index - 1], episode.turns[index]
                span = len(before.prompt_ids) + len(before.output_ids)
                earlier += span
                cached += min(turn.cached_tokens, span)
        rows.append((index + 1, earlier, cached))
    return rows


async def main(args: argparse.Namespace) -> None:
    model_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="rise-bench-")) / "tiny")
    settings = EngineSettings(
        model=str(model_dir),
        data_dir=Path(tempfile.mkdtemp(prefix="rise-bench-data-")),
        max_model_len=4096,
        kv_cache_gib=1.0,
        block_size=args.block_size,
        max_num_seqs=max(64, args.episodes),
    )
    engine = VLLMEngine.from_settings(settings)
    questions = [
        f"Problem {i}: a farmer has {i + 3} cows and buys {2 * i + 1} more. How many cows?"
        for i in range(args.episodes)
    ]
    config = LoopConfig(
        max_turns=args.turns, sampling=SamplingConfig(temperature=0.0, max_tokens=args.max_tokens)
    )
    try:
        await run_loop(engine, questions[:4], config)  # warm-up
        loop_rates, limit_rates, identical = [], [], []
        episodes: list[Episode] = []
        for _ in range(args.repeats):
            limit_s = None
            if episodes:
                limit_s, same = await run_limit(engine, episodes)
            loop_s, episodes = await run_loop(engine, questions, config)
            if limit_s is None:
                limit_s, same = await run_limit(engine, episodes)
            tokens = sum(e.output_tokens for e in episodes)
            loop_rates.append(tokens / loop_s)
            limit_rates.append(tokens / limit_s)
            identical.append(same)
        tokens = sum(e.output_tokens for e in episodes)
        loop_rate, limit_rate = statistics.median(loop_rates), statistics.median(limit_rates)
        print(
            f"\n{args.episodes} episodes × {args.turns} turns, greedy, "
            f"≤{args.max_tokens} tokens/turn, block size {args.block_size}, "
            f"{tokens} generated tokens per run, {args.repeats} repeats"
        )
        print(f"{'run':<8}{'tok/s (median)':>16}{'runs':>40}")
        print(f"{'loop':<8}{loop_rate:>16.0f}{[round(r) for r in loop_rates]!s:>40}")
        print(f"{'limit':<8}{limit_rate:>16.0f}{[round(r) for r in limit_rates]!s:>40}")
        print(f"loop / limit throughput ratio: {loop_rate / limit_rate:.3f}   (target >= 0.9)")
        print(f"raw replay reproduced the loop's outputs token for token: {min(identical):.1%}")
        print(f"\n{'turn':<6}{'earlier-turn tokens':>21}{'cached':>10}{'share':>9}")
        worst = 1.0
        for turn, earlier, cached in cache_share_by_turn(episodes):
            share = cached / earlier if earlier else 0.0
            worst = min(worst, share)
            print(f"{turn:<6}{earlier:>21}{cached:>10}{share:>9.1%}")
        print(f"lowest share of earlier-turn tokens cached: {worst:.1%}   (target >= 90%)")
    finally:
        await engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
