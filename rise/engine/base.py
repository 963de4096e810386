"""The engine contract the turn loop runs on: token ids in, token deltas out.

Kept tiny on purpose (after vLLM's ``EngineClient``): ``generate`` is an async iterator that
aborts its own request when cancelled, ``abort`` stops a request by id, ``check_health`` raises
when the engine cannot serve. The loop and the service depend on this protocol only, so unit
tests can drive the loop with a scripted engine while integration tests use the real one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingConfig:
    """Per-request sampling; ``seed`` is honoured where the backend supports it (GPU)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def derived(self, *parts: object) -> SamplingConfig:
        """This config with its seed replaced by one derived from ``parts`` (None stays None).

        Parallel episodes and later turns must not reuse one seed: on GPU, n choices of one
        prompt with the same seed would be n copies of one sample.
        """
        return self if self.seed is None else replace(self, seed=derive_seed(self.seed, *parts))


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one request, e.g. (seed, problem id, turn, candidate).

    A hash rather than arithmetic, so neighbouring problems or candidates never share a stream.
    """
    key = json.dumps([seed, *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def affinity_rank(key: str, size: int) -> int:
    """The rank in ``range(size)`` that ``key`` (a session root) is pinned to.

    A hash of the key's bytes, not Python's ``hash`` (salted per process), so every replica and
    every restart pins a session to the same data-parallel rank, where its prefix is cached.
    """
    if size < 1:
        raise ValueError("size must be >= 1")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


@dataclass(frozen=True)
class GenerationChunk:
    """New tokens since the previous chunk of the same request."""

    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" on the last chunk
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (known once scheduled)
    # Submit -> first token, as the engine measured it; set on the last chunk of an unstreamed
    # request, where the caller saw no earlier chunk to time it by.
    first_token_s: float | None = None


class EngineError(RuntimeError):
    """The engine failed or is not running; the request may be retried elsewhere."""


class PromptTooLongError(ValueError):
    """A prompt does not fit the model's context window with room for one new token."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt is {prompt_tokens} tokens; the model's context window is {max_model_len}"
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


@runtime_checkable
class Engine(Protocol):
    """What the RISE loop needs from an inference engine."""

    model_name: str
    tokenizer: Any
    max_model_len: int

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream ``prompt_ids``'s continuation; ``affinity`` (a session root) keeps the
        requests of one conversation on one engine rank, where its prefix is cached.

        ``stream=False``: the caller wants only the whole output, and the engine may deliver it
        as one chunk (no per-token work on the caller's event loop).
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not finished."""
        ...

    def metrics_registry(self) -> Any | None:
        """The engine's own Prometheus registry (vLLM's ``vllm:*`` series), or None."""
        ...

    async def close(self) -> None: ...


ENGINE_COUNTERS = {
    "generated_tokens": "vllm:generation_tokens",
    "drafts": "vllm:spec_decode_num_drafts",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens",
}
"""What :func:`engine_counters` reads from vLLM's own counters: tokens generated, and how much
n-gram speculation drafted (requests x steps that drafted, tokens drafted, tokens accepted)."""


def engine_counters(engine: Engine) -> dict[str, float]:
    """The engine's :data:`ENGINE_COUNTERS` so far (summed over its series); empty for an
    engine without vLLM's registry. Differences over a stage say how much of it speculated."""
    registry = engine.metrics_registry()
    if registry is None:
        return {}
    totals = dict.fromkeys(ENGINE_COUNTERS, 0.0)
    for metric in registry.collect():
        for key, family in ENGINE_COUNTERS.items():
            if metric.name == family:
                totals[key] += sum(s.value for s in metric.samples if s.name == family + "_total")
    return totals
