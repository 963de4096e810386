"""Pure parts of the service without vLLM: sessions, stores, errors, settings, schema, admission.

The in-process app uses a scripted engine behind the Engine protocol; everything it covers is
also exercised on the live server with the real engine in the ``test_live_*`` modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.openai import parse_model
from app.api.solve import ContinueRequest, SolveRequest
from app.errors import (
    Conflict,
    EngineUnavailable,
    InvalidRequest,
    NotFound,
    ServiceError,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
    install_error_handlers,
)
from app.main import create_app
from app.sessions import MemoryStore, Session, owner_of
from app.settings import Settings
from rise.engine.base import GenerationChunk, SamplingConfig
from rise.episode import Outcome, StopReason, Turn
from rise.loop import new_episode
from rise.plan import PlanLimits, RequestPlan
from tests.scripted_engine import ScriptedEngineBase

REPLY = "The answer is \\boxed{7}."


class ScriptedEngine(ScriptedEngineBase):
    """Answers every prompt with REPLY, one token per ``delay_s``."""

    max_model_len = 512

    def __init__(self, tokenizer, delay_s: float = 0.0) -> None:
        super().__init__(tokenizer)
        self.delay_s = delay_s
        self._in_flight = 0

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        ids = self.reply_ids(REPLY)
        self._in_flight += 1
        try:
            for i, token in enumerate(ids):
                await asyncio.sleep(self.delay_s)
                last = i == len(ids) - 1
                text = "" if last else self.tokenizer.decode([token])
                yield GenerationChunk([token], text, last, "stop" if last else None, 0)
        finally:
            self._in_flight -= 1


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_session_json_round_trip_is_lossless() -> None:
    episode = new_episode("q?", reference="7", grader="gsm8k")
    episode.turns.append(
        Turn(0, "u", [1, 2, 3], [4, 5], "t", "stop", True, "7", Outcome.CORRECT, 2, 0.5, 0.1)
    )
    episode.stop_reason = StopReason.ORACLE
    plan = RequestPlan(mode="oracle", stop_on_correct=True, converge_k=3, stop=("x",))
    session = Session(episode, owner=owner_of("k"), plan=plan)
    again = Session.from_json(session.to_json())
    assert again.to_json() == session.to_json()
    assert again.episode.turns[0].output_ids == [4, 5] and again.owner == owner_of("k")
    assert again.plan == plan
    assert owner_of("k") != "k" and owner_of(None) is None


async def test_memory_store_ttl_and_leases() -> None:
    store = MemoryStore(ttl_s=1, lease_s=60)
    session = Session(new_episode("q"))
    await store.put(session)
    assert (await store.get(session.id)).id == session.id and await store.count() == 1
    assert await store.acquire(session.id, "a") and await store.acquire(session.id, "a")
    assert not await store.acquire(session.id, "b")
    await store.release(session.id, "b")  # not the holder: no effect
    assert not await store.acquire(session.id, "b")
    await store.release(session.id, "a")
    assert await store.acquire(session.id, "b")
    store._data[session.id] = (time.time() - 1, store._data[session.id][1])
    assert await store.get(session.id) is None and await store.count() == 0


def test_bounds_are_named_as_bounds_and_old_names_still_work(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RISE_TURN_LIMIT / RISE_TOKEN_LIMIT bound a request's max_turns / max_tokens; the old
    names RISE_MAX_TURNS / RISE_MAX_TOKENS are read with a deprecation warning in the log."""
    for name in ("RISE_TURN_LIMIT", "RISE_TOKEN_LIMIT", "RISE_MAX_TURNS", "RISE_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    assert (settings().turn_limit, settings().token_limit) == (10, 1024)
    monkeypatch.setenv("RISE_TURN_LIMIT", "6")
    monkeypatch.setenv("RISE_TOKEN_LIMIT", "77")
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        assert settings().plan_limits() == PlanLimits(max_turns=6, max_tokens=77, n=8)
    assert not caplog.records
    monkeypatch.delenv("RISE_TURN_LIMIT")
    monkeypatch.delenv("RISE_TOKEN_LIMIT")
    monkeypatch.setenv("RISE_MAX_TURNS", "7")
    monkeypatch.setenv("rise_max_tokens", "99")  # variable names are case-insensitive
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        old = settings()
    assert (old.turn_limit, old.token_limit) == (7, 99)
    warned = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warned) == 2
    assert warned[0].startswith("RISE_MAX_TOKENS is deprecated: set RISE_TOKEN_LIMIT")
    assert warned[1].startswith("RISE_MAX_TURNS is deprecated: set RISE_TURN_LIMIT")
    # The new name wins where both are set; an argument wins over both.
    caplog.clear()
    monkeypatch.setenv("RISE_TURN_LIMIT", "5")
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        assert settings().turn_limit == 5
    assert any("RISE_MAX_TURNS is deprecated and ignored" in r.getMessage() for r in caplog.records)
    assert settings(turn_limit=8).turn_limit == 8
    with pytest.raises(ValueError, match="turn_limit"):
        settings(turn_limit=4, default_max_turns=5)


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISE_API_KEYS", "one, two,,three")
    assert settings().api_keys == ["one", "two", "three"]
    monkeypatch.setenv("RISE_API_KEYS", "")
    assert settings().api_keys == []


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error"),
        (Unauthorized("who"), 401, "authentication_error"),
        (NotFound("gone", param="session_id"), 404, "not_found_error"),
        (Conflict("busy"), 409, "conflict_error"),
        (TooManyRequests("slow down", headers={"Retry-After": "3"}), 429, "rate_limit_error"),
        (StoreUnavailable("redis down"), 503, "service_unavailable_error"),
        (EngineUnavailable("engine down"), 503, "service_unavailable_error"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
def test_each_error_maps_to_one_json_shape(error: Exception, status: int, type_: str) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise")
    async def raise_it() -> None:
        raise error

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/raise")
    assert response.status_code == status
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == type_
    if isinstance(error, ServiceError):
        assert body["message"] == error.message and body["param"] == error.param
        for name, value in error.headers.items():
            assert response.headers[name] == value
    else:
        assert "boom" not in body["message"]  # internals stay in the log


def test_a_solve_body_translates_itself_into_the_plan() -> None:
    """``to_plan`` (as vLLM's ``to_sampling_params``): set options over the base, unset kept."""
    base = RequestPlan(max_turns=4, temperature=0.3, max_tokens=64, converge_k=3, seed=9)
    assert SolveRequest(question="q").to_plan(base) == base
    plan = SolveRequest(question="q", max_turns=2, top_p=0.5, mode="oracle").to_plan(base)
    assert (plan.max_turns, plan.top_p, plan.temperature, plan.seed) == (2, 0.5, 0.3, 9)
    assert plan.mode == "oracle" and plan.stop_on_correct  # oracle: answer rule and stop rule
    assert ContinueRequest(stop_on_convergence=False).to_plan(base).converge_k is None
    assert ContinueRequest(stop_on_convergence=True).to_plan(base).converge_k == 2
    assert ContinueRequest(mode="last").to_plan(plan).stop_on_correct is False


def test_parse_model_prefixes() -> None:
    assert parse_model(None, "m") == (None, None)
    assert parse_model("m", "m") == (None, None)
    assert parse_model("rise-5/m", "m") == (5, None)
    assert parse_model("rise-3-last/org/m", "org/m") == (3, "last")
    for name in ("other", "rise-5/other", "rise-x/m"):
        with pytest.raises(NotFound):
            parse_model(name, "m")


@pytest.fixture
def scripted_app(tiny_tokenizer):
    def make(delay_s: float = 0.0, **overrides: object) -> TestClient:
        config = settings(max_concurrent_solves=1, max_queued_solves=0, **overrides)
        app = create_app(config, engine=ScriptedEngine(tiny_tokenizer, delay_s), store=None)
        return TestClient(app)

    return make


def test_openapi_carries_the_deployment_bounds(scripted_app) -> None:
    with scripted_app(turn_limit=7, token_limit=99) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    turns = schema["SolveRequest"]["properties"]["max_turns"]["anyOf"][0]
    assert turns["maximum"] == 7 and turns["minimum"] == 1
    assert schema["ChatCompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 99


def test_in_process_solve_vote_and_memory_sessions(scripted_app) -> None:
    with scripted_app() as client:
        body = client.post("/solve", json={"question": "q", "max_turns": 3}).json()
        assert [t["answer"] for t in body["turns"]] == ["7", "7", "7"]
        assert body["answer"] == "7" and body["vote"]["margin"] == 3
        converged = client.post(
            "/solve", json={"question": "q", "max_turns": 5, "stop_on_convergence": True}
        ).json()
        assert converged["stop_reason"] == "converged" and len(converged["turns"]) == 2
        session = client.get(f"/sessions/{body['session_id']}").json()
        assert session["status"] == "done" and len(session["turns"]) == 3


async def test_admission_refuses_beyond_the_queue(tiny_tokenizer) -> None:
    config = settings(max_concurrent_solves=1, max_queued_solves=1)
    app = create_app(config, engine=ScriptedEngine(tiny_tokenizer, 0.05))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        body = {"question": "q", "max_turns": 1}
        responses = await asyncio.gather(*(client.post("/solve", json=body) for _ in range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429]
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 429)
