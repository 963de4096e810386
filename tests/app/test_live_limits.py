"""Admission (429 + Retry-After beyond the queue) and client disconnects on the live server.

The shared server runs at most 2 solves and queues 2 more.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

LONG = {"question": "Count slowly.", "max_turns": 5, "max_tokens": 1024, "temperature": 0}


def wait_idle(helpers, timeout: float) -> float:
    """Seconds until no solve runs and the engine holds no request (fails after timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        text = helpers.scrape()
        if (
            helpers.metric(text, "rise_engine_queue_depth") == 0
            and helpers.metric(text, "rise_solves_in_flight") == 0
        ):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still busy after {timeout} s")


async def test_burst_beyond_the_queue_gets_429_with_retry_after(live, helpers) -> None:
    before = helpers.metric(helpers.scrape(), "rise_solves_rejected_total")
    body = {"question": "Burst.", "max_turns": 2, "max_tokens": 200, "temperature": 0}
    headers = {"Authorization": f"Bearer {helpers.key_a}"}
    async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/solve", json=body) for _ in range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 4  # 2 running + 2 queued were admitted
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "too_many_solves"
    after = helpers.metric(helpers.scrape(), "rise_solves_rejected_total")
    assert after - before == statuses.count(429)


def test_closing_a_stream_cancels_its_engine_requests_and_frees_the_session(
    api: httpx.Client, helpers
) -> None:
    wait_idle(helpers, 60)
    with api.stream("POST", "/solve", json={**LONG, "stream": True}) as response:
        events = helpers.sse_events(response.iter_lines())
        name, data = next(events)
        assert name == "session"
        sid = json.loads(data)["session_id"]
        # While it runs, the session is leased: no second run, no delete.
        busy = api.post(f"/sessions/{sid}/turns", json={"max_turns": 1})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
        assert api.delete(f"/sessions/{sid}").status_code == 409
        tokens = sum(1 for _, (n, _) in zip(range(5), events, strict=False) if n == "token")
        assert tokens == 5
    # Unattended, 5 turns x 1024 tokens would run for many seconds.
    assert wait_idle(helpers, 3) < 3
    session = api.get(f"/sessions/{sid}").json()
    assert session["stop_reason"] == "cancelled" and len(session["turns"]) < 5
    assert api.delete(f"/sessions/{sid}").status_code == 204  # the lease is released


def test_a_non_streaming_client_that_leaves_cancels_its_solve(live, helpers) -> None:
    wait_idle(helpers, 60)
    cancelled = {"mode": "vote", "stop_reason": "cancelled"}
    before = helpers.metric(helpers.scrape(), "rise_solves_total", **cancelled)
    impatient = helpers.client(timeout=httpx.Timeout(120, read=1.0))
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/solve", json=LONG)
    assert wait_idle(helpers, 3) < 3
    after = helpers.metric(helpers.scrape(), "rise_solves_total", **cancelled)
    assert after == before + 1
    closed = {"method": "POST", "route": "/solve", "status": "499"}
    assert helpers.metric(helpers.scrape(), "rise_http_requests_total", **closed) >= 1
