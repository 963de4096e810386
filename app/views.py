"""Episodes as the RISE API shows them: turns, votes, usage, sessions, SSE events.

Pure functions from the core's dataclasses to the wire models of :mod:`app.schemas`. Token ids
stay on the server: they are what the next turn continues from, not what a client reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.schemas import SessionPublic, SolveResponse, TurnPublic, Usage, VotePublic
from app.service import SolveJob, answer_mode
from app.sessions import Session
from rise.episode import Turn
from rise.loop import choose_answer
from rise.voting import Vote


def turn_public(turn: Turn) -> TurnPublic:
    return TurnPublic(
        index=turn.index,
        text=turn.text,
        answer=turn.answer,
        outcome=None if turn.outcome is None else turn.outcome.value,
        finish_reason=turn.finish_reason,
        prompt_tokens=turn.prompt_tokens,
        completion_tokens=turn.output_tokens,
        cached_tokens=turn.cached_tokens,
        latency_s=round(turn.latency_s, 6),
        first_token_s=None if turn.first_token_s is None else round(turn.first_token_s, 6),
    )


def vote_public(vote: Vote) -> VotePublic:
    return VotePublic(**vote.to_dict())


def usage_of(turns: Sequence[Turn]) -> Usage:
    prompt = sum(t.prompt_tokens for t in turns)
    completion = sum(t.output_tokens for t in turns)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=sum(t.cached_tokens for t in turns),
    )


def solve_response(job: SolveJob, model: str) -> SolveResponse:
    """The JSON answer of /solve (one session per request)."""
    session, before = job.sessions[0], job.turns_before[0]
    episode = session.episode
    vote = job.votes.get(session.id) or choose_answer(episode, answer_mode(job.plan.mode))[1]
    return SolveResponse(
        session_id=session.id,
        model=model,
        mode=job.plan.mode,
        answer=episode.final_answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        turns=[turn_public(t) for t in episode.turns],
        new_turns=len(episode.turns) - before,
        vote=vote_public(vote),
        usage=usage_of(episode.turns[before:]),
    )


def session_public(session: Session) -> SessionPublic:
    episode = session.episode
    mode = session.options.get("mode", "vote")
    answer, vote = choose_answer(episode, answer_mode(mode))
    return SessionPublic(
        session_id=session.id,
        status="running" if episode.stop_reason is None else "done",
        question=episode.question,
        reference=episode.reference,
        grader=episode.grader,
        mode=mode,
        answer=episode.final_answer if episode.final_answer is not None else answer,
        stop_reason=None if episode.stop_reason is None else episode.stop_reason.value,
        turns=[turn_public(t) for t in episode.turns],
        vote=vote_public(vote),
        messages=episode.messages(),
        options=session.options,
        created_at=session.created_at,
        updated_at=session.updated_at,
    )


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; ``data`` is a model or JSON-able value."""
    payload = data.model_dump_json() if hasattr(data, "model_dump_json") else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n"
