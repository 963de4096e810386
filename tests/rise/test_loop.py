"""The turn loop's logic on a scripted engine (the real engine is in test_engine_vllm.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from rise.engine.base import GenerationChunk, PromptTooLongError, SamplingConfig, derive_seed
from rise.episode import Outcome, StopReason
from rise.loop import (
    EpisodeEvent,
    TokenEvent,
    TurnEvent,
    TurnLoop,
    new_episode,
)
from rise.plan import RequestPlan
from rise.prompts import ChatRenderer
from tests.scripted_engine import ScriptedEngineBase

ENGINE_FIRST_TOKEN_S = 0.25  # what the scripted engine reports for an unstreamed request


class ScriptedEngine(ScriptedEngineBase):
    """Replies from a script keyed by question; the turn is read off the prompt itself."""

    def __init__(self, tokenizer, script: dict[str, list[str]], delay: float = 0.0) -> None:
        super().__init__(tokenizer)
        self.script = script
        self.delay = delay
        self.requests: list[tuple[str, list[int], SamplingConfig]] = []
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.affinities: list[str | None] = []
        self.streamed: list[bool] = []

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        self.requests.append((request_id, list(prompt_ids), sampling))
        self.affinities.append(affinity)
        self.streamed.append(stream)
        prompt = self.tokenizer.decode(prompt_ids)
        question = next(q for q in self.script if q in prompt)
        turn = prompt.count("<|im_start|>assistant") - 1
        reply = self.script[question][turn]
        ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        ids = [*ids[: sampling.max_tokens - 1], self.tokenizer.eos_token_id]
        try:
            if not stream:  # the whole output at once, timed by the engine (vLLM's FINAL_ONLY)
                await asyncio.sleep(self.delay)
                yield GenerationChunk(
                    ids,
                    self.tokenizer.decode(ids, skip_special_tokens=True),
                    finished=True,
                    finish_reason="stop",
                    cached_tokens=len(prompt_ids) // 2,
                    first_token_s=ENGINE_FIRST_TOKEN_S,
                )
                self.finished.append(request_id)
                return
            for i, token in enumerate(ids):
                await asyncio.sleep(self.delay)
                last = i == len(ids) - 1
                yield GenerationChunk(
                    [token],
                    self.tokenizer.decode([token], skip_special_tokens=True),
                    finished=last,
                    finish_reason="stop" if last else None,
                    cached_tokens=len(prompt_ids) // 2,
                )
            self.finished.append(request_id)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    @property
    def queue_depth(self) -> int:
        return len(self.requests) - len(self.finished) - len(self.aborted)


SCRIPT = {
    "Q-one": ["a \\boxed{3}", "b \\boxed{4}", "c \\boxed{4}", "d \\boxed{5}", "e \\boxed{4}"],
    "Q-two": ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{2}", "\\boxed{9}"],
    "Q-none": ["no idea", "still none", "hmm", "\\boxed{8}", "\\boxed{8}"],
}


def _loop(tokenizer, delay: float = 0.0) -> tuple[TurnLoop, ScriptedEngine]:
    engine = ScriptedEngine(tokenizer, SCRIPT, delay)
    return TurnLoop(engine, ChatRenderer(tokenizer)), engine


async def test_loop_runs_fixed_turns_and_votes(tiny_tokenizer) -> None:
    loop, engine = _loop(tiny_tokenizer)
    episodes = [new_episode(q, grader="math") for q in SCRIPT]
    await loop.run(episodes, RequestPlan(max_turns=5))
    one, two, none = episodes
    assert [t.answer for t in one.turns] == ["3", "4", "4", "5", "4"]
    assert one.stop_reason is StopReason.MAX_TURNS and one.final_answer == "4"
    assert two.final_answer == "2"
    assert none.answers[:3] == [None, None, None] and none.final_answer == "8"
    assert len(engine.requests) == 15


async def test_loop_pins_every_turn_to_its_session_root(tiny_tokenizer) -> None:
    """The engine gets the session root as affinity (a data-parallel engine pins it to a rank)."""
    loop, engine = _loop(tiny_tokenizer)
    episode = new_episode(next(iter(SCRIPT)), grader="math")
    episode.id = "conversation1.abc"
    await loop.run([episode], RequestPlan(max_turns=3))
    assert engine.affinities == ["conversation1"] * 3


async def test_loop_derives_a_seed_per_episode_and_turn(tiny_tokenizer) -> None:
    config = RequestPlan(max_turns=2, seed=11)
    drawn = []
    for _ in range(2):
        loop, engine = _loop(tiny_tokenizer)
        # n = 2 choices of one prompt, as /v1/chat/completions sends them
        await loop.run([new_episode("Q-one"), new_episode("Q-one")], config)
        drawn.append(sorted(s.seed for _, _, s in engine.requests))
    assert drawn[0] == drawn[1]  # a rerun draws the same samples
    assert len(set(drawn[0])) == 4  # 2 choices x 2 turns, all different
    expected = {derive_seed(11, position, turn) for position in (0, 1) for turn in (0, 1)}
    assert set(drawn[0]) == expected
    loop, engine = _loop(tiny_tokenizer)
    await loop.run([new_episode("Q-one")], RequestPlan(max_turns=2))
    assert [s.seed for _, _, s in engine.requests] == [None, None]


async def test_loop_last_mode_takes_last_answer(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-two")
    await loop.run([episode], RequestPlan(max_turns=5, mode="last"))
    assert episode.final_answer == "9"


async def test_loop_oracle_stops_at_first_correct(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-one", reference="4")
    await loop.run([episode], RequestPlan(max_turns=5, stop_on_correct=True))
    assert len(episode.turns) == 2 and episode.stop_reason is StopReason.ORACLE
    assert [t.outcome for t in episode.turns] == [Outcome.WRONG, Outcome.CORRECT]
    assert episode.final_answer == "4"


async def test_loop_oracle_without_success_runs_all_turns(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-none", reference="7")
    await loop.run([episode], RequestPlan(max_turns=5, stop_on_correct=True))
    assert episode.stop_reason is StopReason.MAX_TURNS
    assert episode.turns[0].outcome is Outcome.UNPARSEABLE
    assert episode.turns[-1].outcome is Outcome.WRONG


async def test_loop_convergence_stops_when_last_k_agree(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    one, two = new_episode("Q-one"), new_episode("Q-two")
    await loop.run([one, two], RequestPlan(max_turns=5, converge_k=3))
    assert len(two.turns) == 4 and two.stop_reason is StopReason.CONVERGED
    assert len(one.turns) == 5 and one.stop_reason is StopReason.MAX_TURNS
    none = new_episode("Q-none")
    await loop.run([none], RequestPlan(max_turns=5, converge_k=2))
    assert len(none.turns) == 5 and none.stop_reason is StopReason.CONVERGED


async def test_loop_token_budget_caps_generation(tiny_tokenizer) -> None:
    loop, engine = _loop(tiny_tokenizer)
    episode = new_episode("Q-one")
    await loop.run([episode], RequestPlan(max_turns=5, token_budget=12))
    assert episode.output_tokens <= 12
    assert episode.stop_reason is StopReason.TOKEN_BUDGET
    assert engine.requests[-1][2].max_tokens == 12 - sum(
        t.output_tokens for t in episode.turns[:-1]
    )


async def test_loop_context_window_drops_old_attempts(tiny_tokenizer) -> None:
    loop, engine = _loop(tiny_tokenizer)
    episode = new_episode("Q-one")
    await loop.run([episode], RequestPlan(max_turns=4, context_window=1))
    last_prompt = tiny_tokenizer.decode(engine.requests[-1][1])
    assert last_prompt.count("<|im_start|>assistant") == 2  # one kept attempt + the new turn
    assert "\\boxed{4}" in last_prompt and "\\boxed{3}" not in last_prompt


async def test_loop_stream_emits_tokens_turns_then_episode(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-two")
    events = [e async for e in loop.stream([episode], RequestPlan(max_turns=2))]
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "EpisodeEvent" and kinds.count("TurnEvent") == 2
    first_turn_end = kinds.index("TurnEvent")
    assert first_turn_end > 0 and all(k == "TokenEvent" for k in kinds[:first_turn_end])
    text = "".join(e.text for e in events if isinstance(e, TokenEvent) and e.turn == 0)
    assert text == episode.turns[0].text
    turn_events = [e for e in events if isinstance(e, TurnEvent)]
    assert [e.turn.index for e in turn_events] == [0, 1]
    final = events[-1]
    assert isinstance(final, EpisodeEvent) and final.vote.total == 2


async def test_loop_asks_for_whole_outputs_unless_tokens_are_watched(tiny_tokenizer) -> None:
    """``run`` (nobody watches tokens) asks the engine for whole outputs and keeps the engine's
    first-token time; a token stream asks for deltas and times the first one itself."""
    loop, engine = _loop(tiny_tokenizer)
    quiet = [new_episode(q, grader="math") for q in SCRIPT]
    await loop.run(quiet, RequestPlan(max_turns=3))
    assert engine.streamed == [False] * 9
    assert [t.answer for t in quiet[0].turns] == ["3", "4", "4"]
    assert quiet[0].turns[1].text == "b \\boxed{4}" and quiet[0].turns[1].ended_with_eos
    assert all(t.first_token_s == ENGINE_FIRST_TOKEN_S for e in quiet for t in e.turns)

    loop, engine = _loop(tiny_tokenizer)
    watched = [new_episode(q, grader="math") for q in SCRIPT]
    events = [e async for e in loop.stream(watched, RequestPlan(max_turns=3))]
    assert engine.streamed == [True] * 9
    assert sum(isinstance(e, TokenEvent) for e in events) > 9
    texts = [[t.text for t in e.turns] for e in watched]
    assert texts == [[t.text for t in e.turns] for e in quiet]
    assert all(t.first_token_s != ENGINE_FIRST_TOKEN_S for e in watched for t in e.turns)


async def test_loop_closing_stream_cancels_engine_requests(tiny_tokenizer) -> None:
    loop, engine = _loop(tiny_tokenizer, delay=0.01)
    episodes = [new_episode(q) for q in SCRIPT]
    stream = loop.stream(episodes, RequestPlan(max_turns=5))
    async for event in stream:
        if isinstance(event, TokenEvent):
            break
    await stream.aclose()
    assert len(engine.aborted) == 3  # every in-flight request was cancelled
    assert all(e.stop_reason is StopReason.CANCELLED for e in episodes)
    assert engine.queue_depth == 0


async def test_loop_first_prompt_too_long_is_an_error(tiny_tokenizer) -> None:
    loop, engine = _loop(tiny_tokenizer)
    engine.max_model_len = 10

    async def refuse(prompt_ids, sampling, request_id, affinity=None, stream=True):
        raise PromptTooLongError(len(prompt_ids), 10)
        yield  # pragma: no cover

    engine.generate = refuse  # type: ignore[method-assign]
    with pytest.raises(PromptTooLongError):
        await loop.run([new_episode("Q-one")], RequestPlan(max_turns=2))


def test_plan_rejects_bad_loop_values() -> None:
    for bad in ({"max_turns": 0}, {"converge_k": 1}, {"context_window": 0}, {"token_budget": 0}):
        with pytest.raises(ValueError):
            RequestPlan(**bad)
    with pytest.raises(ValueError, match="unknown grader"):
        new_episode("q", grader="nope")


async def test_loop_max_turns_counts_the_turns_of_this_run(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-one")
    await loop.run([episode], RequestPlan(max_turns=2))
    # A continued episode takes max_turns more (one meaning of max_turns: this run's turns).
    await loop.run([episode], RequestPlan(max_turns=2, mode="last"))
    assert [t.answer for t in episode.turns] == ["3", "4", "4", "5"]
    assert episode.stop_reason is StopReason.MAX_TURNS and episode.final_answer == "5"
    before = episode.output_tokens
    await loop.run([episode], RequestPlan(max_turns=5, token_budget=4))
    assert len(episode.turns) == 5 and episode.output_tokens - before <= 4
    assert episode.stop_reason is StopReason.TOKEN_BUDGET


async def test_loop_episode_event_carries_the_final_answer_rule(tiny_tokenizer) -> None:
    loop, _ = _loop(tiny_tokenizer)
    episode = new_episode("Q-one", reference="5")
    config = RequestPlan(max_turns=5, mode="oracle")  # graded, but no oracle stop
    events = [e async for e in loop.stream([episode], config)]
    final = events[-1]
    assert isinstance(final, EpisodeEvent) and len(episode.turns) == 5
    assert (final.final.answer, final.final.turn) == ("5", 3) and episode.final_answer == "5"
    assert final.vote.winner == "4" and final.vote is final.final.vote
    # The stop rule and the answer rule are separate: stop at the oracle, answer by vote.
    stopped = new_episode("Q-one", reference="5")
    await loop.run([stopped], RequestPlan(max_turns=5, stop_on_correct=True))
    assert stopped.stop_reason is StopReason.ORACLE and stopped.answers == ["3", "4", "4", "5"]
    assert stopped.final_answer == "4"
