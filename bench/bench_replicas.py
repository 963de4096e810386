"""Benchmark: RISE replicas behind the shipped nginx proxy, sharing one Redis (not a test; the
same measurements, asserted, are tests/app/test_live_replicas.py).

Starts redis-server, two ``python -m app`` replicas on loopback and Debian's nginx running
docker/nginx/rise.conf in front of them, then prints:

1. **Affinity.** Sessions are created and then continued by one more turn, and the prompt
   tokens of the new turn that came from the prefix cache are counted against the tokens of
   the earlier turn (its prompt and output): the *cached share of earlier-turn tokens*.
   Measured three ways on fresh sessions each: on one replica directly (the reference), through
   the proxy with the ``X-Session-Id`` the service returned (what clients do), and continued on
   the *other* replica (the control: what a proxy without affinity gets for half the sessions
   with two replicas). The ratio proxy / one replica is the figure; the control shows the
   measurement can tell the difference.
2. **A replica killed mid-traffic.** Sessions are created through the proxy, then all are
   continued at once; the replica that holds the most of them is SIGKILLed (API process and
   engine core) while its requests run. Printed: requests, failures and where they were (only
   in flight on the killed replica, each a JSON 502 from the proxy), then every session is
   continued again through the proxy: the killed replica's sessions on the survivor from their
   stored token ids (a cache miss, but correct), none lost.

    .venv/bin/python bench/bench_replicas.py                 # tiny random Llama, ~2 minutes
    .venv/bin/python bench/bench_replicas.py --model default --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repository is not
    sys.path.insert(0, str(REPO))

from testbed.processes import LiveServer, NginxProxy, RedisServer, free_port  # noqa: E402

SESSION_HEADER = "X-Session-Id"
REPLICA_HEADER = "X-Rise-Replica"  # set by docker/nginx/rise.conf: the upstream that answered
LEASE_S = 10  # the smallest lease the service allows: a killed run's sessions free up fast


@dataclass
class Cluster:
    """Redis, the replicas and the proxy in front of them."""

    replicas: list[LiveServer]
    proxy: NginxProxy
    redis_url: str

    def replica(self, upstream: str) -> LiveServer:
        """The replica that answered, from the proxy's ``X-Rise-Replica`` (the last address
        tried: nginx lists every upstream it tried)."""
        address = upstream.split(",")[-1].strip()
        return next(r for r in self.replicas if r.url.endswith(f"//{address}"))


PASSED_SETTINGS = ("RISE_ENFORCE_EAGER",)
"""The caller's RISE_* settings a replica keeps (every other one is the benchmark's): whether the
engine compiles, which the test suite turns off for its short-lived engines."""


def replica_env(model: str, data_dir: Path, redis_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISE_") or k in PASSED_SETTINGS}
    env.update(
        RISE_MODEL=model,
        RISE_DATA_DIR=str(data_dir),
        RISE_REDIS_URL=redis_url,
        RISE_PORT=str(port),
        RISE_MAX_MODEL_LEN="4096",
        RISE_KV_CACHE_GIB="0.25",
        RISE_BLOCK_SIZE="32",  # the CPU attention backend needs a multiple of 32
        RISE_MAX_CONCURRENT_SOLVES="32",
        RISE_MAX_QUEUED_SOLVES="64",
        RISE_SESSION_LEASE_S=str(LEASE_S),
        RISE_SHUTDOWN_GRACE_S="0",
        RISE_LOG_LEVEL="warning",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


@contextmanager
def cluster(
    model: str, workdir: Path, replicas: int = 2, redis_url: str | None = None
) -> Iterator[Cluster]:
    """Start (and at exit stop) Redis unless given, ``replicas`` app replicas and nginx."""
    with ExitStack() as stack:
        if redis_url is None:
            redis = RedisServer(workdir / "redis")
            (workdir / "redis").mkdir(parents=True, exist_ok=True)
            redis.start()
            stack.callback(redis.stop)
            redis_url = redis.url
        servers = []
        for index in range(replicas):
            data = workdir / f"replica-{index}"
            data.mkdir(parents=True, exist_ok=True)
            env = replica_env(model, data, redis_url, free_port())
            server = LiveServer(env, data / "app.log")
            server.launch()  # all at once: each engine start takes ~30 s here
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait()
        proxy = NginxProxy(workdir / "nginx", [r.url.removeprefix("http://") for r in servers])
        proxy.start()
        stack.callback(proxy.stop)
        yield Cluster(servers, proxy, redis_url)


# ---- one session, one turn -----------------------------------------------------------------


@dataclass
class Session:
    id: str
    root: str
    replica: str  # the upstream that created it ("" when created on a replica directly)
    turns: list[dict[str, Any]] = field(default_factory=list)


def question(tag: str, index: int) -> str:
    """A question of its own per session: only the served prompt's head is shared."""
    return f"[{tag} {index}] Tom has {index + 3} apples and buys {2 * index + 5} more. How many?"


def solve_new(client: httpx.Client, tag: str, index: int, max_tokens: int) -> Session:
    body = {"question": question(tag, index), "max_turns": 1, "max_tokens": max_tokens}
    response = client.post("/solve", json=body)
    response.raise_for_status()
    data = response.json()
    replica = response.headers.get(REPLICA_HEADER, "")
    return Session(data["session_id"], response.headers[SESSION_HEADER], replica, data["turns"])


def add_turn(client: httpx.Client, session: Session) -> httpx.Response:
    """One more turn, the way a client continues: the session's root in ``X-Session-Id``."""
    return client.post(
        f"/sessions/{session.id}/turns", json={}, headers={SESSION_HEADER: session.root}
    )


def cached_share(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
    """Prompt tokens of the new turns served from the prefix cache, over the tokens of the
    turns before them (their prompt and output: what a cache can hold)."""
    earlier = sum(before["prompt_tokens"] + before["completion_tokens"] for before, _ in pairs)
    return sum(after["cached_tokens"] for _, after in pairs) / earlier


def parallel(jobs: list[Any], work: Any, threads: int = 16) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, jobs))


def client_for(url: str) -> httpx.Client:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.Client(base_url=url, timeout=300, limits=limits)


# ---- 1. affinity ---------------------------------------------------------------------------


def measure_affinity(cluster: Cluster, sessions: int = 8, max_tokens: int = 64) -> dict[str, Any]:
    """Cached share of earlier-turn tokens: one replica, through the proxy, other replica."""
    first = cluster.replicas[0]
    with client_for(first.url) as direct, client_for(cluster.proxy.url) as proxy:

        def continued(client: httpx.Client, made: list[Session]) -> list[httpx.Response]:
            responses = parallel(made, lambda s: add_turn(client, s))
            for response in responses:
                response.raise_for_status()
            return responses

        def pairs(made: list[Session], responses: list[httpx.Response]) -> list[tuple]:
            return [
                (s.turns[-1], r.json()["turns"][-1]) for s, r in zip(made, responses, strict=True)
            ]

        # the reference: one replica, no proxy
        alone = parallel(range(sessions), lambda i: solve_new(direct, "alone", i, max_tokens))
        single = cached_share(pairs(alone, continued(direct, alone)))
        # through the proxy, as a client does
        routed = parallel(range(sessions), lambda i: solve_new(proxy, "proxy", i, max_tokens))
        responses = continued(proxy, routed)
        through_proxy = cached_share(pairs(routed, responses))
        kept = [
            cluster.replica(s.replica) is cluster.replica(r.headers[REPLICA_HEADER])
            for s, r in zip(routed, responses, strict=True)
        ]
        # the control: each session continued on the replica that did not create it
        moved = parallel(range(sessions), lambda i: solve_new(proxy, "moved", i, max_tokens))
        others = []
        for session in moved:
            other = next(r for r in cluster.replicas if r is not cluster.replica(session.replica))
            with client_for(other.url) as client:
                response = add_turn(client, session)
                response.raise_for_status()
                others.append(response)
        other_replica = cached_share(pairs(moved, others))
    created_on = [cluster.replicas.index(cluster.replica(s.replica)) for s in routed + moved]
    return {
        "sessions": sessions,
        "cached_share_one_replica": round(single, 4),
        "cached_share_through_proxy": round(through_proxy, 4),
        "cached_share_other_replica": round(other_replica, 4),
        "proxy_over_one_replica": round(through_proxy / single, 4),
        "continued_on_creating_replica": sum(kept),
        "sessions_per_replica": [created_on.count(i) for i in range(len(cluster.replicas))],
    }


# ---- 2. a replica killed mid-traffic -------------------------------------------------------


@dataclass
class Attempt:
    session: Session
    started: float
    ended: float = 0.0
    status: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    replica: str = ""


def kill_under_traffic(
    cluster: Cluster, sessions: int = 12, max_tokens: int = 256, kill_after_s: float = 1.0
) -> dict[str, Any]:
    """Continue every session at once, SIGKILL the replica holding most of them mid-way, then
    continue every session again through the proxy."""
    with client_for(cluster.proxy.url) as proxy:
        made = parallel(range(sessions), lambda i: solve_new(proxy, "kill", i, max_tokens))
        stored = {s.id: proxy.get(f"/sessions/{s.id}").json()["turns"] for s in made}
        holders = [cluster.replica(s.replica) for s in made]
        victim = max(cluster.replicas, key=holders.count)
        survivor = next(r for r in cluster.replicas if r is not victim)
        on_victim = {s.id for s, holder in zip(made, holders, strict=True) if holder is victim}

        def attempt(session: Session) -> Attempt:
            record = Attempt(session, time.monotonic())
            try:
                response = add_turn(proxy, session)
                record.status = response.status_code
                record.body = response.json()
                record.replica = response.headers.get(REPLICA_HEADER, "")
            except (httpx.HTTPError, json.JSONDecodeError) as error:  # not expected: recorded
                record.body = {"client_error": repr(error)}
            record.ended = time.monotonic()
            return record

        with ThreadPoolExecutor(sessions) as pool:
            futures = [pool.submit(attempt, s) for s in made]
            time.sleep(kill_after_s)
            killed_at = time.monotonic()
            victim.kill()
            attempts = [f.result() for f in futures]

        failed = [a for a in attempts if a.status != 200]
        in_flight = [a for a in attempts if a.session.id in on_victim and a.ended >= killed_at]
        clear = [
            a
            for a in failed
            if a.status == 502 and a.body.get("error", {}).get("code") == "replica_failed"
        ]
        # afterwards: every session continues through the proxy (the killed replica's on the
        # survivor); a session whose run died holds its lease until it expires (LEASE_S)
        after, lease_waits = [], 0
        for session in made:
            deadline = time.monotonic() + LEASE_S + 20
            while True:
                response = add_turn(proxy, session)
                if response.status_code != 409 or time.monotonic() > deadline:
                    break
                lease_waits += 1
                time.sleep(1)
            after.append((session, response))
        continued = [(s, r) for s, r in after if r.status_code == 200]
        kept_turns = sum(_same_turns(r.json()["turns"], stored[s.id]) for s, r in continued)
        moved = sum(
            s.id in on_victim and cluster.replica(r.headers[REPLICA_HEADER]) is survivor
            for s, r in continued
        )
    return {
        "sessions": sessions,
        "sessions_on_killed_replica": len(on_victim),
        "requests": len(attempts),
        "failed": len(failed),
        "failed_in_flight_on_killed_replica": sum(a in in_flight for a in failed),
        "failed_with_clear_error": len(clear),
        "in_flight_on_killed_replica_at_kill": len(in_flight),
        "failures": [{"status": a.status, **a.body} for a in failed][:4],
        "continued_after_kill": len(continued),
        "killed_replicas_sessions_on_survivor": moved,
        "earlier_turns_kept": kept_turns,
        "lease_waits_s": lease_waits,
        "sessions_lost": sessions - len(continued),
    }


def _same_turns(now: list[dict[str, Any]], before: list[dict[str, Any]]) -> bool:
    """The stored turns are still the session's first turns (timings aside)."""
    keys = ("index", "text", "answer", "prompt_tokens", "completion_tokens")
    return [{k: t[k] for k in keys} for t in now[: len(before)]] == [
        {k: t[k] for k in keys} for t in before
    ]


# ---- the script ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or 'default' (bundled)")
    parser.add_argument("--sessions", type=int, default=8, help="sessions per affinity arm")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from testbed.tiny_models import build_tiny_model

            model = str(build_tiny_model(work / "tiny-model"))
        elif model == "default":
            from rise.engine.config import DEFAULT_MODEL

            model = DEFAULT_MODEL
        start = time.perf_counter()
        with cluster(model, work) as running:
            print(f"2 replicas + nginx + Redis up in {time.perf_counter() - start:.0f} s")
            affinity = measure_affinity(running, args.sessions, args.max_tokens)
            print("\n== affinity: cached share of earlier-turn tokens on the next turn ==")
            print(json.dumps(affinity, indent=1))
            # long turns and an early kill, as in the test: on an idle machine a 256-token turn
            # of the tiny model is over within a second, and the kill would hit no traffic
            kill = kill_under_traffic(
                running, max_tokens=max(8 * args.max_tokens, 512), kill_after_s=0.5
            )
            print("\n== one replica SIGKILLed mid-traffic ==")
            print(json.dumps(kill, indent=1))
        if kill["in_flight_on_killed_replica_at_kill"] == 0:
            print("\nWARNING: the kill hit no request in flight: rerun with --max-tokens 128")
        print(
            f"\nthrough the proxy / one replica: {affinity['proxy_over_one_replica']:.2f} "
            f"(other replica, the control: "
            f"{affinity['cached_share_other_replica'] / affinity['cached_share_one_replica']:.2f})"
            f"\nkill: {kill['requests']} requests, {kill['failed']} failed "
            f"({kill['failed_in_flight_on_killed_replica']} in flight on the killed replica, "
            f"{kill['failed_with_clear_error']} with the proxy's JSON error), "
            f"{kill['sessions_lost']} sessions lost, "
            f"{kill['killed_replicas_sessions_on_survivor']} continued on the survivor"
        )


if __name__ == "__main__":
    main()
