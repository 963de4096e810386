"""The evaluation runner: samples the episodes that :mod:`rise_train.metrics` measures.

Only the engine-facing part lives here, so the metrics stay pure and the files and text live in
:mod:`rise_train.report`. For each problem and each of ``repeats`` evaluation seeds the runner
takes one sequential episode of ``max_turns`` turns with the introspection prompt after every
turn and no oracle (so it never stops early), plus ``n_parallel - 1`` extra independent
first-turn samples; the sequential episode's first turn is the n-th parallel sample, so m5@t1
and m1@t5 both use 5 samples per problem (compute-matched).

Repeats matter because one sample per problem is noisy and, on CPU, vLLM sampling depends on
batching (per-request seeds are ignored there, so repeats are simply independent samples).
Request seeds derive from (seed, problem, turn, sample) and, after the first repeat, the repeat
index, so repeat 0 draws what a single-repeat run drew.

With ``ablation`` every episode whose first turn was wrong also gets turn 2 sampled in two
other contexts (see :class:`rise_train.metrics.AblationCase`): after a foreign attempt (another
problem's wrong first turn, the next such episode in order) and after no attempt. Both are
built through the same :class:`~rise.loop.TurnLoop` and renderer as the sequential episode, so
the chat template, the introspection message and the context window are identical.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rise.answers import get_grader
from rise.engine.base import Engine, PromptTooLongError, derive_seed
from rise.episode import Episode, Turn
from rise.feedback import FeedbackProviders, configured_providers
from rise.loop import LoopEvent, TurnEvent, TurnLoop, new_episode
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer, PromptConfig
from rise_train.datasets import Problem
from rise_train.metrics import AblationCase, compute_metrics, problem_id, turn_is_correct
from rise_train.stats import BOOTSTRAP_CI, CLUSTER_CI, WILSON_CI


@dataclass
class EvalConfig:
    """How the evaluation samples (docs/RISE.md §5–§6)."""

    max_turns: int = field(default=5, metadata={"help": "Sequential turns N (m1@tN, p1@tN)."})
    n_parallel: int = field(
        default=5, metadata={"help": "Parallel first-turn samples P (mP@t1; 1 leaves it out)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top-p."})
    max_tokens: int = field(default=512, metadata={"help": "Max new tokens per turn."})
    context_window: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the last k attempts (the public RISE evaluation keeps 1, its "
            "--context_window 2; default: all)."
        },
    )
    feedback: str = field(
        default="fixed",
        metadata={
            "help": "What follows each turn: fixed (RISE's prompt) | oracle | calculator | a "
            "verifier named in RISE_VERIFIERS (docs/RISE.md, 'Feedback')."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of every request's sampling."})
    concurrency: int = field(default=256, metadata={"help": "Problems in flight at once."})
    repeats: int = field(
        default=1, metadata={"help": "Evaluation seeds: samples of every problem."}
    )
    ablation: bool = field(
        default=False,
        metadata={"help": "Turn-2 context ablation: own / a foreign / no wrong attempt."},
    )

    def plan(self) -> RequestPlan:
        """The sequential episodes' request plan: N turns, no oracle, no early stop, vote.

        The serving plan, so an evaluated episode runs exactly as ``POST /solve`` would run it
        with these settings; each problem and repeat gets its own seed.
        """
        return RequestPlan(
            max_turns=self.max_turns,
            mode="vote",
            context_window=self.context_window,
            feedback=self.feedback,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
        )

    def __post_init__(self) -> None:
        if min(self.max_turns, self.n_parallel, self.concurrency, self.repeats) < 1:
            raise ValueError("max_turns, n_parallel, concurrency and repeats must be >= 1")
        if self.ablation and self.max_turns < 2:
            raise ValueError("the turn-2 ablation needs max_turns >= 2")


@dataclass
class Evaluation:
    report: dict[str, Any]
    episodes: list[Episode]  # problem-major: every repeat of problem 1, then of problem 2, …
    parallel: list[list[Turn]] = field(default_factory=list)  # extra first-turn samples
    ablation: list[AblationCase] = field(default_factory=list)


def ci_text(repeats: int) -> str:
    """The report's ``ci`` line: what each interval is over."""
    units = "problem×repeat episodes" if repeats > 1 else "problems"
    return (
        f"{WILSON_CI}, per proportion of {units}; copy rates: {CLUSTER_CI}; "
        f"paired differences: {BOOTSTRAP_CI} (2000 resamples) of per-problem means over "
        f"{repeats} repeat(s)"
    )


async def run_evaluation(
    engine: Engine,
    problems: Sequence[Problem],
    config: EvalConfig,
    *,
    label: str | None = None,
    renderer: ChatRenderer | None = None,
    feedback: FeedbackProviders | None = None,
    progress: bool = True,
) -> Evaluation:
    """Sample every problem as the module docstring says and compute the report."""
    from tqdm.auto import tqdm

    renderer = renderer or ChatRenderer(engine.tokenizer, PromptConfig())
    providers = feedback or configured_providers()
    providers.get(config.feedback)  # an unknown name fails before any turn
    loop = TurnLoop(engine, renderer, providers)
    gate = asyncio.Semaphore(config.concurrency)
    per_sample = config.max_turns + config.n_parallel - 1
    bar = tqdm(
        total=len(problems) * config.repeats * per_sample,
        desc=f"evaluate {label or ''}".strip(),
        unit="turn",
        disable=not progress,
    )
    start = time.perf_counter()

    plan = config.plan()

    def seeded(problem: Problem, repeat: int, *parts: object) -> RequestPlan:
        salt = () if repeat == 0 else ("repeat", repeat)
        return plan.updated(seed=derive_seed(config.seed, "eval", problem.id, *parts, *salt))

    def fresh(problem: Problem, repeat: int) -> Episode:
        episode = new_episode(
            problem.question,
            reference=problem.reference,
            grader=problem.grader,
            context=renderer.prompts.context(),
        )
        episode.metadata.update(problem_id=problem.id, repeat=repeat)
        return episode

    def count_turns(event: LoopEvent) -> None:
        if isinstance(event, TurnEvent):
            bar.update(1)

    async def sequential(problem: Problem, repeat: int) -> Episode:
        # The service's loop with no oracle and no early stop: N turns, or fewer when the
        # prompt outgrows the context; seeds derive from the problem's (seed, turn).
        episode = fresh(problem, repeat)
        plan = seeded(problem, repeat, 0, 0)
        await loop.run_episode(episode, plan, count_turns, stream_tokens=False)
        bar.update(config.max_turns - len(episode.turns))  # the turns a full context cut off
        return episode

    async def parallel(problem: Problem, repeat: int, sample: int) -> Turn:
        turn = await loop.take_turn(
            fresh(problem, repeat), seeded(problem, repeat, 0, sample).sampling()
        )
        bar.update(1)
        return turn

    async def one(problem: Problem, repeat: int) -> tuple[Episode, list[Turn]]:
        async with gate:
            extra = [parallel(problem, repeat, j) for j in range(1, config.n_parallel)]
            episode, turns = await asyncio.gather(
                sequential(problem, repeat), asyncio.gather(*extra)
            )
            return episode, list(turns)

    async def ablate(episode: Episode, other: Episode | None) -> AblationCase:
        problem, repeat = by_id[problem_id(episode)], episode.metadata["repeat"]
        async with gate:
            none = loop.take_turn(
                fresh(problem, repeat), seeded(problem, repeat, "ablation", "none").sampling()
            )
            if other is None:
                case = AblationCase(episode, None, await none)
                bar.update(1)
                return case
            foreign = fresh(problem, repeat)
            foreign.metadata["foreign_problem_id"] = problem_id(other)
            foreign.turns.append(foreign_attempt(loop, foreign, other))
            fresh_turn, turn_2 = await asyncio.gather(
                none,
                loop.take_turn(
                    foreign,
                    seeded(problem, repeat, "ablation", "foreign").sampling(),
                    window=config.context_window,
                ),
                return_exceptions=True,
            )
            bar.update(2)
        if isinstance(fresh_turn, BaseException):
            raise fresh_turn
        if isinstance(turn_2, PromptTooLongError):  # a long foreign attempt: no foreign case
            return AblationCase(episode, None, fresh_turn)
        if isinstance(turn_2, BaseException):
            raise turn_2
        foreign.turns.append(turn_2)
        return AblationCase(episode, foreign, fresh_turn)

    by_id = {p.id: p for p in problems}
    cases: list[AblationCase] = []
    try:
        results = await asyncio.gather(
            *(one(p, r) for p in problems for r in range(config.repeats))
        )
        episodes = [e for e, _ in results]
        if config.ablation:
            pairs = ablation_pairs(episodes)
            bar.total += sum(1 + (other is not None) for _, other in pairs)
            bar.refresh()
            cases = list(await asyncio.gather(*(ablate(e, other) for e, other in pairs)))
    finally:
        bar.close()
    wall = time.perf_counter() - start
    extras = [t for _, t in results]
    parallel_answers = (
        [[e.turns[0].answer if e.turns else None] + [t.answer for t in ts] for e, ts in results]
        if config.n_parallel > 1
        else None
    )
    metrics = compute_metrics(
        episodes, config.max_turns, parallel_answers, cases if config.ablation else None
    )
    turns = [t for e in episodes for t in e.turns] + [t for ts in extras for t in ts]
    turns += [c.none for c in cases] + [c.foreign.turns[1] for c in cases if c.foreign]
    output_tokens = sum(t.output_tokens for t in turns)
    report = {
        "model": label or engine.model_name,
        "problems": len(problems),
        "max_turns": config.max_turns,
        "n_parallel": config.n_parallel,
        "repeats": config.repeats,
        "context_window": config.context_window,
        "ci": ci_text(config.repeats),
        **metrics,
        "config": asdict(config),
        "tokens": {
            "output": output_tokens,
            "prompt": sum(t.prompt_tokens for t in turns),
            "cached": sum(t.cached_tokens for t in turns),
            "output_per_s": output_tokens / wall if wall > 0 else 0.0,
        },
        "wall_s": wall,
    }
    return Evaluation(report, episodes, extras, cases)


def ablation_pairs(episodes: Sequence[Episode]) -> list[tuple[Episode, Episode | None]]:
    """Each episode with a wrong first turn and a turn 2, with the episode whose attempt is
    shown as the foreign one: the next such episode, in order and wrapping, of another problem
    (None when every such episode is of the same problem)."""
    wrong = [e for e in episodes if len(e.turns) >= 2 and not turn_is_correct(e, e.turns[0])]
    out: list[tuple[Episode, Episode | None]] = []
    for i, episode in enumerate(wrong):
        later = (wrong[(i + j) % len(wrong)] for j in range(1, len(wrong)))
        other = next((o for o in later if problem_id(o) != problem_id(episode)), None)
        out.append((episode, other))
    return out


def foreign_attempt(loop: TurnLoop, episode: Episode, other: Episode) -> Turn:
    """``other``'s first turn, as the answer to ``episode``'s first user message.

    The attempt keeps the token ids the model generated for the other problem (text only when
    it has none, through :meth:`~rise.prompts.ChatRenderer.response_ids`), so the own and the
    foreign context differ only in whose attempt it is. Its answer is re-read with this
    episode's grader.
    """
    source = other.turns[0]
    user_message = loop.user_message(episode, 0)
    if source.output_ids:
        output_ids, ended = list(source.output_ids), source.ended_with_eos
    else:
        output_ids, ended = loop.renderer.response_ids(source.text)
    return Turn(
        index=0,
        user_message=user_message,
        prompt_ids=loop.renderer.next_prompt_ids(episode, user_message),
        output_ids=output_ids,
        text=source.text,
        finish_reason=source.finish_reason,
        ended_with_eos=ended,
        answer=get_grader(episode.grader).extract(source.text),
    )
