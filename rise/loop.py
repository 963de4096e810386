"""The RISE turn loop (docs/RISE.md §1, §5): many episodes at once, up to N turns each.

Each episode runs as its own task: answer, grade, check the stopping rules, append the
introspection prompt, answer again. Episodes never wait for each other, so the engine's
continuous batching always sees every live turn. A turn's prompt is built at the token level by
:class:`~rise.prompts.ChatRenderer`, so per-turn work is O(new tokens) and the prefix cache
serves the rest.

Progress comes out as events from :meth:`TurnLoop.stream` — token deltas, turn ends, episode
ends — and closing the stream (or cancelling its consumer) cancels every running turn, which
aborts its engine request.

A run may start from an episode that already has turns (a continued session): ``max_turns`` and
``token_budget`` count the turns and tokens of this run, as in :mod:`rise.plan`. The final
answer is :func:`rise.voting.final_answer`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from rise.affinity import new_root, session_root
from rise.answers import get_grader
from rise.engine.base import Engine, PromptTooLongError, SamplingConfig
from rise.episode import Episode, Outcome, StopReason, Turn
from rise.plan import DEFAULT_MAX_TURNS
from rise.prompts import ChatRenderer
from rise.voting import AnswerMode, FinalAnswer, Vote, final_answer


@dataclass(frozen=True)
class LoopConfig:
    """How many turns, when to stop early, what the model sees, how the answer is chosen.

    Usually made by :meth:`rise.plan.RequestPlan.loop_config`.
    """

    max_turns: int = DEFAULT_MAX_TURNS  # turns this run takes (on top of any it starts with)
    oracle: bool = False  # stop rule: stop at the first correct turn (needs a reference)
    converge_k: int | None = None  # stop once the last k answers agree (k >= 2)
    token_budget: int | None = None  # generated tokens of this run, all turns together
    context_window: int | None = None  # keep the last k attempts; None keeps all turns
    answer_mode: AnswerMode = "vote"  # answer rule (rise.voting.final_answer)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stream_tokens: bool = True  # emit TokenEvent per engine delta

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if self.converge_k is not None and self.converge_k < 2:
            raise ValueError("converge_k must be >= 2")
        if self.context_window is not None and self.context_window < 1:
            raise ValueError("context_window must be >= 1")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError("token_budget must be >= 1")


@dataclass(frozen=True)
class TokenEvent:
    episode_id: str
    turn: int
    text: str
    token_ids: list[int]


@dataclass(frozen=True)
class TurnEvent:
    episode_id: str
    turn: Turn


@dataclass(frozen=True)
class EpisodeEvent:
    episode: Episode
    final: FinalAnswer  # the answer, the turn shown for it, the vote

    @property
    def vote(self) -> Vote:
        return self.final.vote


LoopEvent = TokenEvent | TurnEvent | EpisodeEvent
Emit = Callable[[LoopEvent], None]


def new_episode(
    question: str,
    *,
    reference: str | None = None,
    grader: str = "math",
    context: Sequence[dict[str, str]] = (),
    first_message: str | None = None,
) -> Episode:
    """An episode with no turns yet; ``first_message`` overrides the first-turn template."""
    get_grader(grader)  # fail fast on an unknown grader name
    episode = Episode(
        question=question, reference=reference, grader=grader, context=[dict(m) for m in context]
    )
    if first_message is not None:
        episode.metadata["first_message"] = first_message
    return episode


def stop_reason(episode: Episode, config: LoopConfig, start: int = 0) -> StopReason | None:
    """The rule that ends ``episode`` before its next turn, or None to go on.

    ``start``: the turns the episode had when this run began (max_turns and the token budget
    count from there).
    """
    turns = episode.turns
    if turns and config.oracle and turns[-1].outcome is Outcome.CORRECT:
        return StopReason.ORACLE
    if config.converge_k is not None and len(turns) >= config.converge_k:
        recent = [turn.answer for turn in turns[-config.converge_k :]]
        grader = get_grader(episode.grader)
        first = recent[0]
        if first is not None and all(
            a is not None and grader.equivalent(first, a) for a in recent[1:]
        ):
            return StopReason.CONVERGED
    if config.token_budget is not None and _run_tokens(episode, start) >= config.token_budget:
        return StopReason.TOKEN_BUDGET
    if len(turns) - start >= config.max_turns:
        return StopReason.MAX_TURNS
    return None


def _run_tokens(episode: Episode, start: int) -> int:
    return sum(turn.output_tokens for turn in episode.turns[start:])


class TurnLoop:
    """Runs RISE episodes on one engine with one renderer."""

    def __init__(self, engine: Engine, renderer: ChatRenderer) -> None:
        self.engine = engine
        self.renderer = renderer

    def user_message(self, episode: Episode, index: int) -> str:
        """Turn 0 gets the first-turn prompt; every later turn the introspection prompt."""
        if index == 0:
            first = episode.metadata.get("first_message")
            return (
                first
                if first is not None
                else self.renderer.prompts.first_user_message(episode.question)
            )
        return self.renderer.prompts.introspection_message(episode.question)

    async def take_turn(
        self,
        episode: Episode,
        sampling: SamplingConfig,
        *,
        window: int | None = None,
        emit: Emit | None = None,
        request_id: str | None = None,
    ) -> Turn:
        """Generate and grade the next action of ``episode`` (does not append it)."""
        index = len(episode.turns)
        user_message = self.user_message(episode, index)
        prompt_ids = self.renderer.next_prompt_ids(episode, user_message, window)
        request_id = request_id or f"{episode.id}-{index}-{new_root()[:8]}"
        output_ids: list[int] = []
        pieces: list[str] = []
        finish_reason, cached, first_token_s = "abort", 0, None
        start = time.perf_counter()
        chunks = self.engine.generate(
            prompt_ids,
            sampling,
            request_id,
            affinity=session_root(episode.id),
            stream=emit is not None,  # unwatched turns come whole: no per-token work here
        )
        async for chunk in chunks:
            if chunk.first_token_s is not None:
                first_token_s = chunk.first_token_s
            elif chunk.token_ids and first_token_s is None:
                first_token_s = time.perf_counter() - start
            output_ids += chunk.token_ids
            pieces.append(chunk.text)
            cached = max(cached, chunk.cached_tokens)
            if emit is not None and (chunk.text or chunk.token_ids):
                emit(TokenEvent(episode.id, index, chunk.text, list(chunk.token_ids)))
            if chunk.finished:
                finish_reason = chunk.finish_reason or "stop"
        text = "".join(pieces)
        grader = get_grader(episode.grader)
        answer = grader.extract(text)
        outcome = None if episode.reference is None else grader.grade(answer, episode.reference)
        return Turn(
            index=index,
            user_message=user_message,
            prompt_ids=prompt_ids,
            output_ids=output_ids,
            text=text,
            finish_reason=finish_reason,
            ended_with_eos=self.renderer.ends_turn(output_ids),
            answer=answer,
            outcome=outcome,
            cached_tokens=cached,
            latency_s=time.perf_counter() - start,
            first_token_s=first_token_s,
        )

    async def run_episode(
        self, episode: Episode, config: LoopConfig, emit: Emit, position: int = 0
    ) -> Episode:
        """Take turns until a stopping rule fires; emits events as it goes.

        With a seed, each turn samples with one derived from (seed, ``position``, turn index):
        parallel episodes of one request (their ``position`` differs) and successive turns
        draw different samples, and a rerun draws the same ones.
        """
        start = len(episode.turns)
        try:
            while (reason := stop_reason(episode, config, start)) is None:
                sampling = config.sampling.derived(position, len(episode.turns))
                if config.token_budget is not None:
                    left = config.token_budget - _run_tokens(episode, start)
                    sampling = replace(sampling, max_tokens=min(sampling.max_tokens, left))
                try:
                    turn = await self.take_turn(
                        episode,
                        sampling,
                        window=config.context_window,
                        emit=emit if config.stream_tokens else None,
                    )
                except PromptTooLongError:
                    if not episode.turns:
                        raise  # the question itself does not fit: the caller's error
                    reason = StopReason.CONTEXT_FULL
                    break
                episode.turns.append(turn)
                emit(TurnEvent(episode.id, turn))
        except asyncio.CancelledError:
            episode.stop_reason = StopReason.CANCELLED
            raise
        episode.stop_reason = reason
        final = final_answer(episode, config.answer_mode)
        episode.final_answer = final.answer
        emit(EpisodeEvent(episode, final))
        return episode

    async def stream(
        self, episodes: Sequence[Episode], config: LoopConfig
    ) -> AsyncIterator[LoopEvent]:
        """Run all episodes concurrently, yielding their events as they happen.

        Closing the iterator early, or cancelling its consumer, cancels every running turn
        (and so aborts its engine request); an error in one episode cancels the rest and is
        raised here.
        """
        queue: asyncio.Queue[LoopEvent | BaseException] = asyncio.Queue()

        async def run(episode: Episode, position: int) -> None:
            try:
                await self.run_episode(episode, config, queue.put_nowait, position)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                queue.put_nowait(error)

        tasks = [asyncio.create_task(run(e, i)) for i, e in enumerate(episodes)]
        remaining = len(tasks)
        try:
            while remaining:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, EpisodeEvent):
                    remaining -= 1
                yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, episodes: Sequence[Episode], config: LoopConfig) -> list[Episode]:
        """Run all episodes to their end; returns them (also updated in place)."""
        quiet = replace(config, stream_tokens=False)
        async for _ in self.stream(episodes, quiet):
            pass
        return list(episodes)
