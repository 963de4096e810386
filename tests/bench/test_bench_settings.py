"""The CPU benchmark's service variants: parsed, validated, and carried to the server intact."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.bench_cpu import parse_variant, settings_variant
from bench.bench_service import engine_env, vllm_serve_command
from rise.engine.config import EngineSettings
from rise.engine.cpu import IN_CORE_EXECUTOR


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RISE_* variable of the caller's shell leaks into the settings under test."""
    import os

    for name in [n for n in os.environ if n.startswith("RISE_")]:
        monkeypatch.delenv(name)


def test_parse_variant_reads_name_and_settings() -> None:
    assert parse_variant("iomp:cpu_preload_iomp=true") == ("iomp", {"cpu_preload_iomp": "true"})
    assert parse_variant("s2:speculative_tokens=2,speculative_max_batch=4") == (
        "s2",
        {"speculative_tokens": "2", "speculative_max_batch": "4"},
    )


@pytest.mark.parametrize(
    "text",
    [
        "iomp",  # no settings
        "service:cpu_preload_iomp=true",  # a system that already exists
        "llama:seed=1",
        "x:no_such_setting=1",
        "x:seed=",  # a missing value
        "x:seed",
        "two words:seed=1",
    ],
)
def test_parse_variant_refuses_bad_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant(text)


def test_settings_variant_validates_and_keeps_the_rest(clean_env: None, tmp_path: Path) -> None:
    base = EngineSettings(data_dir=tmp_path, max_num_seqs=64, dtype="float32")
    variant = settings_variant(base, {"cpu_preload_iomp": "false", "speculative_tokens": "0"})
    assert variant.cpu_preload_iomp is False and variant.speculative_tokens == 0
    assert (variant.data_dir, variant.max_num_seqs, variant.dtype) == (tmp_path, 64, "float32")
    assert base.cpu_preload_iomp is True and base.speculative_tokens is None  # untouched
    with pytest.raises(ValidationError, match="speculative_tokens"):
        settings_variant(base, {"speculative_tokens": "-1"})


def test_engine_env_rebuilds_the_same_settings(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the benchmark's server process reads back is every field it was given."""
    settings = settings_variant(
        EngineSettings(data_dir=tmp_path, max_num_seqs=48),
        {"cpu_preload_iomp": "false", "speculative_tokens": "2", "enforce_eager": "false"},
    )
    env = engine_env(settings)
    assert "RISE_CPU_THREADS" not in env  # unset: the engine's own default, not "None"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert EngineSettings() == settings


def test_vllm_serve_gets_the_dtype_speculation_and_layout_our_engine_resolves(
    clean_env: None, tmp_path: Path
) -> None:
    """The comparison server runs in the precision, compile mode and process layout our engine
    picks on the same CPU."""
    settings = EngineSettings(model="m", data_dir=tmp_path, block_size=32)

    def option(command: list[str], name: str) -> str | None:
        return command[command.index(name) + 1] if name in command else None

    plain_cpu = vllm_serve_command(settings, 8123, frozenset({"avx2"}), "/usr/bin/g++")
    bf16_cpu = vllm_serve_command(settings, 8123, frozenset({"avx2", "avx512_bf16"}), None)
    assert "--enforce-eager" not in plain_cpu  # compiled, as our engine with a C++ compiler
    assert "--enforce-eager" in bf16_cpu  # eager, as our engine without one
    eager = settings.model_copy(update={"enforce_eager": True})
    assert "--enforce-eager" in vllm_serve_command(eager, 8123, frozenset(), "/usr/bin/g++")
    assert option(plain_cpu, "--dtype") == "float32"
    assert option(bf16_cpu, "--dtype") == "bfloat16"
    assert option(plain_cpu, "--port") == "8123"
    assert '"ngram"' in (option(plain_cpu, "--speculative-config") or "")
    off = settings.model_copy(update={"speculative_tokens": 0, "dtype": "float32"})
    command = vllm_serve_command(off, 8123, frozenset({"avx512_bf16"}), None)
    assert "--speculative-config" not in command and option(command, "--dtype") == "float32"
    backend = "--distributed-executor-backend"
    assert option(plain_cpu, backend) == IN_CORE_EXECUTOR  # the worker inside the engine core
    three = settings.model_copy(update={"cpu_worker_in_engine_core": False})
    assert backend not in vllm_serve_command(three, 8123, frozenset({"avx2"}), None)


def test_llama_cpp_builds_native_unless_the_cpu_reports_amx() -> None:
    """ggml's AMX path crashed on the AMX VM measured here: such CPUs get every other feature
    they report, named, and no AMX; others get -march=native."""
    from bench.bench_cpu import ggml_cpu_options

    assert ggml_cpu_options(frozenset({"avx2", "fma"})) == ("build", ["-DGGML_NATIVE=ON"])
    name, options = ggml_cpu_options(frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile"}))
    assert name == "build-no-amx" and "-DGGML_NATIVE=OFF" in options
    assert "-DGGML_AVX512=ON" in options and "-DGGML_AVX512_BF16=ON" in options
    assert "-DGGML_AVX512_VNNI=OFF" in options and not any("AMX" in o for o in options)
