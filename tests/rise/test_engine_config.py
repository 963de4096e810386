"""Engine settings → vLLM arguments, per device; the per-request seed path (GPU only); the
engine's place in the dependency rules of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from rise.engine import EngineSettings, SamplingConfig
from rise.engine.cpu import (
    CPU_SPECULATIVE_TOKENS,
    IN_CORE_EXECUTOR,
    configure_cpu_environment,
    cpp_compiler,
    cpu_environment,
    cpu_flags,
    eager_choice,
    engine_preload,
    intel_openmp,
    preloaded,
)
from rise.engine.models import ModelUnavailableError, cache_dir_for, prepare_model
from rise.engine.vllm_engine import engine_layout, sampling_params


def test_engine_layout_cpu_uses_fp32_eager_and_kv_bytes(tmp_path: Path) -> None:
    settings = EngineSettings(model="m", kv_cache_gib=0.5, block_size=32, data_dir=tmp_path)
    layout = engine_layout(settings, tmp_path, gpu=False)
    assert layout.kwargs["dtype"] == "float32"
    assert layout.kwargs["enforce_eager"] is True
    assert layout.kwargs["kv_cache_memory_bytes"] == 1 << 29
    assert layout.kwargs["enable_prefix_caching"] is True
    assert layout.kwargs["block_size"] == 32
    assert "gpu_memory_utilization" not in layout.kwargs
    assert layout.per_request_seed is True  # with rise's vLLM plugin (the default)


def test_engine_layout_compiles_where_it_can_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, the CPU engine compiles when a C++ compiler was found and runs eager without one;
    GPUs compile; RISE_ENFORCE_EAGER wins either way. Each choice carries its reason."""
    monkeypatch.delenv("RISE_ENFORCE_EAGER", raising=False)  # tests/conftest.py pins it
    default = EngineSettings(model="m", data_dir=tmp_path)
    compiled = engine_layout(default, tmp_path, gpu=False, compiler="/usr/bin/g++")
    assert compiled.kwargs["enforce_eager"] is False
    assert compiled.eager_reason == "CPU with a C++ compiler (/usr/bin/g++)"
    without = engine_layout(default, tmp_path, gpu=False, compiler=None)
    assert without.kwargs["enforce_eager"] is True
    assert "without a C++ compiler and Python headers" in without.eager_reason
    assert engine_layout(default, tmp_path, gpu=True).kwargs["enforce_eager"] is False
    monkeypatch.setenv("RISE_ENFORCE_EAGER", "true")
    told = engine_layout(EngineSettings(model="m"), tmp_path, gpu=False, compiler="/usr/bin/g++")
    assert (told.kwargs["enforce_eager"], told.eager_reason) == (True, "set")
    assert eager_choice(False, gpu=False, compiler=None) == (False, "set")


def test_cpp_compiler_follows_cxx_and_needs_python_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiler = tmp_path / "my-c++"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    assert cpp_compiler() == str(compiler)
    monkeypatch.setenv("CXX", str(tmp_path / "absent"))
    assert cpp_compiler() is None
    monkeypatch.setenv("CXX", str(compiler))
    include = tmp_path / "include"  # a Python without its headers: the kernels cannot build
    include.mkdir()
    monkeypatch.setattr("sysconfig.get_path", lambda name, *args, **kwargs: str(include))
    assert cpp_compiler() is None


def test_engine_layout_cpu_worker_runs_in_the_engine_core(tmp_path: Path) -> None:
    """vLLM-CPU rewrites "uni" to its multiprocess executor, so the single-process executor is
    named by its qualified name, which vLLM resolves to the class; GPUs, tensor parallelism and
    the setting turned off keep vLLM's own choice."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    default = EngineSettings(model="m", data_dir=tmp_path)
    backend = engine_layout(default, tmp_path, gpu=False).kwargs["distributed_executor_backend"]
    assert backend == IN_CORE_EXECUTOR != "uni"
    assert resolve_obj_by_qualname(backend) is UniProcExecutor
    assert "distributed_executor_backend" not in engine_layout(default, tmp_path, gpu=True).kwargs
    for changed in ({"cpu_worker_in_engine_core": False}, {"tensor_parallel_size": 2}):
        settings = EngineSettings(model="m", data_dir=tmp_path, **changed)
        kwargs = engine_layout(settings, tmp_path, gpu=False).kwargs
        assert "distributed_executor_backend" not in kwargs, changed


def test_engine_layout_speculation_is_ngram_prompt_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = EngineSettings(model="m", data_dir=tmp_path)
    cpu = engine_layout(default, tmp_path, gpu=False).kwargs["speculative_config"]
    assert cpu["num_speculative_tokens"] == CPU_SPECULATIVE_TOKENS > 0  # on by default on CPU
    described = EngineSettings.model_fields["speculative_tokens"].description or ""
    assert f"unset = {CPU_SPECULATIVE_TOKENS} on CPU" in described  # the documented default
    assert "speculative_config" not in engine_layout(default, tmp_path, gpu=True).kwargs
    monkeypatch.setenv("RISE_SPECULATIVE_TOKENS", "0")
    off = engine_layout(EngineSettings(model="m", data_dir=tmp_path), tmp_path, gpu=False)
    assert "speculative_config" not in off.kwargs
    monkeypatch.setenv("RISE_SPECULATIVE_TOKENS", "3")
    layout = engine_layout(EngineSettings(model="m", data_dir=tmp_path), tmp_path, gpu=False)
    assert layout.kwargs["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 4,
        # off above 8 running sequences (of max_num_seqs 64): vLLM's dynamic schedule
        "num_speculative_tokens_per_batch_size": [(1, 8, 3), (9, 9, 0)],
    }
    monkeypatch.setenv("RISE_SPECULATIVE_MAX_BATCH", "64")
    layout = engine_layout(EngineSettings(model="m", data_dir=tmp_path), tmp_path, gpu=False)
    assert "num_speculative_tokens_per_batch_size" not in layout.kwargs["speculative_config"]
    with pytest.raises(ValueError, match="speculative_ngram"):
        EngineSettings(model="m", speculative_tokens=3, speculative_ngram=1)


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        (frozenset({"avx2", "fma"}), "float32"),
        (frozenset({"avx512f", "avx512_bf16"}), "bfloat16"),
        (frozenset({"avx512f", "amx_tile", "amx_bf16"}), "bfloat16"),
    ],
)
def test_auto_dtype_on_cpu_follows_native_bf16(flags, dtype, tmp_path: Path) -> None:
    layout = engine_layout(EngineSettings(), tmp_path, gpu=False, flags=flags)
    assert layout.kwargs["dtype"] == dtype
    assert layout.dtype_reason.startswith("CPU with ") == (dtype == "bfloat16")
    # a dtype that is set is kept, whatever the CPU
    fixed = engine_layout(EngineSettings(dtype="float32"), tmp_path, gpu=False, flags=flags)
    assert (fixed.kwargs["dtype"], fixed.dtype_reason) == ("float32", "set")


def test_cpu_flags_reads_this_machines_cpuinfo() -> None:
    flags = cpu_flags()
    if Path("/proc/cpuinfo").exists():
        assert "fpu" in flags or "sse2" in flags or "neon" in flags or "asimd" in flags, flags
    else:
        assert flags == frozenset()


def test_engine_layout_gpu_uses_bf16_graphs_and_memory_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RISE_ENFORCE_EAGER", raising=False)  # tests/conftest.py pins it
    settings = EngineSettings(tensor_parallel_size=2, gpu_memory_utilization=0.8)
    layout = engine_layout(settings, tmp_path, gpu=True)
    assert layout.kwargs["dtype"] == "bfloat16"
    assert layout.kwargs["enforce_eager"] is False
    assert layout.kwargs["gpu_memory_utilization"] == 0.8
    assert layout.kwargs["tensor_parallel_size"] == 2
    assert "kv_cache_memory_bytes" not in layout.kwargs
    assert layout.per_request_seed is True


def test_sampling_params_keep_the_seed_or_refuse_it() -> None:
    sampling = SamplingConfig(temperature=0.8, top_p=0.9, max_tokens=64, seed=7, stop=("END",))
    params = sampling_params(sampling, max_tokens=32, per_request_seed=True)
    assert params.seed == 7 and params.max_tokens == 32 and params.stop == ["END"]
    assert params.temperature == 0.8 and params.top_p == 0.9
    with pytest.raises(ValueError, match="seed"):  # never dropped silently
        sampling_params(sampling, max_tokens=32, per_request_seed=False)
    unseeded = SamplingConfig(temperature=0.8, max_tokens=64)
    assert sampling_params(unseeded, max_tokens=32, per_request_seed=False).seed is None


def test_cpu_engine_without_rises_vllm_plugin_neither_speculates_nor_takes_seeds(
    tmp_path: Path,
) -> None:
    """vLLM-CPU's speculative sampling is wrong and seeded requests crash it without
    rise/engine/vllm_plugin.py: an engine whose vLLM will not load the plugin turns both off,
    even when speculation is asked for, and says why; GPUs are unaffected."""
    asked = EngineSettings(model="m", data_dir=tmp_path, speculative_tokens=4)
    plain = engine_layout(asked, tmp_path, gpu=False, cpu_sampling_corrected=False)
    assert "speculative_config" not in plain.kwargs and plain.per_request_seed is False
    assert "plugin" in plain.speculation_reason
    corrected = engine_layout(asked, tmp_path, gpu=False)
    assert corrected.kwargs["speculative_config"]["num_speculative_tokens"] == 4
    assert corrected.per_request_seed is True and corrected.speculation_reason == "set"
    gpu = engine_layout(asked, tmp_path, gpu=True, cpu_sampling_corrected=False)
    assert gpu.per_request_seed is True and "speculative_config" in gpu.kwargs


def test_vllm_plugin_enabled_follows_vllm_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin is installed with the package (pyproject.toml's entry point); VLLM_PLUGINS,
    vLLM's allowlist, can leave it out."""
    from rise.engine import vllm_plugin

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert vllm_plugin.enabled()
    monkeypatch.setenv("VLLM_PLUGINS", "")
    assert not vllm_plugin.enabled()
    monkeypatch.setenv("VLLM_PLUGINS", f"other,{vllm_plugin.PLUGIN_NAME}")
    assert vllm_plugin.enabled()


def test_engine_settings_read_rise_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISE_MODEL", "/models/x")
    monkeypatch.setenv("RISE_MAX_MODEL_LEN", "2048")
    settings = EngineSettings()
    assert settings.model == "/models/x" and settings.max_model_len == 2048


def test_configure_cpu_environment_respects_existing_values(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    configure_cpu_environment(EngineSettings())
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_cpu_environment_threads_and_compile_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpu_environment(EngineSettings(data_dir=tmp_path)) == {
        "OMP_NUM_THREADS": "6",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # vLLM's AOT cache cannot load a CPU graph back; Inductor's cache, in the data dir, can
        "VLLM_USE_AOT_COMPILE": "0",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torchinductor"),
    }
    assert cpu_environment(EngineSettings(cpu_threads=2))["OMP_NUM_THREADS"] == "2"


def test_prepare_model_uses_local_folders_and_refuses_unknown(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "local"
    folder.mkdir()
    with pytest.raises(ModelUnavailableError, match=r"config\.json"):
        prepare_model(str(folder), tmp_path)
    (folder / "config.json").write_text("{}")
    assert prepare_model(str(folder), tmp_path) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        prepare_model("someone/not-bundled", tmp_path)
    assert cache_dir_for("default", tmp_path) == cache_dir_for(
        "HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path
    )


REPO = Path(__file__).resolve().parents[2]


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each ``.py`` file under ``package`` imports (read, not executed)."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


def test_the_engine_knows_no_prompts_and_rise_knows_no_callers() -> None:
    """rise/engine imports nothing of rise but itself; rise/ imports neither app nor rise_train."""
    for path, names in _imported_modules("rise/engine").items():
        foreign = {n for n in names if n.startswith("rise.") and not n.startswith("rise.engine")}
        assert not foreign, f"{path} imports {sorted(foreign)}"
    for path, names in _imported_modules("rise").items():
        callers = {n for n in names if n.split(".")[0] in ("app", "rise_train", "tests")}
        assert not callers, f"{path} imports {sorted(callers)}"


def test_preloaded_scopes_ld_preload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The libraries are preloaded only inside the block (the engine's start), before what the
    user preloads, and an LD_PRELOAD that already names an OpenMP library wins."""
    library = tmp_path / "libiomp5.so"
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with preloaded((library,)):
        assert os.environ["LD_PRELOAD"] == str(library)
    assert "LD_PRELOAD" not in os.environ
    monkeypatch.setenv("LD_PRELOAD", "/lib/libjemalloc.so")
    with preloaded((library,)):
        assert os.environ["LD_PRELOAD"] == f"{library}:/lib/libjemalloc.so"
    assert os.environ["LD_PRELOAD"] == "/lib/libjemalloc.so"
    monkeypatch.setenv("LD_PRELOAD", "/lib/libgomp.so")
    with preloaded((library,)), preloaded(()):
        assert os.environ["LD_PRELOAD"] == "/lib/libgomp.so"
    found = intel_openmp()
    assert found is None or found.name == "libiomp5.so"


def test_engine_preload_follows_the_settings() -> None:
    """Intel OpenMP (on by default) where installed; nothing on GPU or with the setting off."""
    iomp = intel_openmp()
    assert engine_preload(EngineSettings(), gpu=False) == tuple(p for p in (iomp,) if p)
    assert engine_preload(EngineSettings(), gpu=True) == ()
    assert engine_preload(EngineSettings(cpu_preload_iomp=False), gpu=False) == ()


def test_engine_counters_sum_vllms_series() -> None:
    """What a stage records of the engine: vLLM's counters, summed over their label sets."""
    from prometheus_client import CollectorRegistry, Counter

    from rise.engine.base import engine_counters

    registry = CollectorRegistry()
    generated = Counter("vllm:generation_tokens", "g", ["engine"], registry=registry)
    drafts = Counter("vllm:spec_decode_num_drafts", "d", ["engine"], registry=registry)
    generated.labels("0").inc(100)
    generated.labels("1").inc(20)
    drafts.labels("0").inc(7)

    class Engine:
        def metrics_registry(self):
            return registry

    class NoRegistry:
        def metrics_registry(self):
            return None

    counters = engine_counters(Engine())  # type: ignore[arg-type]
    assert counters["generated_tokens"] == 120 and counters["drafts"] == 7
    assert counters["accepted_tokens"] == 0
    assert engine_counters(NoRegistry()) == {}  # type: ignore[arg-type]
