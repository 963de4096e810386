"""Live-service fixtures: a real redis-server and ``python -m app`` in subprocesses.

One app server (the tiny model on the real vLLM CPU engine, Redis sessions, two API keys, a
small admission bound) is started once per session and shared: each start costs ~30-40 s here.
Tests that stop Redis or restart the app leave both running again, so order does not matter.
Every process started here is stopped by its own id at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
KEY_A = "test-key-alpha"
KEY_B = "test-key-bravo"
READY_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Signal the process, wait, then kill its process group (the engine core included)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # only our group: start_new_session=True
    proc.wait(10)


class RedisServer:
    """redis-server on a free loopback port; append-only file so a restart keeps the data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout=10)
            self.proc = None


def wait_ready(
    url: str, proc: subprocess.Popen, tail: Callable[[], str], timeout_s: float, name: str
) -> None:
    """Until ``url`` answers 200; a process that exits, or the timeout, raises with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready in {timeout_s} s:\n{tail()}")


class LiveServer:
    """``python -m app`` with the given environment; restartable on the same port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.port = int(env["RISE_PORT"])
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        wait_ready(f"{self.url}/ready", self.proc, self.tail, READY_TIMEOUT_S, "app")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout=timeout)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live(
    tiny_model_dir: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The shared app server (tiny model, Redis, keys A and B, 2 solves + 2 queued)."""
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
        RISE_LOG_LEVEL="warning",
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
