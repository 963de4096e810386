"""The service in-process on a scripted engine: fast tests of the API translations.

No vLLM, no Redis, no server: ``create_app`` with an injected engine that answers turn k of any
conversation with ``REPLIES[k]``, driven through httpx's ASGI transport (the lifespan runs as
the server would run it). The live tests cover the same routes on the real engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from app.settings import Settings
from rise.engine.base import EngineError, GenerationChunk, SamplingConfig
from tests.scripted_engine import ScriptedEngineBase

# Turn answers 3, 4, 4, 5, 9: the vote is 4 (latest at turn 2), the last turn says 9.
REPLIES = (
    "The answer is \\boxed{3}.",
    "Let me check: \\boxed{4}.",
    "Again \\boxed{4}.",
    "Or \\boxed{5}.",
    "Finally \\boxed{9}.",
)


class TurnScriptEngine(ScriptedEngineBase):
    """Answers turn k (read off the prompt) with ``script[k]``; records every request.

    ``fail_on_turn``: that turn fails after its first token, as an engine that died would.
    """

    def __init__(
        self,
        tokenizer,
        script: Sequence[str] = REPLIES,
        max_model_len: int = 100_000,
        fail_on_turn: int | None = None,
    ) -> None:
        super().__init__(tokenizer)
        self.script = list(script)
        self.max_model_len = max_model_len
        self.fail_on_turn = fail_on_turn
        self.requests: list[tuple[str, SamplingConfig]] = []  # (decoded prompt, sampling)

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        prompt = self.tokenizer.decode(list(prompt_ids))
        self.requests.append((prompt, sampling))
        turn = prompt.count("<|im_start|>assistant") - 1
        ids = self.reply_ids(self.script[turn % len(self.script)])
        cut = len(ids) > sampling.max_tokens
        ids = ids[: sampling.max_tokens]
        for i, token in enumerate(ids):
            await asyncio.sleep(0)
            last = i == len(ids) - 1
            text = self.tokenizer.decode([token], skip_special_tokens=True)
            reason = ("length" if cut else "stop") if last else None
            yield GenerationChunk([token], text, last, reason, 0)
            if turn == self.fail_on_turn:
                raise EngineError("the engine core died")


@asynccontextmanager
async def serve(
    engine: TurnScriptEngine, data_dir: Path, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app on ``engine``, its lifespan running (memory sessions)."""
    config = Settings(_env_file=None, data_dir=data_dir, **settings)  # type: ignore[call-arg]
    app = create_app(config, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app", timeout=30) as client,
    ):
        yield client


def sse_events(body: str) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a whole Server-Sent Events body."""
    for block in body.split("\n\n"):
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            yield event, "\n".join(data)


def sse_json(body: str) -> list[tuple[str, Any]]:
    """The events with their data parsed (``[DONE]`` kept as the string)."""
    return [(e, d if d == "[DONE]" else json.loads(d)) for e, d in sse_events(body)]
