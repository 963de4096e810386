"""POST /solve and the session routes in-process (httpx ASGI transport, scripted engine).

The request → plan → response translation of the RISE API, in seconds; ``test_live_solve.py``
runs the same routes on the real engine and Redis.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.scripted_app import REPLIES, TurnScriptEngine, serve, sse_json


@pytest.fixture
def engine(tiny_tokenizer) -> TurnScriptEngine:
    return TurnScriptEngine(tiny_tokenizer)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"question": "x",', None),  # malformed JSON
        ({"question": 5}, "question"),
        ({"question": "   "}, "question"),
        ({"question": "q", "max_turns": 0}, "max_turns"),
        ({"question": "q", "max_turns": 11}, "max_turns"),
        ({"question": "q", "max_tokens": 5000}, "max_tokens"),
        ({"question": "q", "temperature": "hot"}, "temperature"),
        ({"question": "q", "mode": "oracle"}, "reference"),
        ({"question": "q", "mode": "best"}, "mode"),
        ({"question": "q", "grader": "nope"}, "grader"),
        ({"question": "q", "unknown": 1}, "unknown"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages.0.name"),
        ({}, "question"),
        ({"question": "q", "messages": [{"role": "user", "content": "x"}]}, "question"),
        ({"session_id": "doesnotexist0", "question": "q"}, "question"),
        ({"session_id": "doesnotexist0", "grader": "math"}, "grader"),
        ({"session_id": "bad id"}, "session_id"),
    ],
)
async def test_solve_rejects_bad_input_naming_the_field(
    engine: TurnScriptEngine, tmp_path: Path, body: object, param: str | None
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    async with serve(engine, tmp_path) as client:
        response = await client.post(
            "/solve", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert engine.requests == []  # refused before any engine work


async def test_solve_unknown_session_is_404_naming_session_id(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    async with serve(engine, tmp_path) as client:
        response = await client.post("/solve", json={"session_id": "doesnotexist0"})
        routes = [
            await client.get("/sessions/doesnotexist0"),
            await client.delete("/sessions/doesnotexist0"),
            await client.post("/sessions/doesnotexist0/turns", json={}),
        ]
    for answer in [response, *routes]:
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["param"] == "session_id" and error["code"] == "session_not_found"


async def test_solve_prompt_too_long_names_the_prompt_field(tiny_tokenizer, tmp_path: Path) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, max_model_len=64)
    async with serve(engine, tmp_path) as client:
        question = await client.post("/solve", json={"question": "word " * 100})
        chat = [{"role": "user", "content": "word " * 100}]
        messages = await client.post("/solve", json={"messages": chat})
    for response, param in ((question, "question"), (messages, "messages")):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == param and error["code"] == "context_length_exceeded"


async def test_solve_json_votes_over_every_turn(engine: TurnScriptEngine, tmp_path: Path) -> None:
    async with serve(engine, tmp_path) as client:
        response = await client.post("/solve", json={"question": "What is 2 + 2?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "vote" and body["model"] == "scripted"
    assert [t["answer"] for t in body["turns"]] == ["3", "4", "4", "5", "9"]  # default 5 turns
    assert [t["text"] for t in body["turns"]] == list(REPLIES)
    assert body["answer"] == "4" and body["vote"]["winner_turn"] == 2
    assert body["vote"]["counts"] == {"3": 1, "4": 2, "5": 1, "9": 1}
    assert body["stop_reason"] == "max_turns" and body["new_turns"] == 5
    turns = body["turns"]
    assert body["usage"]["completion_tokens"] == sum(t["completion_tokens"] for t in turns)
    assert body["usage"]["total_tokens"] == sum(
        t["prompt_tokens"] + t["completion_tokens"] for t in turns
    )
    first_prompt, sampling = engine.requests[0]
    assert "Solve the following math problem" in first_prompt and "What is 2 + 2?" in first_prompt
    assert "Please try again" in engine.requests[1][0]
    # Unset options take the plan's defaults (one default for /solve and /v1).
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (1.0, 1.0, 512)


@pytest.mark.parametrize(
    ("options", "answer", "turns", "stop_reason"),
    [
        ({"mode": "last"}, "9", 5, "max_turns"),
        ({"mode": "oracle", "reference": "4"}, "4", 2, "oracle"),
        ({"mode": "oracle", "reference": "7"}, "4", 5, "max_turns"),  # no correct turn: vote
        ({"stop_on_convergence": True}, "4", 3, "converged"),
        ({"max_turns": 2}, "4", 2, "max_turns"),  # tie 3 / 4: the later turn
    ],
)
async def test_solve_answer_rules_and_stop_rules(
    engine: TurnScriptEngine,
    tmp_path: Path,
    options: dict,
    answer: str,
    turns: int,
    stop_reason: str,
) -> None:
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/solve", json={"question": "q", **options})).json()
    assert body["answer"] == answer and len(body["turns"]) == turns
    assert body["stop_reason"] == stop_reason
    assert body["mode"] == options.get("mode", "vote")


async def test_solve_sampling_options_reach_the_engine(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    options = {"temperature": 0, "top_p": 0.5, "max_tokens": 4, "seed": 3, "max_turns": 2}
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/solve", json={"question": "q", **options})).json()
    samplings = [s for _, s in engine.requests]
    assert {(s.temperature, s.top_p, s.max_tokens) for s in samplings} == {(0.0, 0.5, 4)}
    assert len({s.seed for s in samplings}) == 2  # derived per turn from the request's seed
    assert all(
        t["completion_tokens"] == 4 and t["finish_reason"] == "length" for t in body["turns"]
    )


async def test_solve_messages_are_sent_as_given(engine: TurnScriptEngine, tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/solve", json={"messages": messages, "max_turns": 2})).json()
        session = (await client.get(f"/sessions/{body['session_id']}")).json()
    assert "Solve the following" not in engine.requests[0][0]
    assert "You are terse." in engine.requests[0][0]
    assert session["messages"][:2] == messages
    assert "Please try again" in session["messages"][3]["content"]
    assert session["question"] == "What is 2 + 2?" and len(session["turns"]) == 2


async def test_solve_stream_sends_session_tokens_turns_then_done(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    request = {"question": "q", "max_turns": 3, "stream": True}
    async with serve(engine, tmp_path) as client:
        response = await client.post("/solve", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_json(response.text)
    names = [name for name, _ in events]
    assert names[0] == "session" and names[-1] == "done" and names.count("turn") == 3
    assert set(names[1 : names.index("turn")]) == {"token"}
    done = events[-1][1]
    assert done["session_id"] == events[0][1]["session_id"] and done["answer"] == "4"
    for index, turn in enumerate(done["turns"]):
        streamed = "".join(d["text"] for n, d in events if n == "token" and d["turn"] == index)
        assert streamed == turn["text"] == REPLIES[index]
    assert [d["answer"] for n, d in events if n == "turn"] == ["3", "4", "4"]


async def test_solve_stream_errors_before_the_first_event_are_plain_http(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    async with serve(engine, tmp_path) as client:
        unknown = await client.post("/solve", json={"session_id": "doesnotexist0", "stream": True})
        too_many = await client.post(
            "/solve", json={"question": "q", "max_turns": 11, "stream": True}
        )
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "session_id"
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_turns"
    assert unknown.headers["content-type"] == "application/json"


async def test_session_continues_with_its_own_options(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    async with serve(engine, tmp_path) as client:
        first = (
            await client.post(
                "/solve", json={"question": "q", "max_turns": 2, "max_tokens": 64, "mode": "last"}
            )
        ).json()
        sid = first["session_id"]
        more = await client.post(f"/sessions/{sid}/turns", json={"max_turns": 2})
        assert more.status_code == 200, more.text
        body = more.json()
        # max_turns is the turns this request runs: 2 more on top of 2.
        assert body["new_turns"] == 2 and len(body["turns"]) == 4
        assert body["turns"][:2] == first["turns"] and body["mode"] == "last"
        assert body["usage"]["completion_tokens"] == sum(
            t["completion_tokens"] for t in body["turns"][2:]
        )
        # Continuing through /solve: one turn unless told, options kept, mode changeable.
        again = (await client.post("/solve", json={"session_id": sid, "mode": "vote"})).json()
        assert len(again["turns"]) == 5 and again["new_turns"] == 1
        assert again["mode"] == "vote" and again["answer"] == "4"
        stored = (await client.get(f"/sessions/{sid}")).json()
        assert stored["turns"] == again["turns"] and len(stored["messages"]) == 10
        assert stored["status"] == "done" and stored["mode"] == "vote"
        assert stored["options"] == {
            "mode": "vote",
            "temperature": 1.0,
            "top_p": 1.0,
            "max_tokens": 64,
            "seed": None,
            "stop": [],
            "stop_on_convergence": False,
            "context_window": None,
        }
        # The third request's turn continued the stored token ids: its prompt holds them all.
        assert engine.requests[-1][0].count("<|im_start|>assistant") == 5
        assert {s.max_tokens for _, s in engine.requests} == {64}
        assert (await client.delete(f"/sessions/{sid}")).status_code == 204
        assert (await client.get(f"/sessions/{sid}")).status_code == 404


async def test_session_continuation_with_oracle_needs_a_reference(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    async with serve(engine, tmp_path) as client:
        sid = (await client.post("/solve", json={"question": "q", "max_turns": 1})).json()[
            "session_id"
        ]
        refused = await client.post(f"/sessions/{sid}/turns", json={"mode": "oracle"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "reference"
        body = (
            await client.post(
                f"/sessions/{sid}/turns",
                json={"mode": "oracle", "reference": "4", "max_turns": 3},
            )
        ).json()
    assert body["stop_reason"] == "oracle" and len(body["turns"]) == 2
    assert body["answer"] == "4" and body["turns"][1]["outcome"] == "correct"


async def test_engine_failure_mid_stream_ends_with_an_error_event(
    tiny_tokenizer, tmp_path: Path
) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, fail_on_turn=1)
    async with serve(engine, tmp_path) as client:
        streamed = await client.post("/solve", json={"question": "q", "stream": True})
        plain = await client.post("/solve", json={"question": "q"})
        sid = sse_json(streamed.text)[0][1]["session_id"]
        stored = (await client.get(f"/sessions/{sid}")).json()
    events = sse_json(streamed.text)
    assert streamed.status_code == 200 and [n for n, _ in events].count("turn") == 1
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "engine_unavailable"
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "engine_unavailable"
    # The turn that finished is kept, the session marked as ended by an error.
    assert stored["stop_reason"] == "error" and len(stored["turns"]) == 1
    assert stored["answer"] == "3"


# -- session affinity: X-Session-Id ----------------------------------------------------------------


async def test_every_response_names_its_session_for_the_proxy(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    """``X-Session-Id`` on JSON and SSE responses, sessions and /v1; a wrong one back is a 400."""
    async with serve(engine, tmp_path) as client:
        solved = await client.post("/solve", json={"question": "2 + 2?", "max_turns": 1})
        session_id = solved.json()["session_id"]
        assert solved.headers["X-Session-Id"] == session_id
        streamed = await client.post(
            "/solve", json={"question": "2 + 2?", "max_turns": 1, "stream": True}
        )
        first = sse_json(streamed.text)[0]
        assert first[0] == "session"
        assert streamed.headers["X-Session-Id"] == first[1]["session_id"]
        # the client sends it back with the session's next turns (a proxy hashes on it)
        header = {"X-Session-Id": session_id}
        more = await client.post(f"/sessions/{session_id}/turns", json={}, headers=header)
        assert more.status_code == 200 and more.headers["X-Session-Id"] == session_id
        again = await client.post("/solve", json={"session_id": session_id}, headers=header)
        assert again.status_code == 200 and len(again.json()["turns"]) == 3
        shown = await client.get(f"/sessions/{session_id}")
        assert shown.headers["X-Session-Id"] == session_id
        wrong = {"X-Session-Id": "someothersession"}
        for response in (
            await client.post(f"/sessions/{session_id}/turns", json={}, headers=wrong),
            await client.post("/solve", json={"session_id": session_id}, headers=wrong),
        ):
            assert response.status_code == 400
            assert response.json()["error"]["param"] == "X-Session-Id"
        assert len((await client.get(f"/sessions/{session_id}")).json()["turns"]) == 3  # kept
        chat = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "2 + 2?"}], "n": 2},
        )
        ids = [c["rise"]["session_id"] for c in chat.json()["choices"]]
        root = chat.headers["X-Session-Id"]
        assert ids[0] == root and ids[1].startswith(f"{root}.") and len(set(ids)) == 2


async def test_a_conversation_keeps_one_root_across_requests(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    """New sessions go under the root the request names (the client's ``X-Session-Id``, else
    the proxy's ``X-Rise-Affinity``), so a proxy hashing the root keeps a chat on one replica."""
    chat_body = {"messages": [{"role": "user", "content": "2 + 2?"}]}
    async with serve(engine, tmp_path) as client:
        first = await client.post("/v1/chat/completions", json=chat_body)
        root = first.headers["X-Session-Id"]
        assert first.json()["choices"][0]["rise"]["session_id"] == root
        # the chat's next request sends the root back: a new session, under the same root
        second = await client.post(
            "/v1/chat/completions", json=chat_body, headers={"X-Session-Id": root}
        )
        second_id = second.json()["choices"][0]["rise"]["session_id"]
        assert second.headers["X-Session-Id"] == root and second_id.startswith(f"{root}.")
        # a full session id as the header means its root
        third = await client.post(
            "/solve", json={"question": "2 + 2?", "max_turns": 1},
            headers={"X-Session-Id": second_id},
        )  # fmt: skip
        assert third.json()["session_id"].startswith(f"{root}.")
        # a client may name its own conversation key; the suffix keeps the id unguessable
        own = await client.post(
            "/solve", json={"question": "2 + 2?", "max_turns": 1},
            headers={"X-Session-Id": "my-own-key-1"},
        )  # fmt: skip
        own_id = own.json()["session_id"]
        assert own_id.startswith("my-own-key-1.") and len(own_id) > len("my-own-key-1.") + 8
        more = await client.post(
            f"/sessions/{own_id}/turns", json={}, headers={"X-Session-Id": "my-own-key-1"}
        )
        assert more.status_code == 200 and more.headers["X-Session-Id"] == "my-own-key-1"
        # the proxy's routing key is the root of new sessions, and ignored by continuations
        routed = await client.post(
            "/solve", json={"question": "2 + 2?", "max_turns": 1},
            headers={"X-Rise-Affinity": "proxykey0123"},
        )  # fmt: skip
        assert routed.json()["session_id"].startswith("proxykey0123.")
        continued = await client.post(
            "/solve", json={"session_id": own_id}, headers={"X-Rise-Affinity": "proxykey0123"}
        )
        assert continued.status_code == 200 and continued.json()["session_id"] == own_id
        for header, value in (("X-Session-Id", "bad key!"), ("X-Rise-Affinity", "short")):
            bad = await client.post("/solve", json={"question": "2 + 2?"}, headers={header: value})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == header


# ---- feedback (issue 31) -----------------------------------------------------------------------

SLIPPED = ("12 x 6 = 62, so \\boxed{62}.", "12 x 6 = 72, so \\boxed{72}.")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"question": "q", "feedback": "http://evil.example/verify"}, "feedback"),
        ({"question": "q", "feedback": "nope"}, "feedback"),
        ({"question": "q", "feedback": "oracle"}, "reference"),
        ({"question": "q", "stop_on_correct": True}, "reference"),
    ],
)
async def test_solve_refuses_unknown_feedback_and_needs_a_reference_for_the_oracle(
    engine: TurnScriptEngine, tmp_path: Path, body: dict, param: str
) -> None:
    async with serve(engine, tmp_path) as client:
        response = await client.post("/solve", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert engine.requests == []


async def test_solve_with_calculator_feedback_names_the_slip_to_the_next_turn(
    tiny_tokenizer, tmp_path: Path
) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, SLIPPED)
    body = {"question": "12 bags of 6?", "max_turns": 2, "feedback": "calculator"}
    async with serve(engine, tmp_path) as client:
        first = (await client.post("/solve", json=body)).json()
        plain = (await client.post("/solve", json={**body, "feedback": "fixed"})).json()
        offered = (await client.get("/feedback")).json()
    one, two = first["turns"]
    assert one["feedback"]["provider"] == "calculator"
    assert (one["feedback"]["verdict"], one["feedback"]["slips"]) == (
        "incorrect",
        ["12 x 6 = 72, not 62"],
    )
    assert "Check your arithmetic: 12 x 6 = 72, not 62." in engine.requests[1][0]
    assert two["feedback"]["verdict"] == "unknown" and two["feedback"]["slips"] == []
    assert plain["turns"][0]["feedback"]["verdict"] == "unknown"
    assert "Check your arithmetic" not in engine.requests[3][0]  # fixed: RISE's prompt
    assert offered == {"feedback": ["fixed", "oracle", "calculator"], "default": "fixed",
                       "verifiers": []}  # fmt: skip


async def test_session_keeps_its_feedback_and_a_continuation_may_change_it(
    tiny_tokenizer, tmp_path: Path
) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, SLIPPED)
    async with serve(engine, tmp_path) as client:
        body = {"question": "12 bags of 6?", "max_turns": 1, "feedback": "calculator"}
        session = (await client.post("/solve", json=body)).json()["session_id"]
        more = await client.post(f"/sessions/{session}/turns", json={"max_turns": 1})
        other = await client.post(
            f"/sessions/{session}/turns", json={"max_turns": 1, "feedback": "fixed"}
        )
        stored = (await client.get(f"/sessions/{session}")).json()
    assert more.json()["turns"][-1]["feedback"]["provider"] == "calculator"
    assert other.json()["turns"][-1]["feedback"]["provider"] == "fixed"
    assert [t["feedback"]["provider"] for t in stored["turns"]] == [
        "calculator",
        "calculator",
        "fixed",
    ]


async def test_v1_takes_feedback_in_the_rise_extension(tiny_tokenizer, tmp_path: Path) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, SLIPPED)
    body = {
        "model": "rise-2/scripted",
        "messages": [{"role": "user", "content": "12 bags of 6?"}],
        "rise": {"feedback": "calculator"},
    }
    async with serve(engine, tmp_path) as client:
        reply = (await client.post("/v1/chat/completions", json=body)).json()
        bad = await client.post("/v1/chat/completions", json={**body, "rise": {"feedback": "nope"}})
    turns = reply["choices"][0]["rise"]["turns"]
    assert turns[0]["feedback"]["slips"] == ["12 x 6 = 72, not 62"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rise.feedback"
