"""On-policy RISE data collection (RISE.md §2): multi-turn rollouts with an improvement operator.

For every problem the current model is rolled out for up to ``max_turns`` turns through the
shared turn loop (:mod:`rise.loop`), so states are built with the same chat template and the same
token-level continuation as the service. At each turn a set of candidate actions is sampled
from the same state — ``n_samples`` from the policy (self-distillation, best-of-N) and, when a
teacher is configured, ``teacher.samples`` from any OpenAI-compatible endpoint (distillation) —
every candidate is graded, degenerate ones are dropped, and the FIRST candidate with the highest
reward becomes the trajectory's action (policy candidates come first, so a tie keeps the
on-policy action). The trajectory stops once its action is correct.

All problems are in flight at once (bounded by ``concurrency``) so the engine's continuous
batching always sees every pending request. Each finished problem is appended to the output
JSONL as one line and fsynced, so a crash loses at most the problems in flight; a restart skips
the ids already written and repairs a truncated last line. When every problem is done the file
is rewritten in problem order, so the same inputs give the same file.

Determinism: on GPU every request carries a seed derived from (seed, problem, turn, candidate);
on CPU vLLM cannot take per-request seeds and the engine-wide seed (``EngineSettings.seed``)
plus the fixed submission order is what there is.
"""

from __future__ import annotations

import asyncio
import json
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
from rise.loop import TurnLoop, new_episode
from rise.prompts import ChatRenderer, PromptConfig
from rise_train.datasets import Problem

logger = logging.getLogger(__name__)


# -- configuration ---------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    """A stronger model behind an OpenAI-compatible chat endpoint (the paper's distillation)."""

    base_url: str
    model: str
    samples: int = 1  # teacher candidates per turn (the paper used best of 1-5)
    api_key: str | None = None  # None: $OPENAI_API_KEY, else a placeholder for open servers
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("teacher samples must be >= 1")


@dataclass
class CollectConfig:
    """How rollouts are sampled and which candidates count; the defaults are CPU-sized."""

    max_turns: int = 2  # the paper's training rollouts
    n_samples: int = 4  # policy candidates per turn (the paper: 16)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    max_word_repeats: int = 150  # a candidate repeating one word more often is degenerate
    concurrency: int = 64  # problems in flight at once
    context_window: int | None = None  # None: the state holds every earlier attempt
    seed: int = 0
    iteration: int = 0
    teacher: TeacherConfig | None = None

    def __post_init__(self) -> None:
        for name in ("max_turns", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.n_samples < (0 if self.teacher is not None else 1):
            raise ValueError("n_samples must be >= 1 (or >= 0 with a teacher)")


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


def candidate_record(turn: Turn, source: str) -> dict[str, Any]:
    """One scored candidate as written to the trajectory file."""
    return {
        "text": turn.text,
        "output_ids": list(turn.output_ids),
        "ended_with_eos": turn.ended_with_eos,
        "answer": turn.answer,
        "outcome": None if turn.outcome is None else turn.outcome.value,
        "reward": turn.reward,
        "source": source,
    }


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
    ) -> None:
        self.engine = engine
        self.config = config
        self.renderer = renderer or ChatRenderer(engine.tokenizer, PromptConfig())
        self.loop = TurnLoop(engine, self.renderer)
        if teacher is None and config.teacher is not None:
            teacher = OpenAITeacher(config.teacher, config.temperature, config.top_p)
        self.teacher = teacher

    def sampling(self, problem_id: str, turn: int, candidate: int) -> SamplingConfig:
        c = self.config
        seed = derive_seed(c.seed, c.iteration, problem_id, turn, candidate)
        return SamplingConfig(c.temperature, c.top_p, c.max_tokens, seed=seed)

    async def candidates(self, problem: Problem, episode: Episode) -> list[tuple[Turn, str]]:
        """Every candidate action for the episode's next state: policy first, then teacher."""
        index, n, window = len(episode.turns), self.config.n_samples, self.config.context_window
        policy = [
            self.loop.take_turn(episode, self.sampling(problem.id, index, i), window=window)
            for i in range(n)
        ]
        teacher = [self.teacher_turns(problem, episode)] if self.teacher is not None else []
        results = await asyncio.gather(*policy, *teacher)  # all in flight together
        out = [(turn, "policy") for turn in results[:n]]
        return out + [(turn, "teacher") for group in results[n:] for turn in group]

    async def teacher_turns(self, problem: Problem, episode: Episode) -> list[Turn]:
        """The teacher's answers to the same state, as turns with ids from our renderer."""
        assert self.config.teacher is not None and self.teacher is not None
        # Text in, ids out: the teacher's own tokenizer is irrelevant, the learner trains on the
        # text as rendered by the learner's template (the one renderer, RISE.md §1).
        index = len(episode.turns)
        user_message = self.loop.user_message(episode, index)
        prompt_ids = self.renderer.next_prompt_ids(
            episode, user_message, self.config.context_window
        )
        if len(prompt_ids) >= self.engine.max_model_len:
            raise PromptTooLongError(len(prompt_ids), self.engine.max_model_len)
        n = self.config.teacher.samples
        offset = self.config.n_samples
        seeds = [self.sampling(problem.id, index, offset + i).seed or 0 for i in range(n)]
        messages = [*episode.messages(), {"role": "user", "content": user_message}]
        texts = await self.teacher.complete(messages, n, seeds, self.config.max_tokens)
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

    async def rollout(self, problem: Problem) -> dict[str, Any]:
        """One trajectory record (the JSONL line) for ``problem``."""
        episode = new_episode(
            problem.question,
            reference=problem.reference,
            grader=problem.grader,
            context=self.renderer.prompts.context(),
        )
        turns: list[dict[str, Any]] = []
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
            turns.append(
                {
                    "index": action.index,
                    "user_message": action.user_message,
                    "prompt_ids": list(action.prompt_ids),
                    "candidates": [candidate_record(t, s) for t, s in kept],
                    "chosen": chosen,
                    "dropped": len(scored) - len(kept),
                }
            )
            episode.turns.append(action)
            if action.outcome is Outcome.CORRECT:
                break
        return {
            "problem_id": problem.id,
            "question": problem.question,
            "reference": problem.reference,
            "grader": problem.grader,
            "source": problem.source,
            "context": episode.context,
            "turns": turns,
            "iteration": self.config.iteration,
            "seed": self.config.seed,
        }


# -- the resumable file -----------------------------------------------------------------------


def read_trajectory_file(path: Path) -> list[dict[str, Any]]:
    """Records already written; a truncated last line (a crash mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0  # byte offset just after the last complete, valid line
    for raw in data.splitlines(keepends=True):
        try:
            record = json.loads(raw)
            complete = raw.endswith(b"\n") and isinstance(record, dict)
        except json.JSONDecodeError:
            complete = False
        if not complete:
            if good_end + len(raw) < len(data):  # damage before the end is not a crash
                raise ValueError(f"{path}: corrupt line at byte {good_end}; fix or delete the file")
            logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(raw))
            break
        records.append(record)
        good_end += len(raw)
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return records


def finalize(path: Path, problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """Rewrite the file in problem order, one record per id (atomic replace)."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in read_trajectory_file(path):
        by_id.setdefault(record["problem_id"], record)
    order = {p.id: i for i, p in enumerate(problems)}
    records = sorted(by_id.values(), key=lambda r: order.get(r["problem_id"], len(order)))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
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
    output_tokens: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def summarize(records: Sequence[dict[str, Any]], max_turns: int) -> CollectStats:
    stats = CollectStats(problems=len(records), solved_at_turn=[0] * max_turns)
    for record in records:
        turns = record.get("turns", [])
        for t, turn in enumerate(turns):
            cands = turn["candidates"]
            stats.turns += 1
            stats.candidates += len(cands)
            stats.dropped += int(turn.get("dropped", 0))
            stats.correct_candidates += sum(c.get("outcome") == "correct" for c in cands)
            stats.output_tokens += sum(len(c.get("output_ids") or []) for c in cands)
            if cands[turn["chosen"]].get("outcome") == "correct" and t < max_turns:
                stats.solved += 1
                stats.solved_at_turn[t] += 1
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
    done = {r["problem_id"] for r in read_trajectory_file(path)}
    todo = [p for p in problems if p.id not in done]
    collector = Collector(engine, config, renderer, teacher)
    gate = asyncio.Semaphore(config.concurrency)
    bar = tqdm(
        total=len(problems), initial=len(problems) - len(todo), desc="collect", unit="problem",
        disable=not progress,
    )  # fmt: skip

    with path.open("a", encoding="utf-8") as handle:

        async def one(problem: Problem) -> None:
            async with gate:
                record = await collector.rollout(problem)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # a finished problem survives a crash of this process
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
