"""The RISE turn loop (docs/RISE.md §1, §5): many episodes at once, up to N turns each.

Each episode runs as its own task: answer, grade, check the stopping rules, append the
introspection prompt, answer again. Episodes never wait for each other, so the engine's
continuous batching always sees every live turn. A turn's prompt is built at the token level by
:class:`~rise.prompts.ChatRenderer`, so per-turn work is O(new tokens) and the prefix cache
serves the rest.

Progress comes out as events from :meth:`TurnLoop.stream` — token deltas, turn ends, episode
ends — and closing the stream (or cancelling its consumer) cancels every running turn, which
aborts its engine request.

The loop runs a :class:`~rise.plan.RequestPlan` as it is: its turns, stop rules, context window,
feedback, answer rule and sampling (``n`` is the caller's: one episode each). After every turn
the plan's feedback provider (:mod:`rise.feedback`) judges it; the verdict stays on the turn and
its message is the next turn's user message. A run may start from an
episode that already has turns (a continued session): ``max_turns`` and ``token_budget`` count
the turns and tokens of this run. The final answer is :func:`rise.voting.final_answer`'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from rise.affinity import new_root, session_root
from rise.answers import get_grader
from rise.engine.base import Engine, PromptTooLongError, SamplingConfig
from rise.episode import Episode, Outcome, StopReason, Turn, Verdict
from rise.feedback import Attempt, FeedbackProviders
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer
from rise.voting import FinalAnswer, Vote, final_answer


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


def stop_reason(episode: Episode, plan: RequestPlan, start: int = 0) -> StopReason | None:
    """The rule of ``plan`` that ends ``episode`` before its next turn, or None to go on.

    ``start``: the turns the episode had when this run began (max_turns and the token budget
    count from there).
    """
    turns = episode.turns
    if turns and plan.stop_on_correct and known_correct(turns[-1]):
        return StopReason.ORACLE
    if plan.converge_k is not None and len(turns) >= plan.converge_k:
        recent = [turn.answer for turn in turns[-plan.converge_k :]]
        grader = get_grader(episode.grader)
        first = recent[0]
        if first is not None and all(
            a is not None and grader.equivalent(first, a) for a in recent[1:]
        ):
            return StopReason.CONVERGED
    if plan.token_budget is not None and _run_tokens(episode, start) >= plan.token_budget:
        return StopReason.TOKEN_BUDGET
    if len(turns) - start >= plan.max_turns:
        return StopReason.MAX_TURNS
    return None


def known_correct(turn: Turn) -> bool:
    """Graded correct against the reference, or judged correct by the feedback provider (the
    oracle, or a verifier the deployment configured: the calculator never says so)."""
    if turn.outcome is Outcome.CORRECT:
        return True
    return turn.feedback is not None and turn.feedback.verdict is Verdict.CORRECT


def _run_tokens(episode: Episode, start: int) -> int:
    return sum(turn.output_tokens for turn in episode.turns[start:])


class TurnLoop:
    """Runs RISE episodes on one engine with one renderer."""

    def __init__(
        self, engine: Engine, renderer: ChatRenderer, feedback: FeedbackProviders | None = None
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.feedback = feedback or FeedbackProviders()

    def user_message(self, episode: Episode, index: int) -> str:
        """Turn 0 gets the first-turn prompt; a later turn the previous turn's feedback, or
        RISE's introspection prompt where that turn has none (stored before feedback)."""
        if index == 0:
            first = episode.metadata.get("first_message")
            return (
                first
                if first is not None
                else self.renderer.prompts.first_user_message(episode.question)
            )
        previous = episode.turns[index - 1] if index - 1 < len(episode.turns) else None
        if previous is not None and previous.feedback is not None:
            return previous.feedback.message
        return self.renderer.prompts.introspection_message(episode.question)

    async def judge(self, episode: Episode, turn: Turn, provider: str) -> None:
        """Set ``turn.feedback``: the named provider's judgement of the turn."""
        attempt = Attempt(
            question=episode.question,
            text=turn.text,
            answer=turn.answer,
            turn=turn.index,
            reference=episode.reference,
            outcome=turn.outcome,
        )
        turn.feedback = await self.feedback.get(provider).judge(attempt, self.renderer.prompts)

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
        self,
        episode: Episode,
        plan: RequestPlan,
        emit: Emit,
        position: int = 0,
        stream_tokens: bool = True,
    ) -> Episode:
        """Take turns until a stopping rule fires; emits events as it goes (token deltas only
        with ``stream_tokens``).

        With a seed, each turn samples with one derived from (seed, ``position``, turn index):
        parallel episodes of one request (their ``position`` differs) and successive turns
        draw different samples, and a rerun draws the same ones.
        """
        start = len(episode.turns)
        base = plan.sampling()
        try:
            while (reason := stop_reason(episode, plan, start)) is None:
                sampling = base.derived(position, len(episode.turns))
                if plan.token_budget is not None:
                    left = plan.token_budget - _run_tokens(episode, start)
                    sampling = replace(sampling, max_tokens=min(sampling.max_tokens, left))
                try:
                    turn = await self.take_turn(
                        episode,
                        sampling,
                        window=plan.context_window,
                        emit=emit if stream_tokens else None,
                    )
                except PromptTooLongError:
                    if not episode.turns:
                        raise  # the question itself does not fit: the caller's error
                    reason = StopReason.CONTEXT_FULL
                    break
                await self.judge(episode, turn, plan.feedback)
                episode.turns.append(turn)
                emit(TurnEvent(episode.id, turn))
        except asyncio.CancelledError:
            episode.stop_reason = StopReason.CANCELLED
            raise
        episode.stop_reason = reason
        final = final_answer(episode, plan.mode)
        episode.final_answer = final.answer
        emit(EpisodeEvent(episode, final))
        return episode

    async def stream(
        self, episodes: Sequence[Episode], plan: RequestPlan, stream_tokens: bool = True
    ) -> AsyncIterator[LoopEvent]:
        """Run all episodes concurrently, yielding their events as they happen (token deltas
        only with ``stream_tokens``).

        Closing the iterator early, or cancelling its consumer, cancels every running turn
        (and so aborts its engine request); an error in one episode cancels the rest and is
        raised here.
        """
        queue: asyncio.Queue[LoopEvent | BaseException] = asyncio.Queue()

        async def run(episode: Episode, position: int) -> None:
            try:
                await self.run_episode(episode, plan, queue.put_nowait, position, stream_tokens)
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

    async def run(self, episodes: Sequence[Episode], plan: RequestPlan) -> list[Episode]:
        """Run all episodes to their end; returns them (also updated in place)."""
        async for _ in self.stream(episodes, plan, stream_tokens=False):
            pass
        return list(episodes)
