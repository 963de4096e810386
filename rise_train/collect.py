"""On-policy RISE data collection (docs/RISE.md §2): rollouts with an improvement operator.

For every problem the current model is rolled out for up to ``max_turns`` turns through the
shared turn loop (:mod:`rise.loop`), so states are built with the same chat template and the same
token-level continuation as the service. At each turn a set of candidate actions is sampled
from the same state — ``samples[t]`` from the policy (one at turn 1, best-of-N for every
correction, as the public RISE code) and, at correction turns when a teacher is configured,
``teacher.samples`` from any OpenAI-compatible endpoint (distillation) — every candidate is
graded, degenerate ones are dropped, and the FIRST candidate with the highest reward becomes the
trajectory's action (policy candidates come first, so a tie keeps the on-policy action). With
``solution_teacher``, a correction turn none of whose candidates is right gets one more: the
problem's worked solution (generated problems know theirs), so best-of-N is tried first and the
teacher only fills the problems it could not correct. The
trajectory stops once its action is correct, unless ``continue_after_correct`` asks it to go on
(the test-time condition: no oracle says "stop, you are right").

All problems are in flight at once (bounded by ``concurrency``) so the engine's continuous
batching always sees every pending request. Each finished problem is appended to the output
JSONL as one line and fsynced, so a crash loses at most the problems in flight; a restart skips
the ids already written and repairs a truncated last line. When every problem is done the file
is rewritten in problem order, so the same inputs give the same file.

Feedback (``feedback``, :mod:`rise.feedback`): the chosen action of every turn is judged by the
configured provider, and its message is the next state's user message, as in serving; each
turn record keeps the feedback given after its action.

Determinism: every request carries a seed derived from (seed, problem, turn, candidate), on CPU
too (rise/engine/vllm_plugin.py). What a seed cannot fix is how the engine batches requests,
which moves logits by rounding and, with speculation, how many random numbers a step draws.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rise.answers import get_grader
from rise.engine.base import Engine, PromptTooLongError, SamplingConfig, derive_seed
from rise.episode import Episode, Outcome, Turn
from rise.feedback import FeedbackProviders, configured_providers
from rise.loop import TurnLoop, new_episode
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer, PromptConfig
from rise_train.datasets import Problem
from rise_train.records import (
    Candidate,
    Trajectory,
    TurnRecord,
    append_trajectory,
    read_trajectories,
    write_jsonl,
)

logger = logging.getLogger(__name__)


# -- configuration ---------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    """A stronger model behind an OpenAI-compatible chat endpoint (the paper's distillation)."""

    base_url: str = field(metadata={"help": "OpenAI-compatible teacher base URL (.../v1)."})
    model: str = field(metadata={"help": "Teacher model name."})
    samples: int = field(
        default=1, metadata={"help": "Teacher candidates per turn (the paper: best of 1-5)."}
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "Teacher API key (default: $OPENAI_API_KEY, else a placeholder)."},
    )
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("teacher samples must be >= 1")


def per_turn(schedule: Sequence[Any], turn: int) -> Any:
    """The value of a per-turn schedule at 0-based ``turn``; the last entry repeats."""
    return schedule[min(turn, len(schedule) - 1)]


@dataclass
class CollectConfig:
    """How rollouts are sampled and which candidates count (docs/RISE.md §2).

    ``samples`` and ``temperatures`` are per-turn schedules whose last entry repeats: the
    default ``(1, 16)`` is the public RISE code's ``--num_of_samples 1 16`` — one on-policy
    attempt at turn 1 (the attempt to be corrected) and best-of-16 for every correction. N
    samples at turn 1 would make most problems "solved" at turn 1 by luck of N tries, and the
    data would mostly teach "answer, then repeat" (behavior collapse).
    """

    max_turns: int = field(default=2, metadata={"help": "Turns per trajectory (the paper's: 2)."})
    samples: tuple[int, ...] = field(
        default=(1, 16),
        metadata={
            "help": "Policy candidates per turn, comma-separated, the last repeats (RISE: 1,16)."
        },
    )
    temperatures: tuple[float, ...] = field(
        default=(1.0,),
        metadata={"help": "Sampling temperature per turn, comma-separated (RISE: 1.0)."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top-p."})
    max_tokens: int = field(default=512, metadata={"help": "Max new tokens per turn."})
    max_word_repeats: int = field(
        default=150,
        metadata={"help": "Drop a candidate repeating one word more often than this (degenerate)."},
    )
    concurrency: int = field(default=64, metadata={"help": "Problems in flight at once."})
    context_window: int | None = field(
        default=None,
        metadata={"help": "Keep only the last k attempts in the prompt (default: every attempt)."},
    )
    # RISE stops a rollout at the first correct action (an oracle the model lacks at test
    # time). Going on lets the data show what to do after a right answer: keep it.
    continue_after_correct: bool = field(
        default=False,
        metadata={"help": "Keep rolling out after a correct turn (the test-time condition)."},
    )
    feedback: str = field(
        default="fixed",
        metadata={
            "help": "What follows each attempt in the rollouts: fixed (RISE's prompt) | oracle "
            "| calculator | a verifier named in RISE_VERIFIERS (docs/RISE.md, 'Feedback')."
        },
    )
    solution_teacher: bool = field(
        default=False,
        metadata={
            "help": "Where no candidate of a correction turn is right, add the problem's worked "
            "solution as one (problems that carry one: the generated arithmetic)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the engine's sampling."})
    iteration: int = field(
        default=0, metadata={"help": "Iteration number written into the records."}
    )
    teacher: TeacherConfig | None = None

    def __post_init__(self) -> None:
        self.samples = tuple(int(n) for n in self.samples)
        self.temperatures = tuple(float(t) for t in self.temperatures)
        for name in ("max_turns", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.samples or not self.temperatures:
            raise ValueError("samples and temperatures need at least one entry")
        if self.samples[0] < 1:
            raise ValueError("turn 1 needs at least one policy sample (the attempt to correct)")
        if min(self.samples) < (0 if self.teacher is not None else 1):
            raise ValueError("samples must be >= 1 at every turn (or >= 0 with a teacher)")
        if min(self.temperatures) < 0:
            raise ValueError("temperatures must be >= 0")

    def plan(self, turn: int) -> RequestPlan:
        """The request plan of one turn's candidates (the serving plan; seeds per candidate)."""
        return RequestPlan(
            max_turns=self.max_turns,
            context_window=self.context_window,
            feedback=self.feedback,
            temperature=self.temperature_at(turn),
            top_p=self.top_p,
            max_tokens=self.max_tokens,
        )

    def samples_at(self, turn: int) -> int:
        return int(per_turn(self.samples, turn))

    def temperature_at(self, turn: int) -> float:
        return float(per_turn(self.temperatures, turn))


def parse_schedule(text: str, kind: type = int) -> tuple[Any, ...]:
    """``"1,16"`` → ``(1, 16)``; the CLI's form of a per-turn schedule."""
    try:
        values = tuple(kind(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"expected comma-separated numbers, got {text!r}")
    return values


# -- pure helpers -----------------------------------------------------------------------------


def is_degenerate(text: str, max_word_repeats: int = 150) -> bool:
    """Empty, or one whitespace-separated word repeated more than ``max_word_repeats`` times.

    The public RISE code drops such responses: they are sampling collapse, not attempts.
    """
    words = text.split()
    if not words:
        return True
    return Counter(words).most_common(1)[0][1] > max_word_repeats


def first_best(rewards: Sequence[float]) -> int:
    """Index of the first maximum (the paper keeps the first best candidate)."""
    best = max(rewards)
    return next(i for i, r in enumerate(rewards) if r == best)


# -- the teacher ------------------------------------------------------------------------------


class Teacher(Protocol):
    """Anything that answers a chat with ``n`` independent texts."""

    async def complete(
        self, messages: list[dict[str, str]], n: int, seeds: Sequence[int], max_tokens: int
    ) -> list[str]: ...


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, config: TeacherConfig, temperature: float, top_p: float) -> None:
        from openai import AsyncOpenAI

        key = config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = AsyncOpenAI(base_url=config.base_url, api_key=key, timeout=config.timeout_s)
        self.config, self.temperature, self.top_p = config, temperature, top_p

    async def complete(
        self, messages: list[dict[str, str]], n: int, seeds: Sequence[int], max_tokens: int
    ) -> list[str]:
        # One request per sample: many OpenAI-compatible servers ignore or refuse n > 1.
        async def one(seed: int) -> str:
            response = await self.client.chat.completions.create(
                model=self.config.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=max_tokens,
                seed=seed,
            )
            return response.choices[0].message.content or ""

        return list(await asyncio.gather(*(one(s) for s in seeds[:n])))


# -- rollouts ---------------------------------------------------------------------------------


class Collector:
    """Rolls out one problem at a time on a shared engine; many run concurrently."""

    def __init__(
        self,
        engine: Engine,
        config: CollectConfig,
        renderer: ChatRenderer | None = None,
        teacher: Teacher | None = None,
        feedback: FeedbackProviders | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.renderer = renderer or ChatRenderer(engine.tokenizer, PromptConfig())
        self.feedback = feedback or configured_providers()
        self.feedback.get(config.feedback)  # an unknown name fails before any rollout
        self.loop = TurnLoop(engine, self.renderer, self.feedback)
        if teacher is None and config.teacher is not None:
            teacher = OpenAITeacher(config.teacher, config.temperatures[-1], config.top_p)
        self.teacher = teacher

    def sampling(self, problem_id: str, turn: int, candidate: int) -> SamplingConfig:
        c = self.config
        seed = derive_seed(c.seed, c.iteration, problem_id, turn, candidate)
        return c.plan(turn).updated(seed=seed).sampling()

    async def candidates(self, problem: Problem, episode: Episode) -> list[tuple[Turn, str]]:
        """Every candidate action for the episode's next state: policy first, then teacher.

        The teacher answers only improvement turns: turn 1 is the learner's own attempt.
        """
        index, window = len(episode.turns), self.config.context_window
        n = self.config.samples_at(index)
        policy = [
            self.loop.take_turn(episode, self.sampling(problem.id, index, i), window=window)
            for i in range(n)
        ]
        asks_teacher = self.teacher is not None and index > 0
        teacher = [self.teacher_turns(problem, episode)] if asks_teacher else []
        results = await asyncio.gather(*policy, *teacher)  # all in flight together
        out = [(turn, "policy") for turn in results[:n]]
        out += [(turn, "teacher") for group in results[n:] for turn in group]
        solved = any(turn.outcome is Outcome.CORRECT for turn, _ in out)
        if self.config.solution_teacher and index > 0 and problem.solution and not solved:
            # Best-of-N (and any teacher) found no correction: the worked solution is one.
            solution = self.text_turns(problem, episode, [problem.solution])
            out += [(turn, "solution") for turn in solution]
        return out

    async def teacher_turns(self, problem: Problem, episode: Episode) -> list[Turn]:
        """The teacher's answers to the same state, as turns with ids from our renderer."""
        assert self.config.teacher is not None and self.teacher is not None
        index = len(episode.turns)
        n = self.config.teacher.samples
        offset = self.config.samples_at(index)
        seeds = [self.sampling(problem.id, index, offset + i).seed or 0 for i in range(n)]
        user_message = self.loop.user_message(episode, index)
        messages = [*episode.messages(), {"role": "user", "content": user_message}]
        texts = await self.teacher.complete(messages, n, seeds, self.config.max_tokens)
        return self.text_turns(problem, episode, texts)

    def text_turns(self, problem: Problem, episode: Episode, texts: Sequence[str]) -> list[Turn]:
        """Texts written for the episode's next state, as graded turns with our renderer's ids.

        Text in, ids out: a teacher's own tokenizer is irrelevant, the learner trains on the text
        as rendered by the learner's template (the one renderer, docs/RISE.md §1).
        """
        index = len(episode.turns)
        user_message = self.loop.user_message(episode, index)
        prompt_ids = self.renderer.next_prompt_ids(
            episode, user_message, self.config.context_window
        )
        if len(prompt_ids) >= self.engine.max_model_len:
            raise PromptTooLongError(len(prompt_ids), self.engine.max_model_len)
        grader = get_grader(episode.grader)
        turns = []
        for text in texts:
            ids, eos = self.renderer.response_ids(text)
            answer = grader.extract(text)
            outcome = grader.grade(answer, problem.reference)
            turns.append(
                Turn(index, user_message, prompt_ids, ids, text, "stop", eos, answer, outcome)
            )
        return turns

    async def rollout(self, problem: Problem) -> Trajectory:
        """One trajectory (the JSONL line) for ``problem``."""
        episode = new_episode(
            problem.question,
            reference=problem.reference,
            grader=problem.grader,
            context=self.renderer.prompts.context(),
        )
        trajectory = Trajectory(
            problem_id=problem.id,
            question=problem.question,
            reference=problem.reference,
            grader=problem.grader,
            source=problem.source,
            context=episode.context,
            iteration=self.config.iteration,
            seed=self.config.seed,
        )
        for _ in range(self.config.max_turns):
            try:
                scored = await self.candidates(problem, episode)
            except PromptTooLongError:
                break  # the state outgrew the context window: the trajectory ends here
            kept = [
                (turn, source)
                for turn, source in scored
                if not is_degenerate(turn.text, self.config.max_word_repeats)
            ]
            if not kept:
                break  # nothing usable to continue from
            chosen = first_best([turn.reward or 0.0 for turn, _ in kept])
            action = kept[chosen][0]
            # What follows the chosen action, the next state's user message (rise.feedback).
            await self.loop.judge(episode, action, self.config.feedback)
            trajectory.turns.append(
                TurnRecord(
                    index=action.index,
                    user_message=action.user_message,
                    prompt_ids=list(action.prompt_ids),
                    candidates=[Candidate.from_turn(t, s) for t, s in kept],
                    chosen=chosen,
                    dropped=len(scored) - len(kept),
                    feedback=None if action.feedback is None else action.feedback.to_dict(),
                )
            )
            episode.turns.append(action)
            if action.outcome is Outcome.CORRECT and not self.config.continue_after_correct:
                break
        return trajectory


# -- the resumable file -----------------------------------------------------------------------


def finalize(path: Path, problems: Sequence[Problem]) -> list[Trajectory]:
    """Rewrite the file in problem order, one record per id (atomic replace)."""
    by_id: dict[str, Trajectory] = {}
    for record in read_trajectories(path, repair=True):
        by_id.setdefault(record.problem_id, record)
    order = {p.id: i for i, p in enumerate(problems)}
    records = sorted(by_id.values(), key=lambda r: order.get(r.problem_id, len(order)))
    write_jsonl(records, path, fsync=True)
    return records


# -- summary ----------------------------------------------------------------------------------


@dataclass
class CollectStats:
    """What a collection produced (computed from the records, so resumed runs count fully)."""

    problems: int = 0
    resumed: int = 0  # records found in the file before this run
    turns: int = 0
    candidates: int = 0
    dropped: int = 0  # degenerate candidates
    correct_candidates: int = 0
    solved: int = 0  # trajectories whose last action is correct
    solved_at_turn: list[int] = field(default_factory=list)  # by the turn of the first success
    actions_by_source: dict[str, int] = field(default_factory=dict)  # policy | teacher | solution
    output_tokens: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def summarize(records: Sequence[Trajectory], max_turns: int) -> CollectStats:
    stats = CollectStats(problems=len(records), solved_at_turn=[0] * max_turns)
    for record in records:
        for turn in record.turns:
            stats.turns += 1
            stats.candidates += len(turn.candidates)
            stats.dropped += turn.dropped
            stats.correct_candidates += sum(c.correct for c in turn.candidates)
            stats.output_tokens += sum(len(c.output_ids or []) for c in turn.candidates)
            source = turn.candidates[turn.chosen].source
            stats.actions_by_source[source] = stats.actions_by_source.get(source, 0) + 1
        first = next((t for t, r in enumerate(record.rewards) if r >= 1.0), None)
        if first is not None and first < max_turns:
            stats.solved += 1
            stats.solved_at_turn[first] += 1
    return stats


# -- the entry point --------------------------------------------------------------------------


async def collect(
    engine: Engine,
    problems: Sequence[Problem],
    output: str | Path,
    config: CollectConfig,
    *,
    renderer: ChatRenderer | None = None,
    teacher: Teacher | None = None,
    feedback: FeedbackProviders | None = None,
    progress: bool = True,
) -> CollectStats:
    """Roll out every problem not yet in ``output``; append each as it finishes; then sort."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids must be unique: they key trajectories and resumption")
    done = {r.problem_id for r in read_trajectories(path, repair=True)}
    todo = [p for p in problems if p.id not in done]
    collector = Collector(engine, config, renderer, teacher, feedback)
    gate = asyncio.Semaphore(config.concurrency)
    bar = tqdm(
        total=len(problems), initial=len(problems) - len(todo), desc="collect", unit="problem",
        disable=not progress,
    )  # fmt: skip

    with path.open("a", encoding="utf-8") as handle:

        async def one(problem: Problem) -> None:
            async with gate:
                record = await collector.rollout(problem)
            append_trajectory(handle, record)  # a finished problem survives a crash
            bar.update(1)

        tasks = [asyncio.create_task(one(p)) for p in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
    records = finalize(path, problems)
    stats = summarize(records, config.max_turns)
    stats.resumed = len(problems) - len(todo)
    stats.wall_s = time.perf_counter() - start
    return stats
