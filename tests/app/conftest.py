"""Live-service fixtures: a real redis-server and ``python -m app`` in subprocesses.

One app server (the tiny model on the real vLLM CPU engine, Redis sessions, two API keys, a
small admission bound) is started once per session and shared: each start costs ~30-40 s here.
Tests that stop Redis or restart the app leave both running again, so order does not matter.
Every process started here is stopped by its own id at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.processes import LiveServer, RedisServer, free_port

KEY_A = "test-key-alpha"
KEY_B = "test-key-bravo"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live(
    tiny_model_dir: Path,
    redis_server: RedisServer,
    verifier,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    """The shared app server (tiny model, Redis, keys A and B, 2 solves + 2 queued, the test
    verifier's routes as verifiers with a 1 s timeout)."""
    data = tmp_path_factory.mktemp("app-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISE_")}
    env.update(
        RISE_MODEL=str(tiny_model_dir),
        RISE_DATA_DIR=str(data),
        RISE_REDIS_URL=redis_server.url,
        RISE_PORT=str(free_port()),
        RISE_MAX_MODEL_LEN="4096",
        RISE_KV_CACHE_GIB="0.25",
        RISE_BLOCK_SIZE="32",
        RISE_API_KEYS=f"{KEY_A},{KEY_B}",
        RISE_MAX_CONCURRENT_SOLVES="2",
        RISE_MAX_QUEUED_SOLVES="2",
        RISE_MAX_CHOICES="4",
        # No grace: on an idle machine the tiny model finishes a whole 4096-token solve within
        # a second, so any grace would let the restart test's "in-flight" solve complete.
        RISE_SHUTDOWN_GRACE_S="0",
        RISE_REDIS_TIMEOUT_S="5",
        RISE_VERIFIERS=",".join(
            f"{name}={verifier.url}/{name}" for name in ("seven", "slow", "error", "garbage")
        ),
        RISE_VERIFIER_TIMEOUT_S="1",
        RISE_LOG_LEVEL="warning",
        RISE_ENFORCE_EAGER=os.environ["RISE_ENFORCE_EAGER"],  # tests/conftest.py
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    server = LiveServer(env, data / "app.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client of the live server with key A."""
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=120) as client:
        yield client


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events body read line by line."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class Helpers:
    """Plain helpers for the test modules (under importlib mode they cannot import conftest)."""

    key_a = KEY_A
    key_b = KEY_B
    metric = staticmethod(metric)
    sse_events = staticmethod(sse_events)
    free_port = staticmethod(free_port)

    def __init__(self, live: LiveServer) -> None:
        self.live = live

    def scrape(self) -> str:
        return httpx.get(f"{self.live.url}/metrics", timeout=30).text

    def client(self, key: str | None = KEY_A, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.live.url, headers=headers, **kwargs)


@pytest.fixture
def helpers(live: LiveServer) -> Helpers:
    return Helpers(live)
