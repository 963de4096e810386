"""Bearer API keys and session ownership on the live server (keys A and B configured)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

SMALL = {"question": "What is 1 + 2?", "max_turns": 1, "temperature": 0, "max_tokens": 8}


def test_requests_without_a_valid_key_are_refused(helpers) -> None:
    for key in (None, "not-a-key"):
        with helpers.client(key) as anonymous:
            response = anonymous.post("/solve", json=SMALL)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
            assert anonymous.post("/v1/chat/completions", json={"messages": []}).status_code == 401
    with helpers.client(None) as probes:  # operations stay open for probes and scrapers
        assert probes.get("/health").status_code == 200
        assert probes.get("/ready").status_code == 200
        assert probes.get("/metrics").status_code == 200


def test_a_session_is_visible_only_to_the_key_that_created_it(helpers) -> None:
    with helpers.client(helpers.key_a) as alice, helpers.client(helpers.key_b) as bob:
        sid = alice.post("/solve", json=SMALL).json()["session_id"]
        assert alice.get(f"/sessions/{sid}").status_code == 200
        for method, path, body in [
            ("GET", f"/sessions/{sid}", None),
            ("POST", f"/sessions/{sid}/turns", {"max_turns": 1}),
            ("POST", "/solve", {"session_id": sid}),
            ("DELETE", f"/sessions/{sid}", None),
        ]:
            response = bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "session_not_found"
        assert alice.get(f"/sessions/{sid}").json()["turns"]  # untouched by bob
        assert alice.post(f"/sessions/{sid}/turns", json={"max_turns": 1}).status_code == 200
        assert alice.delete(f"/sessions/{sid}").status_code == 204
