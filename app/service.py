"""SolveService: the one object routes call to run RISE turns (admission, loop, persistence).

A request becomes a :class:`SolveJob` — sessions (new episodes, or one stored episode to
continue) and a :class:`TurnPlan` — and :meth:`SolveService.run` drives it:

1. admission: at most ``max_concurrent_solves`` run, ``max_queued_solves`` wait, the rest get
   429 with ``Retry-After``;
2. each session's lease is taken (a session runs in one place at a time), a continued session is
   re-read under the lease, and the sessions are stored before any engine work, so a store
   outage is a 503 before tokens are spent;
3. the :class:`~rise.loop.TurnLoop` runs; every finished turn is stored (one atomic write) and
   recorded in the metrics; events are yielded to the caller (SSE) or collected (JSON);
4. however the run ends — done, error, client gone, server shutting down — unfinished episodes
   are stored as they stand (``stop_reason = cancelled``) and the leases released.

The first event of a run is :class:`Started`: errors raised before it (429, 409, 503) are plain
HTTP errors; later ones end a stream with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from app.errors import (
    Conflict,
    EngineUnavailable,
    InvalidRequest,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
)
from app.metrics import Metrics
from app.sessions import Session, SessionStore, new_lease_token
from app.settings import Settings
from rise.engine.base import Engine, EngineError, PromptTooLongError, SamplingConfig
from rise.episode import Episode, StopReason
from rise.loop import (
    EpisodeEvent,
    LoopConfig,
    TokenEvent,
    TurnEvent,
    TurnLoop,
    choose_answer,
    new_episode,
    stop_reason,
)
from rise.prompts import ChatRenderer, PromptConfig
from rise.voting import Vote

logger = logging.getLogger(__name__)

Mode = Literal["vote", "last", "oracle"]


@dataclass(frozen=True)
class TurnPlan:
    """How many more turns, how to sample them, when to stop, how to pick the answer."""

    max_turns: int
    mode: Mode = "vote"
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_on_convergence: bool = False
    context_window: int | None = None

    def options(self) -> dict[str, Any]:
        """What a session remembers for its next continuation (everything but the count)."""
        data = asdict(self)
        del data["max_turns"]
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_options(cls, options: dict[str, Any], **overrides: Any) -> TurnPlan:
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        known.update({k: v for k, v in overrides.items() if v is not None})
        known["stop"] = tuple(known.get("stop") or ())
        return cls(**known)

    def loop_config(self, turns_before: int, stream_tokens: bool) -> LoopConfig:
        return LoopConfig(
            max_turns=turns_before + self.max_turns,
            oracle=self.mode == "oracle",
            converge_k=2 if self.stop_on_convergence else None,
            context_window=self.context_window,
            answer_mode=answer_mode(self.mode),
            sampling=SamplingConfig(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                seed=self.seed,
                stop=self.stop,
            ),
            stream_tokens=stream_tokens,
        )


@dataclass
class SolveJob:
    """One request's work: its sessions and plan. ``continued``: one stored session."""

    sessions: list[Session]
    plan: TurnPlan
    stream: bool = False
    continued: bool = False
    turns_before: list[int] = field(default_factory=list)
    votes: dict[str, Vote] = field(default_factory=dict)
    lease: str = field(default_factory=new_lease_token)
    leased: list[str] = field(default_factory=list)
    stored: bool = False  # the sessions were written once (they exist from then on)
    error: bool = False


@dataclass(frozen=True)
class Started:
    """Admitted, leased and stored: the sessions exist from here on."""

    job: SolveJob


ServiceEvent = Started | TokenEvent | TurnEvent | EpisodeEvent


def answer_mode(mode: Mode) -> Literal["vote", "last"]:
    """The loop's answer rule for a mode (oracle: the last turn once correct, else the vote)."""
    return "last" if mode == "last" else "vote"


def episode_from_messages(
    messages: list[dict[str, str]], reference: str | None, grader: str
) -> Episode:
    """An episode whose question is the last (user) message and whose context is the rest.

    The first turn sends the messages as given; later turns repeat the question in RISE's
    introspection prompt.
    """
    if messages[-1]["role"] != "user":
        raise InvalidRequest("the last message must be from the user", param="messages")
    question = messages[-1]["content"]
    if not question.strip():
        raise InvalidRequest("the last user message is empty", param="messages")
    return new_episode(
        question, reference=reference, grader=grader, context=messages[:-1], first_message=question
    )


def check_bound(value: int, limit: int, param: str) -> int:
    if value > limit:
        raise InvalidRequest(f"{param} must be at most {limit} here (got {value})", param=param)
    return value


class Admission:
    """A semaphore with a bounded waiting line; beyond it, 429 at once.

    Acquire and release are separate calls (not a context manager) because a slot is given back
    only when the solve's clean-up (storing the session, releasing its lease) is done, which can
    outlive a cancelled request.
    """

    def __init__(self, limit: int, queue: int, metrics: Metrics, retry_after_s: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._metrics = metrics
        self._retry_after = str(retry_after_s)

    async def acquire(self) -> None:
        if self._semaphore.locked() and self._waiting >= self._queue:
            self._metrics.rejected.inc()
            raise TooManyRequests(
                "too many solves in progress; retry later",
                headers={"Retry-After": self._retry_after},
            )
        self._metrics.solves_in_flight.inc()
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._metrics.solves_in_flight.dec()
            raise
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._semaphore.release()
        self._metrics.solves_in_flight.dec()


class SolveService:
    """Runs solves on one engine and one session store, recording metrics."""

    def __init__(
        self, engine: Engine, store: SessionStore, metrics: Metrics, settings: Settings
    ) -> None:
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.loop = TurnLoop(engine, ChatRenderer(engine.tokenizer, PromptConfig()))
        self.model_name = settings.served_model_name or engine.model_name
        self.admission = Admission(
            settings.max_concurrent_solves,
            settings.max_queued_solves,
            metrics,
            settings.retry_after_s,
        )
        self._jobs: dict[int, SolveJob] = {}  # running, by id()
        self._cleanups: set[asyncio.Future[None]] = set()
        self._closing = False

    # ---- building jobs ---------------------------------------------------------------------

    def new_job(
        self,
        episodes: Sequence[Episode],
        plan: TurnPlan,
        owner: str | None,
        *,
        stream: bool,
        prompt_param: str,
        max_turns_param: str = "max_turns",
    ) -> SolveJob:
        """Check a new solve against the limits; its sessions are stored when it runs."""
        self._check_plan(plan, episodes, max_turns_param)
        for episode in episodes[:1]:  # all episodes of one request share their first prompt
            prompt = self.loop.renderer.next_prompt_ids(
                episode, self.loop.user_message(episode, 0), plan.context_window
            )
            if len(prompt) >= self.engine.max_model_len:
                error = PromptTooLongError(len(prompt), self.engine.max_model_len)
                raise InvalidRequest(str(error), param=prompt_param, code="context_length_exceeded")
        sessions = [Session(e, owner=owner, options=plan.options()) for e in episodes]
        return SolveJob(sessions, plan, stream=stream, turns_before=[0] * len(sessions))

    def _check_plan(
        self, plan: TurnPlan, episodes: Sequence[Episode], max_turns_param: str
    ) -> None:
        """The plan within this server's bounds; oracle mode only with a reference."""
        check_bound(plan.max_turns, self.settings.max_turns, max_turns_param)
        check_bound(plan.max_tokens, self.settings.max_tokens, "max_tokens")
        if plan.mode == "oracle" and any(e.reference is None for e in episodes):
            raise InvalidRequest("mode 'oracle' needs a reference answer", param="reference")

    async def load(self, session_id: str, owner: str | None) -> Session:
        """A stored session visible to ``owner`` (404 for unknown and foreign alike)."""
        session = await self.store.get(session_id)
        if session is None or session.owner != owner:
            raise NotFound(
                f"no session {session_id!r}", param="session_id", code="session_not_found"
            )
        return session

    async def delete(self, session_id: str, owner: str | None) -> None:
        """Forget a session (409 while it runs turns)."""
        await self.load(session_id, owner)
        token = new_lease_token()
        if not await self.store.acquire(session_id, token):
            raise Conflict(f"session {session_id!r} is running turns", param="session_id")
        try:
            await self.store.delete(session_id)
        finally:
            await self.store.release(session_id, token)

    async def continue_job(
        self,
        session_id: str,
        owner: str | None,
        overrides: dict[str, Any],
        *,
        reference: str | None,
        stream: bool,
    ) -> SolveJob:
        """More turns on a stored session; unset options keep the session's."""
        session = await self.load(session_id, owner)
        if reference is not None:
            session.episode.reference = reference
        overrides.setdefault("max_turns", None)
        if overrides["max_turns"] is None:
            overrides["max_turns"] = 1
        plan = TurnPlan.from_options(session.options, **overrides)
        self._check_plan(plan, [session.episode], "max_turns")
        return SolveJob([session], plan, stream=stream, continued=True)

    # ---- running ---------------------------------------------------------------------------

    async def run(self, job: SolveJob) -> AsyncIterator[ServiceEvent]:
        """Admit, lease, store, then run the loop, storing every turn (see module docstring)."""
        if self._closing:
            raise ServiceUnavailable("the server is shutting down", code="shutting_down")
        await self.admission.acquire()
        self._jobs[id(job)] = job
        started = time.perf_counter()
        try:
            await self._prepare(job)
            yield Started(job)
            async for event in self._drive(job):
                yield event
        except Exception:
            job.error = True  # not for cancellation: a client gone is no error
            raise
        finally:
            self.metrics.solve_duration.observe(time.perf_counter() - started)
            # Clean up in a task of its own: a cancelled request (anyio cancel scopes cancel
            # every later await too) must not stop the session being stored. The slot is
            # given back when the clean-up is done.
            cleanup = asyncio.ensure_future(self._finish(job))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            cleanup.add_done_callback(lambda _: self.admission.release())
            del self._jobs[id(job)]
            await asyncio.shield(cleanup)

    async def complete(self, job: SolveJob) -> SolveJob:
        """Run a job to its end (no token events); the job carries the results."""
        job.stream = False
        async for _ in self.run(job):
            pass
        return job

    async def _prepare(self, job: SolveJob) -> None:
        for session in job.sessions:
            if not await self.store.acquire(session.id, job.lease):
                raise Conflict(
                    f"session {session.id!r} is running turns already", param="session_id"
                )
            job.leased.append(session.id)
        if job.continued:  # re-read under the lease: the stored copy is the latest now
            old = job.sessions[0]
            fresh = await self.store.get(old.id)
            if fresh is None or fresh.owner != old.owner:
                raise NotFound(f"no session {old.id!r}", param="session_id")
            if old.episode.reference is not None:
                fresh.episode.reference = old.episode.reference
            fresh.episode.stop_reason = None
            fresh.options = job.plan.options()
            job.sessions = [fresh]
            job.turns_before = [len(fresh.episode.turns)]
        for session in job.sessions:
            await self.store.put(session)
        job.stored = True

    async def _drive(self, job: SolveJob) -> AsyncIterator[ServiceEvent]:
        by_id = {session.id: session for session in job.sessions}
        config = job.plan.loop_config(job.turns_before[0], stream_tokens=job.stream)
        events = self.loop.stream([s.episode for s in job.sessions], config)
        try:
            async for event in events:
                if isinstance(event, TurnEvent):
                    session = by_id[event.episode_id]
                    self.metrics.record_turn(session.episode, event.turn)
                    if stop_reason(session.episode, config) is None:
                        # Not the last turn; the last one is stored with its EpisodeEvent,
                        # which follows at once (and _finish stores it if the run is cut).
                        await self.store.put(session)
                elif isinstance(event, EpisodeEvent):
                    job.votes[event.episode.id] = event.vote
                    self.metrics.record_episode(job.plan.mode, event.episode, event.vote)
                    await self.store.put(by_id[event.episode.id])
                yield event
        except PromptTooLongError as error:
            code = "context_length_exceeded"
            raise InvalidRequest(str(error), param="messages", code=code) from error
        except EngineError as error:
            raise EngineUnavailable(str(error)) from error
        finally:
            await events.aclose()

    async def _finish(self, job: SolveJob) -> None:
        """Store what unfinished episodes have, release the leases (never raises)."""
        for session in job.sessions if job.stored else []:
            if session.id in job.votes:
                continue  # finished: stored with its EpisodeEvent
            episode = session.episode
            if episode.stop_reason in (None, StopReason.CANCELLED):
                episode.stop_reason = StopReason.ERROR if job.error else StopReason.CANCELLED
            episode.final_answer, vote = choose_answer(episode, answer_mode(job.plan.mode))
            job.votes[session.id] = vote
            self.metrics.record_episode(job.plan.mode, episode, vote)
            await self._quietly(self.store.put(session), f"store session {session.id}")
        for session_id in job.leased:
            await self._quietly(self.store.release(session_id, job.lease), "release a lease")
        job.leased.clear()

    @staticmethod
    async def _quietly(call: Any, what: str) -> None:
        try:
            async with asyncio.timeout(5):
                await call
        except Exception as error:  # clean-up must go on (a store outage, a timeout...)
            logger.warning("could not %s: %s", what, error)

    # ---- lifecycle -------------------------------------------------------------------------

    async def shutdown(self, wait_s: float = 5.0) -> None:
        """Refuse new solves; let cancelled runs store their sessions; store any left."""
        self._closing = True
        deadline = time.monotonic() + wait_s
        while (self._jobs or self._cleanups) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self._jobs.values()):
            await self._finish(job)

    async def check_ready(self) -> None:
        """Raise EngineUnavailable / StoreUnavailable unless both answer."""
        try:
            await self.engine.check_health()
        except Exception as error:
            raise EngineUnavailable(f"engine unhealthy: {error}") from error
        await self.store.ping()

    async def refresh_gauges(self) -> None:
        self.metrics.engine_queue_depth.set(self.engine.queue_depth)
        with contextlib.suppress(ServiceError, TimeoutError):
            async with asyncio.timeout(1):  # a scrape must not hang on a slow store
                self.metrics.active_sessions.set(await self.store.count())
