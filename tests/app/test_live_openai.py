"""The official ``openai`` client, unchanged, against the live server: sync, async, streaming."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture
def client(live, helpers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=helpers.key_a, max_retries=0)


@pytest.fixture
def async_client(live, helpers) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=helpers.key_a, max_retries=0)


def served(client: openai.OpenAI) -> tuple[str, str]:
    names = [model.id for model in client.models.list()]
    plain = names[0]
    assert any(name.startswith("rise-") and name.endswith("/" + plain) for name in names)
    return plain, next(name for name in names if name != plain)


def test_openai_sync_plain_chat_is_one_turn(client: openai.OpenAI) -> None:
    plain, _ = served(client)
    response = client.chat.completions.create(
        model=plain, messages=QUESTION, max_tokens=12, temperature=0
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == plain
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    rise = choice.model_extra["rise"]
    assert len(rise["turns"]) == 1 and rise["turns"][0]["text"] == choice.message.content
    assert response.usage.completion_tokens == rise["turns"][0]["completion_tokens"]
    assert response.usage.prompt_tokens_details.cached_tokens >= 0


def test_openai_sync_rise_turns_through_prefix_and_extra_body(client: openai.OpenAI) -> None:
    plain, alias = served(client)
    response = client.chat.completions.create(
        model=f"rise-3/{plain}", messages=QUESTION, max_tokens=12, temperature=0, n=2
    )
    assert len(response.choices) == 2
    for choice in response.choices:
        rise = choice.model_extra["rise"]
        assert len(rise["turns"]) == 3 and rise["stop_reason"] == "max_turns"
        assert choice.message.content == rise["turns"][rise["chosen_turn"]]["text"]
    usage = response.usage
    turns = [t for c in response.choices for t in c.model_extra["rise"]["turns"]]
    assert usage.completion_tokens == sum(t["completion_tokens"] for t in turns)
    assert usage.prompt_tokens_details.cached_tokens > 0  # later turns reuse the prefix

    last = client.chat.completions.create(
        model=plain,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        extra_body={"rise": {"max_turns": 2, "mode": "last"}},
    )
    rise = last.choices[0].model_extra["rise"]
    assert len(rise["turns"]) == 2 and rise["chosen_turn"] == 1
    assert last.choices[0].message.content == rise["turns"][1]["text"]
    assert (
        client.chat.completions.create(model=alias, messages=QUESTION, max_tokens=4, temperature=0)
        .choices[0]
        .model_extra["rise"]["turns"]
    )


def test_openai_errors_map_to_client_exceptions(client: openai.OpenAI, live) -> None:
    plain, _ = served(client)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=plain, messages=QUESTION, max_tokens=10**6)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=plain, messages=QUESTION, extra_body={"rise": {"mode": "oracle"}}
        )
    stranger = openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


async def test_openai_async_and_streaming_match_the_plain_response(async_client) -> None:
    plain = (await async_client.models.list()).data[0].id
    args = {"model": plain, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    whole = await async_client.chat.completions.create(**args)
    stream = await async_client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same response
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens

    together = await asyncio.gather(*(async_client.chat.completions.create(**args) for _ in "ab"))
    assert all(r.choices[0].message.content for r in together)


async def test_openai_streaming_with_rise_turns(async_client) -> None:
    plain = (await async_client.models.list()).data[0].id
    stream = await async_client.chat.completions.create(
        model=f"rise-3/{plain}", messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    content, progress, final = [], [], None
    async for chunk in stream:
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        extra = choice.model_extra.get("rise") or {}
        if "turn" in extra:
            progress.append(extra["turn"])
        if choice.finish_reason:
            final = extra
    assert len(progress) == 3 and final is not None and len(final["turns"]) == 3
    assert "".join(content) == final["turns"][final["chosen_turn"]]["text"]


def test_openai_sync_streaming_ends_with_done(live, helpers) -> None:
    body = {
        "model": None,
        "messages": QUESTION,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
    }
    with (
        helpers.client() as api,
        api.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: {") for line in lines[:-1])


def test_v1_models_needs_a_key(live) -> None:
    assert httpx.get(f"{live.url}/v1/models").status_code == 401


def test_openai_sync_stream_shows_turn_1_live_before_turn_2(client: openai.OpenAI) -> None:
    """On the real engine over HTTP: turn 1's reasoning deltas, then its end, then turn 2."""
    _, rise = served(client)
    stream = client.chat.completions.create(
        model=rise, messages=QUESTION, max_tokens=16, temperature=0, stream=True,
        extra_body={"rise": {"max_turns": 2}},
    )  # fmt: skip
    events: list[tuple[str, str]] = []  # ("reasoning" | "turn_end" | "content", text), in order
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reasoning = getattr(choice.delta, "reasoning_content", None)
        if reasoning:
            events.append(("reasoning", reasoning))
        if choice.delta.content:
            events.append(("content", choice.delta.content))
        rise_extra = (choice.model_extra or {}).get("rise") or {}
        if "turn" in rise_extra:
            events.append(("turn_end", str(rise_extra["turn"]["index"])))
    kinds = [kind for kind, _ in events]
    first_end = events.index(("turn_end", "0"))
    turn2 = next(
        i for i, (k, text) in enumerate(events) if k == "reasoning" and "**Turn 2**" in text
    )
    assert kinds[:first_end] == ["reasoning"] * first_end and first_end >= 2  # live, in pieces
    assert first_end < turn2 < events.index(("turn_end", "1")) < kinds.index("content")
    text = "".join(t for k, t in events if k == "reasoning")
    response = client.chat.completions.create(
        model=rise, messages=QUESTION, max_tokens=16, temperature=0,
        extra_body={"rise": {"max_turns": 2}},
    )  # fmt: skip
    assert text.startswith("**Turn 1**") and "**Turn 2**" in text
    # greedy on CPU may differ between two runs (prefix cache): compare within one response
    choice = response.choices[0]
    rise_extra = choice.model_extra["rise"]  # type: ignore[index]
    turns = rise_extra["turns"]
    reasoning = choice.message.reasoning_content  # type: ignore[attr-defined]
    assert reasoning.startswith("**Turn 1**\n\n" + turns[0]["text"])
    assert reasoning.endswith(turns[1]["text"]) and "**Turn 2**" in reasoning
    assert choice.message.content == turns[rise_extra["chosen_turn"]]["text"]
