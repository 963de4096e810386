"""/v1/chat/completions and /v1/models in-process (httpx ASGI transport, scripted engine).

The OpenAI request → plan → response translation in seconds: ``rise-N[-mode]/`` model names,
the ``rise`` extra body, ``n``, JSON and SSE. ``test_live_openai.py`` runs the unchanged
``openai`` client against the live server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.scripted_app import REPLIES, TurnScriptEngine, serve, sse_json

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def engine(tiny_tokenizer) -> TurnScriptEngine:
    return TurnScriptEngine(tiny_tokenizer)


async def test_models_lists_plain_and_rise_names_with_the_prompts(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    async with serve(engine, tmp_path, default_max_turns=4) as client:
        body = (await client.get("/v1/models")).json()
    assert [card["id"] for card in body["data"]] == ["scripted", "rise-4/scripted"]
    prompts = body["data"][0]["prompts"]
    assert prompts["source"] == "default" and "{question}" in prompts["introspection"]
    assert prompts["demonstrations"] == [] and prompts["system"] is None


async def test_plain_model_is_one_turn(engine: TurnScriptEngine, tmp_path: Path) -> None:
    async with serve(engine, tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "scripted", "messages": QUESTION}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "scripted"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLIES[0]}
    assert choice["finish_reason"] == "stop" and choice["rise"]["chosen_turn"] == 0
    assert len(choice["rise"]["turns"]) == 1 and choice["rise"]["answer"] == "3"
    usage = body["usage"]
    assert usage["completion_tokens"] == choice["rise"]["turns"][0]["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    prompt, sampling = engine.requests[0]
    assert "Solve the following" not in prompt  # the messages as given
    # The same defaults as /solve (512 tokens per turn), not RISE_TOKEN_LIMIT.
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (1.0, 1.0, 512)


@pytest.mark.parametrize(
    ("model", "rise", "turns", "chosen", "answer"),
    [
        ("rise-5/scripted", None, 5, 2, "4"),  # vote: the winner's latest turn
        ("rise-5-last/scripted", None, 5, 4, "9"),
        ("rise-3-vote/scripted", None, 3, 2, "4"),
        ("scripted", {"max_turns": 2, "mode": "last"}, 2, 1, "4"),
        ("rise-5/scripted", {"max_turns": 3}, 3, 2, "4"),  # the extra body overrides the prefix
        ("rise-5-last/scripted", {"mode": "vote"}, 5, 2, "4"),
        ("scripted", {"max_turns": 5, "mode": "oracle", "reference": "4"}, 2, 1, "4"),
        ("scripted", {"max_turns": 5, "mode": "oracle", "reference": "7"}, 5, 2, "4"),
        ("scripted", {"max_turns": 5, "stop_on_convergence": True}, 3, 2, "4"),
        (None, {"max_turns": 4}, 4, 2, "4"),
    ],
)
async def test_rise_turns_from_the_model_name_and_the_extra_body(
    engine: TurnScriptEngine,
    tmp_path: Path,
    model: str | None,
    rise: dict | None,
    turns: int,
    chosen: int,
    answer: str,
) -> None:
    request = {"model": model, "messages": QUESTION, **({"rise": rise} if rise else {})}
    async with serve(engine, tmp_path) as client:
        response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == (model or "scripted")
    rise_choice = body["choices"][0]["rise"]
    assert len(rise_choice["turns"]) == turns
    assert rise_choice["chosen_turn"] == chosen and rise_choice["answer"] == answer
    # The message is the chosen turn's text, so it always carries the answer reported.
    assert body["choices"][0]["message"]["content"] == REPLIES[chosen]


async def test_n_choices_are_independent_sessions(engine: TurnScriptEngine, tmp_path: Path) -> None:
    request = {"model": "rise-2/scripted", "messages": QUESTION, "n": 3, "seed": 5}
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/v1/chat/completions", json=request)).json()
        sessions = [c["rise"]["session_id"] for c in body["choices"]]
        stored = [(await client.get(f"/sessions/{sid}")).json() for sid in sessions]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2] and len(set(sessions)) == 3
    assert all(len(s["turns"]) == 2 for s in stored)
    assert len({s.seed for _, s in engine.requests}) == 6  # per choice and turn
    turns = [t for c in body["choices"] for t in c["rise"]["turns"]]
    assert body["usage"]["completion_tokens"] == sum(t["completion_tokens"] for t in turns)


async def test_session_from_v1_continues_through_solve(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    request = {
        "model": "rise-2/scripted",
        "messages": QUESTION,
        "max_completion_tokens": 64,
        "rise": {"mode": "last"},
    }
    async with serve(engine, tmp_path) as client:
        first = (await client.post("/v1/chat/completions", json=request)).json()
        sid = first["choices"][0]["rise"]["session_id"]
        more = (await client.post("/solve", json={"session_id": sid, "max_turns": 2})).json()
    assert len(more["turns"]) == 4 and more["new_turns"] == 2
    assert more["mode"] == "last" and more["answer"] == "5"
    assert {s.max_tokens for _, s in engine.requests} == {64}


@pytest.mark.parametrize(
    ("request_body", "status", "param"),
    [
        ({"model": "other"}, 404, "model"),
        ({"model": "rise-3/other"}, 404, "model"),
        ({"max_tokens": 10**6}, 400, "max_tokens"),
        ({"max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ({"model": "rise-50/scripted"}, 400, "model"),
        ({"rise": {"max_turns": 50}}, 400, "rise.max_turns"),
        ({"rise": {"max_turns": 0}}, 400, "rise.max_turns"),
        ({"rise": {"mode": "oracle"}}, 400, "rise.reference"),
        ({"rise": {"mode": "best"}}, 400, "rise.mode"),
        ({"rise": {"unknown": 1}}, 400, "rise.unknown"),
        ({"n": 9}, 400, "n"),
        ({"n": 0}, 400, "n"),
        ({"temperature": 3}, 400, "temperature"),
        ({"tools": [{"type": "function"}]}, 400, "tools"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages.0"),
    ],
)
async def test_bad_requests_name_the_field(
    engine: TurnScriptEngine, tmp_path: Path, request_body: dict, status: int, param: str
) -> None:
    async with serve(engine, tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions", json={"messages": QUESTION, **request_body}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert engine.requests == []


async def test_unknown_fields_are_ignored_and_developer_is_system(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *QUESTION]
    request = {"messages": messages, "user": "someone", "frequency_penalty": 0, "stop": "\n\n"}
    async with serve(engine, tmp_path) as client:
        response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    prompt, sampling = engine.requests[0]
    assert "<|im_start|>system\nBe brief." in prompt and sampling.stop == ("\n\n",)


async def test_plain_stream_sends_tokens_finish_usage_and_done(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    request = {
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with serve(engine, tmp_path) as client:
        response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in sse_json(response.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    choices = [c["choices"][0] for c in chunks[:-1]]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["delta"].get("content") or "" for c in choices)
    assert content == REPLIES[0]
    assert len(choices) > 3  # token by token
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert choices[-1]["rise"]["answer"] == "3"


async def test_rise_stream_sends_turn_progress_then_the_chosen_response(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    request = {"model": "rise-3/scripted", "messages": QUESTION, "stream": True, "n": 2}
    async with serve(engine, tmp_path) as client:
        response = await client.post("/v1/chat/completions", json=request)
    events = [data for _, data in sse_json(response.text)]
    assert events[-1] == "[DONE]" and all("usage" not in c for c in events[:-1])
    for index in (0, 1):
        choices = [c["choices"][0] for c in events[:-1] if c["choices"][0]["index"] == index]
        progress = [c["rise"]["turn"] for c in choices if "turn" in c.get("rise", {})]
        assert [t["answer"] for t in progress] == ["3", "4", "4"]
        content = "".join(c["delta"].get("content") or "" for c in choices)
        final = choices[-1]
        assert final["finish_reason"] == "stop" and final["rise"]["chosen_turn"] == 2
        assert content == REPLIES[2] == final["rise"]["turns"][2]["text"]


async def test_engine_failure_mid_stream_is_a_final_error_chunk(
    tiny_tokenizer, tmp_path: Path
) -> None:
    engine = TurnScriptEngine(tiny_tokenizer, fail_on_turn=0)
    async with serve(engine, tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions", json={"messages": QUESTION, "stream": True}
        )
    events = [data for _, data in sse_json(response.text)]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["error"]["code"] == "engine_unavailable" and events[-1] == "[DONE]"


# -- turns as reasoning, token ids ----------------------------------------------------------------


def openai_client(client):
    """The official ``openai`` client on the in-process app (its httpx client, ASGI transport)."""
    import openai

    return openai.AsyncOpenAI(base_url="http://app/v1", api_key="x", http_client=client)


async def test_turns_stream_as_reasoning_in_the_openai_client(
    engine: TurnScriptEngine, tmp_path: Path
) -> None:
    """Turn by turn as ``delta.reasoning_content`` (labelled, introspection between), then the
    chosen turn as ``content``; the non-streamed message carries the same reasoning text."""
    async with serve(engine, tmp_path) as http:
        client = openai_client(http)
        stream = await client.chat.completions.create(
            model="rise-3/scripted", messages=QUESTION, stream=True
        )
        reasoning, content = [], []
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                reasoning.append(delta.reasoning_content)
            if delta.content:
                content.append(delta.content)
        whole = await client.chat.completions.create(model="rise-3/scripted", messages=QUESTION)
    text = "".join(reasoning)
    assert text.startswith("**Turn 1**\n\n" + REPLIES[0])
    # turn 1 arrives as many deltas, all of them before turn 2's heading
    turn2 = next(i for i, piece in enumerate(reasoning) if "**Turn 2**" in piece)
    assert turn2 > 3 and "".join(reasoning[:turn2]) == "**Turn 1**\n\n" + REPLIES[0]
    introspection = engine.requests[1][0]  # the prompt of turn 2 ends with the introspection
    heading = reasoning[turn2]
    assert heading.startswith("\n\n> ") and "**Turn 2**\n\n" in heading
    quoted = heading.split("**Turn 2**")[0].strip().splitlines()[0][2:]
    assert quoted and quoted in introspection
    assert text.count("**Turn") == 3 and text.endswith(REPLIES[2])
    assert "".join(content) == REPLIES[2]  # the vote's turn, once all turns are done
    message = whole.choices[0].message
    assert message.content == REPLIES[2]
    assert message.reasoning_content == text  # type: ignore[attr-defined]


async def test_one_turn_stays_a_plain_chat_model(engine: TurnScriptEngine, tmp_path: Path) -> None:
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/v1/chat/completions", json={"messages": QUESTION})).json()
        streamed = await client.post(
            "/v1/chat/completions", json={"messages": QUESTION, "stream": True}
        )
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert "prompt_token_ids" not in body and "token_ids" not in body["choices"][0]
    assert "prompt_token_ids" not in body["choices"][0]["rise"]["turns"][0]
    chunks = [d for _, d in sse_json(streamed.text)][:-1]
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in chunks if c["choices"])


async def test_return_token_ids(engine: TurnScriptEngine, tiny_tokenizer, tmp_path: Path) -> None:
    """vLLM's ``return_token_ids``: the exact ids the engine saw and produced, JSON and SSE."""
    request = {"model": "rise-2/scripted", "messages": QUESTION, "return_token_ids": True}
    async with serve(engine, tmp_path) as client:
        body = (await client.post("/v1/chat/completions", json=request)).json()
        streamed = await client.post("/v1/chat/completions", json={**request, "stream": True})
        solved = (
            await client.post("/solve", json={"question": "2 + 2?", "return_token_ids": True})
        ).json()
        plain_solve = (await client.post("/solve", json={"question": "2 + 2?"})).json()
    (choice,) = body["choices"]
    turns = choice["rise"]["turns"]
    prompts = [tiny_tokenizer.decode(t["prompt_token_ids"]) for t in turns]
    assert prompts == [prompt for prompt, _ in engine.requests[:2]]  # what the engine was sent
    for turn in turns:
        assert tiny_tokenizer.decode(turn["token_ids"], skip_special_tokens=True) == turn["text"]
        assert len(turn["token_ids"]) == turn["completion_tokens"]
    assert body["prompt_token_ids"] == turns[0]["prompt_token_ids"]
    assert choice["token_ids"] == turns[choice["rise"]["chosen_turn"]]["token_ids"]
    # streamed: each delta's ids add up to the turn's; the finish chunk has the prompt ids
    chunks = [d for _, d in sse_json(streamed.text)][:-1]
    deltas = [c["choices"][0] for c in chunks if c["choices"][0].get("token_ids")]
    streamed_ids = [i for d in deltas if "reasoning_content" in d["delta"] for i in d["token_ids"]]
    assert streamed_ids == turns[0]["token_ids"] + turns[1]["token_ids"]
    assert chunks[-1]["prompt_token_ids"] == body["prompt_token_ids"]
    assert all("prompt_token_ids" in t and "token_ids" in t for t in solved["turns"])
    assert all("token_ids" not in t for t in plain_solve["turns"])
