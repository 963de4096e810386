"""Real processes for live tests and benchmarks: redis-server, ``python -m app`` and Debian's
nginx with the shipped proxy config, each on a free loopback port in its own process group.

Shared by tests/app (fixtures) and bench/ (side-by-side runs), so both start the same things
the same way; every process is stopped by its own id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 240
NGINX_CONF = REPO / "docker" / "nginx" / "rise.conf"


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` can be handed out again before the process we
    start binds it — and a starting app's vLLM workers bind a dozen such ports before uvicorn
    binds its own (seen: "address already in use", every live test erroring). Ports below the
    ephemeral range are never handed out that way, so only another explicit choice can collide.
    """
    low = _ephemeral_low()
    for port in random.Random().sample(range(max(1024, low - 12000), low), 64):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # everything below is taken: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
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
            stop_process(self.proc, timeout=10)
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
        self.launch()
        self.wait()

    def launch(self) -> None:
        """Start the process without waiting (start several, then :meth:`wait` for each)."""
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

    def wait(self) -> None:
        assert self.proc is not None
        wait_ready(f"{self.url}/ready", self.proc, self.tail, READY_TIMEOUT_S, "app")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (API process and engine core): a crash."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 60) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class NginxProxy:
    """Debian's nginx running the shipped docker/nginx/rise.conf in front of ``replicas``
    (``host:port`` each); only the listen address and the replica list are this machine's."""

    def __init__(self, workdir: Path, replicas: list[str], binary: str = "/usr/sbin/nginx") -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        """nginx.conf around the shipped rise.conf (its ``listen 8000;`` and replicas.conf
        replaced, nothing else)."""
        rise_conf = NGINX_CONF.read_text()
        if rise_conf.count("listen 8000;") != 1:
            raise RuntimeError(f"{NGINX_CONF}: expected one 'listen 8000;'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen = f"listen 127.0.0.1:{self.port};"
        (self.workdir / "rise.conf").write_text(rise_conf.replace("listen 8000;", listen))
        servers = "".join(f"server {r} max_fails=1 fail_timeout=10s;\n" for r in self.replicas)
        (self.workdir / "replicas.conf").write_text(servers)
        temp = "".join(
            f"    {kind}_temp_path {self.workdir / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main = self.workdir / "nginx.conf"
        main.write_text(
            f"pid {self.workdir / 'nginx.pid'};\nerror_log {self.workdir / 'error.log'} warn;\n"
            f"daemon off;\nevents {{}}\nhttp {{\n    access_log off;\n{temp}"
            "    include rise.conf;\n}\n"
        )
        return main

    def check(self) -> None:
        """``nginx -t`` on the config (raises with nginx's message)."""
        main = self.write_config()
        done = subprocess.run(
            [self.binary, "-t", "-p", str(self.workdir), "-c", str(main)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{done.stderr}")

    def start(self) -> None:
        self.check()
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def tail(self, chars: int = 4000) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT, timeout=10)  # nginx: graceful shutdown
            self.proc = None
