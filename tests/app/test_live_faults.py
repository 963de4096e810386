"""Faults on the live server: Redis stopped and restarted during traffic; the app restarted.

Both tests leave Redis and the app running again for whatever test comes next.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

SMALL = {"question": "What is 4 + 4?", "max_turns": 2, "temperature": 0, "max_tokens": 12}
LONG = {"question": "Go on.", "max_turns": 5, "max_tokens": 1024, "temperature": 0}


class Traffic(threading.Thread):
    """Small solves in a loop until stopped; records every status (or exception name)."""

    def __init__(self, helpers) -> None:
        super().__init__(daemon=True)
        self.helpers = helpers
        self.statuses: list[int | str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with self.helpers.client() as client:
            while not self.halt.is_set():
                try:
                    self.statuses.append(client.post("/solve", json=SMALL).status_code)
                except httpx.HTTPError as error:
                    self.statuses.append(type(error).__name__)
                time.sleep(0.05)


def test_redis_outage_answers_503_and_recovers_without_losing_sessions(
    live, redis_server, api: httpx.Client, helpers
) -> None:
    sid = api.post("/solve", json=SMALL).json()["session_id"]
    stored = api.get(f"/sessions/{sid}").json()
    traffic = Traffic(helpers)
    traffic.start()
    # A long solve in flight when Redis goes away: its next turn cannot be stored.
    with api.stream("POST", "/solve", json={**LONG, "stream": True}) as response:
        events = helpers.sse_events(response.iter_lines())
        assert next(events)[0] == "session"
        redis_server.stop()
        last = list(events)[-1]
    assert last[0] == "error", last
    assert json.loads(last[1])["error"]["code"] == "store_unavailable"
    try:
        start = time.monotonic()
        outage = api.post("/solve", json=SMALL)
        assert time.monotonic() - start < 10
        assert outage.status_code == 503, outage.text
        assert outage.json()["error"]["code"] == "store_unavailable"
        assert int(outage.headers["retry-after"]) >= 1
        assert api.get(f"/sessions/{sid}").status_code == 503
        ready = httpx.get(f"{live.url}/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_unavailable"
        assert httpx.get(f"{live.url}/health").status_code == 200
        oai = openai.OpenAI(base_url=f"{live.url}/v1", api_key=helpers.key_a, max_retries=0)
        with pytest.raises(openai.APIStatusError) as unavailable:
            oai.chat.completions.create(model=None, messages=[{"role": "user", "content": "hi"}])
        assert unavailable.value.status_code == 503
        time.sleep(1)
    finally:
        redis_server.start()  # same port, same append-only file
    deadline = time.monotonic() + 30
    while api.post("/solve", json=SMALL).status_code != 200:
        assert time.monotonic() < deadline, "no recovery after Redis came back"
        time.sleep(0.2)
    traffic.halt.set()
    traffic.join(60)
    assert live.alive()
    assert set(traffic.statuses) <= {200, 503}, traffic.statuses
    assert 503 in traffic.statuses
    assert api.get(f"/sessions/{sid}").json() == stored  # nothing stored was lost or changed
    assert httpx.get(f"{live.url}/ready").status_code == 200


def test_app_restart_reads_sessions_back_and_keeps_in_flight_turns(
    live, api: httpx.Client, helpers
) -> None:
    finished = api.post("/solve", json=SMALL).json()
    stored = api.get(f"/sessions/{finished['session_id']}").json()
    in_flight: dict[str, object] = {}

    def long_solve() -> None:
        try:
            with (
                helpers.client() as client,
                client.stream("POST", "/solve", json={**LONG, "stream": True}) as response,
            ):
                for name, data in helpers.sse_events(response.iter_lines()):
                    if name == "session":
                        in_flight["sid"] = json.loads(data)["session_id"]
                    elif name == "turn":
                        in_flight["turn"] = True
        except httpx.HTTPError as error:  # the server goes away mid-stream
            in_flight["error"] = type(error).__name__

    runner = threading.Thread(target=long_solve, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while "turn" not in in_flight:
        assert time.monotonic() < deadline and runner.is_alive(), in_flight
        time.sleep(0.05)
    live.stop()  # SIGTERM: graceful shutdown stores the unfinished session
    runner.join(30)
    live.start()

    assert api.get(f"/sessions/{finished['session_id']}").json() == stored
    partial = api.get(f"/sessions/{in_flight['sid']}").json()
    assert partial["stop_reason"] == "cancelled" and 1 <= len(partial["turns"]) < 5
    more = api.post(
        f"/sessions/{in_flight['sid']}/turns", json={"max_turns": 1, "max_tokens": 8}
    ).json()
    assert len(more["turns"]) == len(partial["turns"]) + 1
    assert more["turns"][: len(partial["turns"])] == partial["turns"]
    last, new = more["turns"][-2], more["turns"][-1]
    assert new["prompt_tokens"] > last["prompt_tokens"] + last["completion_tokens"]
