"""Turn-loop throughput against its limit, and prefix-cache reuse per turn (issue: RISE core).

32 episodes × 5 turns on the tiny model, greedy. Two runs on one engine, cache reset before
each, alternated over repeats:

- **loop**: ``TurnLoop.run`` — renders prompts, generates, grades, votes (nobody watches the
  tokens, so each turn asks vLLM for its whole output: ``FINAL_ONLY``);
- **limit**: the raw ``AsyncLLM`` generating the same token sequences — each episode's recorded
  prompts sent in turn order with ``max_tokens`` = the recorded output length and vLLM's
  cheapest output mode (``FINAL_ONLY``), no rendering, grading or event plumbing. Same
  dependency structure (turn t+1 waits for turn t), same concurrency, so the ratio isolates what
  the loop adds;
- **streamed** (``--streamed``): ``TurnLoop.stream`` with token events consumed, as the
  service's streaming endpoints run it — what per-token delivery costs on top.

Prints generated tok/s of each and the loop / limit ratio (target >= 0.97), and for each turn
>= 2 the share of earlier-turn tokens (previous prompt + previous output) served from the prefix
cache (target >= 90%; only full KV blocks are reused, so the block size bounds it).

    python bench/bench_loop.py [--episodes 32] [--turns 5] [--max-tokens 128] [--block-size 32]
                               [--repeats 3] [--streamed]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tiny model: testbed/

from rise.engine import EngineSettings
from rise.engine.vllm_engine import VLLMEngine
from rise.episode import Episode
from rise.loop import TurnLoop, new_episode
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer
from testbed.tiny_models import build_tiny_model


async def run_loop(
    engine: VLLMEngine, questions: list[str], plan: RequestPlan, streamed: bool = False
) -> tuple[float, list[Episode]]:
    """One loop run from a cold prefix cache; ``streamed`` consumes every token event."""
    loop = TurnLoop(engine, ChatRenderer(engine.tokenizer))
    episodes = [new_episode(q, grader="gsm8k") for q in questions]
    await engine.reset_prefix_cache()
    started = time.perf_counter()
    if streamed:
        async for _ in loop.stream(episodes, plan):
            pass
    else:
        await loop.run(episodes, plan)
    return time.perf_counter() - started, episodes


async def run_limit(engine: VLLMEngine, episodes: list[Episode]) -> tuple[float, float]:
    """Replay the recorded turns on the raw engine: (seconds, share of identical outputs)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    same = 0

    async def replay(episode: Episode) -> None:
        nonlocal same
        for turn in episode.turns:
            params = SamplingParams(
                temperature=0.0,
                max_tokens=len(turn.output_ids),
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
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


async def limit_rate(engine: VLLMEngine, episodes: list[Episode], identical: list[float]) -> float:
    """Generated tok/s of a raw replay of ``episodes``; appends its share of identical outputs."""
    elapsed, same = await run_limit(engine, episodes)
    identical.append(same)
    return sum(e.output_tokens for e in episodes) / elapsed


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
    config = RequestPlan(max_turns=args.turns, temperature=0.0, max_tokens=args.max_tokens)
    try:
        await run_loop(engine, questions[:4], config)  # warm-up
        rates: dict[str, list[float]] = {"loop": [], "limit": []}
        if args.streamed:
            rates["streamed"] = []
        identical: list[float] = []
        episodes: list[Episode] = []
        for repeat in range(args.repeats):
            # Alternate which arm goes first, so slow drift of the machine favours neither.
            arms = list(rates) if repeat % 2 == 0 or not episodes else list(reversed(rates))
            rate: dict[str, float] = {}
            for arm in arms:
                if arm == "limit" and not episodes:
                    continue  # the first repeat replays what its loop run records
                if arm == "limit":
                    rate[arm] = await limit_rate(engine, episodes, identical)
                else:
                    elapsed, recorded = await run_loop(
                        engine, questions, config, streamed=arm == "streamed"
                    )
                    rate[arm] = sum(e.output_tokens for e in recorded) / elapsed
                    if arm == "loop":
                        episodes = recorded
            if "limit" not in rate:
                rate["limit"] = await limit_rate(engine, episodes, identical)
            for arm, value in rate.items():
                rates[arm].append(value)
        tokens = sum(e.output_tokens for e in episodes)
        medians = {arm: statistics.median(values) for arm, values in rates.items()}
        paired = [a / b for a, b in zip(rates["loop"], rates["limit"], strict=True)]
        print(
            f"\n{args.episodes} episodes × {args.turns} turns, greedy, "
            f"≤{args.max_tokens} tokens/turn, block size {args.block_size}, "
            f"{tokens} generated tokens per run, {args.repeats} repeats"
        )
        print(f"{'run':<10}{'tok/s (median)':>16}{'runs':>48}")
        for arm, values in rates.items():
            print(f"{arm:<10}{medians[arm]:>16.0f}{[round(r) for r in values]!s:>48}")
        print(
            f"loop / limit throughput ratio: {medians['loop'] / medians['limit']:.3f} of medians, "
            f"{statistics.median(paired):.3f} median of per-repeat ratios "
            f"(range {min(paired):.3f}–{max(paired):.3f})   (target >= 0.97)"
        )
        if args.streamed:
            print(f"streamed / loop: {medians['streamed'] / medians['loop']:.3f}")
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
    parser.add_argument(
        "--streamed", action="store_true", help="also time the loop with token events consumed"
    )
    asyncio.run(main(parser.parse_args()))
