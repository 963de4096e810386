"""POST /solve and the session routes on the live server (real vLLM CPU engine, real Redis)."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

GREEDY = {"temperature": 0, "max_tokens": 16}


def test_solve_returns_every_turn_vote_and_usage(api: httpx.Client) -> None:
    response = api.post("/solve", json={"question": "What is 3 + 4?", "max_turns": 3, **GREEDY})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["session_id"]) >= 22 and body["mode"] == "vote"
    assert body["stop_reason"] == "max_turns" and body["new_turns"] == 3
    turns = body["turns"]
    assert [t["index"] for t in turns] == [0, 1, 2]
    for turn in turns:
        assert turn["text"] and 0 < turn["completion_tokens"] <= 16
        assert turn["latency_s"] > 0 and turn["finish_reason"] in {"stop", "length"}
    # Each turn's prompt extends the previous prompt + output, so later turns hit the cache.
    for before, after in itertools.pairwise(turns):
        assert after["prompt_tokens"] > before["prompt_tokens"] + before["completion_tokens"]
        assert after["cached_tokens"] > 0
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(t["prompt_tokens"] for t in turns)
    assert usage["completion_tokens"] == sum(t["completion_tokens"] for t in turns)
    assert usage["cached_tokens"] == sum(t["cached_tokens"] for t in turns)
    assert body["vote"]["total"] == sum(t["answer"] is not None for t in turns)
    assert body["answer"] == body["vote"]["winner"]


def test_solve_oracle_stops_at_the_reference(api: httpx.Client) -> None:
    # Greedy decoding is deterministic: learn turn 1's answer, then make it the reference.
    probe = {"question": "Name a number.", "grader": "exact", "max_turns": 1, **GREEDY}
    first = api.post("/solve", json=probe).json()["turns"][0]["answer"]
    assert first
    oracle = {**probe, "max_turns": 4, "mode": "oracle", "reference": first}
    body = api.post("/solve", json=oracle).json()
    assert body["stop_reason"] == "oracle" and len(body["turns"]) == 1
    assert body["turns"][0]["outcome"] == "correct" and body["answer"] == first


def test_solve_accepts_messages(api: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    body = api.post("/solve", json={"messages": messages, "max_turns": 2, **GREEDY}).json()
    session = api.get(f"/sessions/{body['session_id']}").json()
    assert session["messages"][0] == messages[0]
    assert session["messages"][1] == messages[1]  # sent as given, no first-turn template
    assert "Please try again" in session["messages"][3]["content"]
    assert len(session["turns"]) == 2


def test_solve_stream_sends_session_tokens_turns_then_done(api: httpx.Client, helpers) -> None:
    request = {"question": "What is 5 + 6?", "max_turns": 2, "stream": True, **GREEDY}
    with api.stream("POST", "/solve", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(helpers.sse_events(response.iter_lines()))
    names = [name for name, _ in events]
    assert names[0] == "session" and names[-1] == "done"
    assert names.count("turn") == 2 and "error" not in names
    first_turn_end = names.index("turn")
    assert all(n == "token" for n in names[1:first_turn_end])
    done = json.loads(events[-1][1])
    assert done["session_id"] == json.loads(events[0][1])["session_id"]
    for index, turn in enumerate(done["turns"]):
        text = "".join(
            json.loads(d)["text"]
            for n, d in events
            if n == "token" and json.loads(d)["turn"] == index
        )
        assert text == turn["text"]
    ends = [json.loads(d) for n, d in events if n == "turn"]
    assert [t["answer"] for t in ends] == [t["answer"] for t in done["turns"]]


def test_session_continues_from_its_token_ids(api: httpx.Client) -> None:
    first = api.post("/solve", json={"question": "What is 9 - 2?", "max_turns": 2, **GREEDY}).json()
    sid = first["session_id"]
    more = api.post(f"/sessions/{sid}/turns", json={"max_turns": 2})
    assert more.status_code == 200, more.text
    body = more.json()
    assert body["session_id"] == sid and body["new_turns"] == 2 and len(body["turns"]) == 4
    assert body["turns"][:2] == first["turns"]  # stored turns untouched
    assert body["usage"]["completion_tokens"] == sum(
        t["completion_tokens"] for t in body["turns"][2:]
    )
    third, second = body["turns"][2], body["turns"][1]
    assert third["prompt_tokens"] > second["prompt_tokens"] + second["completion_tokens"]
    assert third["cached_tokens"] >= second["prompt_tokens"] // 32 * 32 - 32  # prefix reused
    # /solve with session_id continues too (options kept: greedy, 16 tokens).
    again = api.post("/solve", json={"session_id": sid, "max_turns": 1}).json()
    assert len(again["turns"]) == 5 and again["turns"][4]["completion_tokens"] <= 16
    stored = api.get(f"/sessions/{sid}").json()
    assert stored["status"] == "done" and len(stored["turns"]) == 5
    assert stored["turns"] == again["turns"] and len(stored["messages"]) == 10


def test_session_delete(api: httpx.Client) -> None:
    sid = api.post("/solve", json={"question": "1 + 1?", "max_turns": 1, **GREEDY}).json()[
        "session_id"
    ]
    assert api.delete(f"/sessions/{sid}").status_code == 204
    gone = api.get(f"/sessions/{sid}")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "session_id"
    assert api.delete(f"/sessions/{sid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ('{"question": "x",', 400, None),  # malformed JSON
        ({"question": 5}, 400, "question"),
        ({"question": "   "}, 400, "question"),
        ({"question": "q", "max_turns": 0}, 400, "max_turns"),
        ({"question": "q", "max_turns": 11}, 400, "max_turns"),
        ({"question": "q", "max_tokens": 5000}, 400, "max_tokens"),
        ({"question": "q", "temperature": "hot"}, 400, "temperature"),
        ({"question": "q", "mode": "oracle"}, 400, "reference"),
        ({"question": "q", "grader": "nope"}, 400, "grader"),
        ({"question": "q", "unknown": 1}, 400, "unknown"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({}, 400, "question"),
        ({"session_id": "doesnotexist0"}, 404, "session_id"),
        ({"session_id": "doesnotexist0", "question": "q"}, 400, "question"),
    ],
)
def test_solve_rejects_bad_input_naming_the_problem(
    api: httpx.Client, body: object, status: int, param: str | None
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = api.post("/solve", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["param"] == param


def test_solve_rejects_prompt_longer_than_the_context(api: httpx.Client) -> None:
    response = api.post("/solve", json={"question": "word " * 6000, "max_turns": 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "question" and error["code"] == "context_length_exceeded"


def test_request_size_is_bounded(api: httpx.Client) -> None:
    big = json.dumps({"question": "a" * (2 << 20)}).encode()
    response = api.post("/solve", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it streams in
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    response = api.post("/solve", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_session_routes_answer_404(api: httpx.Client) -> None:
    for method, path in [
        ("GET", "/sessions/AAAAAAAAAAAAAAAAAAAAAA"),
        ("DELETE", "/sessions/AAAAAAAAAAAAAAAAAAAAAA"),
        ("POST", "/sessions/AAAAAAAAAAAAAAAAAAAAAA/turns"),
    ]:
        response = api.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "session_not_found"
