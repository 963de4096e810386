"""SolveService: runs request plans on episodes — admission, the turn loop, persistence.

The service speaks in plans and episodes, never in a wire format: the API layer (``app/api/``)
translates a request into a :class:`~rise.plan.RequestPlan` and episodes, or into the options a
stored session's plan takes, and makes one call for a :class:`SolveJob` — the plan and the
sessions it runs on (:meth:`SolveService.new_job` for new episodes,
:meth:`SolveService.continue_job` for a stored session); it translates the results back into its
own response. :meth:`SolveService.run` drives a job:

1. admission: at most ``max_concurrent_solves`` run, ``max_queued_solves`` wait, the rest get
   429 with ``Retry-After``;
2. each session's lease is taken (a session runs in one place at a time), a continued session is
   re-read under the lease, and the sessions are stored before any engine work, so a store
   outage is a 503 before tokens are spent;
3. the :class:`~rise.loop.TurnLoop` runs; every finished turn is stored (one atomic write) and
   recorded in the metrics; events are yielded to the caller (SSE) or collected (JSON);
4. however the run ends — done, error, client gone, server shutting down — unfinished episodes
   are stored as they stand (``stop_reason = cancelled``) and the leases released.

What a run produced is a :class:`SolveResult`, separate from the job: the first event of a run
is :class:`Started`, which carries it; errors raised before it (429, 409, 503) are plain HTTP
errors, later ones end a stream with an error event.

A request that cannot run raises :class:`~rise.plan.PlanError` (beyond the deployment's
bounds, oracle without a reference) or :class:`~rise.engine.base.PromptTooLongError`; session
errors are :class:`~app.errors.NotFound` / :class:`~app.errors.Conflict` with codes
``session_not_found`` / ``session_busy``. None of them names a request field: the API layer does
(:func:`app.errors.named_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import (
    Conflict,
    EngineUnavailable,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
)
from app.metrics import Metrics
from app.sessions import Session, SessionStore, new_lease_token
from app.settings import Settings
from rise.affinity import new_session_ids
from rise.engine.base import Engine, EngineError, PromptTooLongError
from rise.episode import Episode, StopReason
from rise.feedback import FeedbackProviders
from rise.loop import EpisodeEvent, TokenEvent, TurnEvent, TurnLoop, stop_reason
from rise.plan import CONTINUE_TURNS, DEFAULT_MAX_TOKENS, RequestPlan
from rise.prompt_file import ActivePrompts
from rise.prompts import ChatRenderer, PromptConfig
from rise.voting import FinalAnswer, final_answer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolveJob:
    """What to run: the plan and the sessions it runs on. A run never changes it."""

    plan: RequestPlan
    sessions: tuple[Session, ...]  # new sessions (one per episode), or the one to continue
    continued: bool = False


@dataclass
class SolveResult:
    """What a run produced, filled in as it goes (complete once the run ended)."""

    sessions: list[Session]  # as run: a continued session is the copy re-read under its lease
    turns_before: list[int]  # turns each episode had before this run
    finals: dict[str, FinalAnswer] = field(default_factory=dict)  # by session id, once ended

    def final(self, index: int) -> FinalAnswer:
        return self.finals[self.sessions[index].id]


@dataclass(frozen=True)
class Started:
    """Admitted, leased and stored: the sessions exist from here on."""

    result: SolveResult


ServiceEvent = Started | TokenEvent | TurnEvent | EpisodeEvent


@dataclass
class _Run:
    """A running job's bookkeeping (leases, whether its sessions were stored)."""

    job: SolveJob
    result: SolveResult
    lease: str = field(default_factory=new_lease_token)
    leased: list[str] = field(default_factory=list)
    stored: bool = False  # the sessions were written once (they exist from then on)
    error: bool = False


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
        self,
        engine: Engine,
        store: SessionStore,
        metrics: Metrics,
        settings: Settings,
        prompts: ActivePrompts | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.prompts = prompts or ActivePrompts(PromptConfig(), "default")
        self.feedback = FeedbackProviders(settings.providers())
        self.loop = TurnLoop(
            engine, ChatRenderer(engine.tokenizer, self.prompts.prompts), self.feedback
        )
        self.model_name = settings.served_model_name or engine.model_name
        metrics.serve_model(self.model_name, self.feedback.verifiers)
        self.limits = settings.plan_limits()
        # The plan of a request that sets nothing: the plan's defaults within this deployment.
        self.defaults = RequestPlan(
            max_turns=settings.default_max_turns,
            max_tokens=min(DEFAULT_MAX_TOKENS, settings.token_limit),
        )
        self.admission = Admission(
            settings.max_concurrent_solves,
            settings.max_queued_solves,
            metrics,
            settings.retry_after_s,
        )
        self._runs: dict[int, _Run] = {}  # running, by id()
        self._cleanups: set[asyncio.Future[None]] = set()
        self._closing = False

    # ---- building jobs ---------------------------------------------------------------------

    def new_job(
        self,
        episodes: Sequence[Episode],
        plan: RequestPlan,
        owner: str | None,
        *,
        root: str | None = None,
    ) -> SolveJob:
        """Check a new solve against the limits; its sessions are stored when it runs.

        The episodes become sessions under one root (``root``, or a fresh one): the key proxies
        and engine ranks keep a conversation's turns together by (rise.affinity).
        Raises PlanError, or PromptTooLongError when the first prompt does not fit.
        """
        for episode, session_id in zip(episodes, new_session_ids(len(episodes), root), strict=True):
            episode.id = session_id
        plan.check(self.limits, episodes)
        for episode in episodes[:1]:  # all episodes of one request share their first prompt
            prompt = self.loop.renderer.next_prompt_ids(
                episode, self.loop.user_message(episode, 0), plan.context_window
            )
            if len(prompt) >= self.engine.max_model_len:
                raise PromptTooLongError(len(prompt), self.engine.max_model_len)
        sessions = tuple(Session(e, owner=owner, plan=plan) for e in episodes)
        return SolveJob(plan, sessions)

    async def continue_job(
        self,
        session_id: str,
        owner: str | None,
        options: Callable[[RequestPlan], RequestPlan],
        *,
        reference: str | None = None,
    ) -> SolveJob:
        """More turns on a stored session; ``reference`` sets or replaces its own.

        The plan is the session's own, for :data:`~rise.plan.CONTINUE_TURNS` turns of its one
        episode, with the request's ``options`` applied to it (a surface's translation, such as
        ``ContinueRequest.to_plan``): only the service holds the session, so the request's
        options come as that function rather than as a finished plan.
        Raises NotFound (unknown or foreign session) or PlanError.
        """
        session = await self.load(session_id, owner)
        plan = options(replace(session.plan, max_turns=CONTINUE_TURNS, n=1))
        if reference is not None:
            session.episode.reference = reference
        plan.check(self.limits, [session.episode])
        return SolveJob(plan, (session,), continued=True)

    async def load(self, session_id: str, owner: str | None) -> Session:
        """A stored session visible to ``owner`` (NotFound for unknown and foreign alike)."""
        session = await self.store.get(session_id)
        if session is None or session.owner != owner:
            raise NotFound(f"no session {session_id!r}", code="session_not_found")
        return session

    async def delete(self, session_id: str, owner: str | None) -> None:
        """Forget a session (Conflict while it runs turns)."""
        await self.load(session_id, owner)
        token = new_lease_token()
        if not await self.store.acquire(session_id, token):
            raise Conflict(f"session {session_id!r} is running turns")
        try:
            await self.store.delete(session_id)
        finally:
            await self.store.release(session_id, token)

    # ---- running ---------------------------------------------------------------------------

    async def run(self, job: SolveJob, *, tokens: bool = True) -> AsyncIterator[ServiceEvent]:
        """Admit, lease, store, then run the loop, storing every turn (see module docstring).

        ``tokens``: yield a TokenEvent per engine delta (for streams); turn and episode events
        come either way.
        """
        if self._closing:
            raise ServiceUnavailable("the server is shutting down", code="shutting_down")
        await self.admission.acquire()
        turns = [len(s.episode.turns) for s in job.sessions]
        run = _Run(job, SolveResult(list(job.sessions), turns))
        self._runs[id(run)] = run
        started = time.perf_counter()
        try:
            await self._prepare(run)
            yield Started(run.result)
            async for event in self._drive(run, tokens):
                yield event
        except Exception:
            run.error = True  # not for cancellation: a client gone is no error
            raise
        finally:
            self.metrics.solve_duration.observe(time.perf_counter() - started)
            # Clean up in a task of its own: a cancelled request (anyio cancel scopes cancel
            # every later await too) must not stop the session being stored. The slot is
            # given back when the clean-up is done.
            cleanup = asyncio.ensure_future(self._finish(run))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            cleanup.add_done_callback(lambda _: self.admission.release())
            del self._runs[id(run)]
            await asyncio.shield(cleanup)

    async def complete(self, job: SolveJob) -> SolveResult:
        """Run a job to its end (no token events) and return what it produced."""
        result = None
        async for event in self.run(job, tokens=False):
            if isinstance(event, Started):
                result = event.result
        assert result is not None  # run() yields Started first or raises
        return result

    async def _prepare(self, run: _Run) -> None:
        result = run.result
        for session in result.sessions:
            if not await self.store.acquire(session.id, run.lease):
                raise Conflict(f"session {session.id!r} is running turns already")
            run.leased.append(session.id)
        if run.job.continued:  # re-read under the lease: the stored copy is the latest now
            old = result.sessions[0]
            fresh = await self.store.get(old.id)
            if fresh is None or fresh.owner != old.owner:
                raise NotFound(f"no session {old.id!r}", code="session_not_found")
            if old.episode.reference is not None:
                fresh.episode.reference = old.episode.reference
            fresh.episode.stop_reason = None
            fresh.plan = run.job.plan
            result.sessions = [fresh]
            result.turns_before = [len(fresh.episode.turns)]
        for session in result.sessions:
            await self.store.put(session)
        run.stored = True

    async def _drive(self, run: _Run, tokens: bool) -> AsyncIterator[ServiceEvent]:
        result, plan = run.result, run.job.plan
        index_of = {session.id: i for i, session in enumerate(result.sessions)}
        events = self.loop.stream([s.episode for s in result.sessions], plan, tokens)
        try:
            async for event in events:
                if isinstance(event, TurnEvent):
                    i = index_of[event.episode_id]
                    session = result.sessions[i]
                    self.metrics.record_turn(
                        session.episode, event.turn, self.model_name, plan.mode
                    )
                    if stop_reason(session.episode, plan, result.turns_before[i]) is None:
                        # Not the last turn; the last one is stored with its EpisodeEvent,
                        # which follows at once (and _finish stores it if the run is cut).
                        await self.store.put(session)
                elif isinstance(event, EpisodeEvent):
                    result.finals[event.episode.id] = event.final
                    self.metrics.record_episode(plan.mode, event.episode, event.vote)
                    await self.store.put(result.sessions[index_of[event.episode.id]])
                yield event
        except EngineError as error:
            raise EngineUnavailable(str(error)) from error
        finally:
            await events.aclose()

    async def _finish(self, run: _Run) -> None:
        """Store what unfinished episodes have, release the leases (never raises)."""
        result, mode = run.result, run.job.plan.mode
        for session in result.sessions if run.stored else []:
            if session.id in result.finals:
                continue  # finished: stored with its EpisodeEvent
            episode = session.episode
            if episode.stop_reason in (None, StopReason.CANCELLED):
                episode.stop_reason = StopReason.ERROR if run.error else StopReason.CANCELLED
            final = final_answer(episode, mode)
            episode.final_answer = final.answer
            result.finals[session.id] = final
            self.metrics.record_episode(mode, episode, final.vote)
            await self._quietly(self.store.put(session), f"store session {session.id}")
        for session_id in run.leased:
            await self._quietly(self.store.release(session_id, run.lease), "release a lease")
        run.leased.clear()

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
        while (self._runs or self._cleanups) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run in list(self._runs.values()):
            await self._finish(run)
        await self.feedback.aclose()

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
