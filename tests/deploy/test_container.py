"""The CPU image built and run for real, through podman: what `docker compose up` gives a user.

No Docker engine runs here and no registry is reachable, so ``tests/deploy/podman.py`` makes the
base image with debootstrap and builds ``docker/Dockerfile.cpu`` unchanged, with only its build
arguments set (base image, this machine's pip settings). Then:

- the image alone: started with a named volume on ``/data`` and the bundled model, it answers
  ``/ready``, ``POST /solve`` and ``/v1/chat/completions`` (the real ``openai`` client); after a
  restart it reuses the model prepared in the volume instead of converting it again;
- compose: ``docker/compose.yaml``'s ``app-cpu`` and ``redis`` services, driven by Debian's
  docker-compose 1.29 through podman's Docker API socket (a test-only override publishes the
  app's port, which the shipped file leaves to its proxy, and names the test's own Redis image);
  a solve's session lands in that Redis, ``docker-compose down`` keeps the volumes, and after
  ``up`` again the session is still there;
- rebuilding: a tag built again removes the image it replaced and that image's build layers
  (each fresh clone builds a new ≈3 GB app image; left behind, they once filled the disk).

A host that cannot build or run containers fails these tests with the reason; they never skip.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from rise.engine.config import DEFAULT_MODEL
from rise.engine.models import cache_dir_for
from testbed.processes import free_port
from tests.file_times import file_times

from .podman import (
    APP_BUILD_STAGE_IMAGE,
    APP_IMAGE,
    CACHE,
    ROOT,
    Podman,
    host_pip_settings,
)

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
COMPOSE_V1 = "/usr/bin/docker-compose"
READY_TIMEOUT_S = 900  # first start converts the bundled model, then starts vLLM, on 2 cores
PREPARED_MARKER = "rise-prepared.json"
SESSION_KEY_PREFIX = "rise:session:"
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does Tom have?"

pytestmark = [pytest.mark.timeout(3600), pytest.mark.container, pytest.mark.slow]


@pytest.fixture(scope="module")
def podman() -> Podman:
    engine = Podman(CACHE / "conf")
    engine.check_runs_containers()
    return engine


@pytest.fixture(scope="module")
def app_image(podman: Podman) -> str:
    """docker/Dockerfile.cpu on the bootstrapped base (layers cached by podman between runs)."""
    base = podman.ensure_base()
    build_args, volumes = host_pip_settings()
    args = {**build_args, "PYTHON_IMAGE": base}
    dockerfile = ROOT / "docker" / "Dockerfile.cpu"
    # The build stage first, under its own tag: the multi-stage build would otherwise leave it
    # untagged, and so never removed, on every rebuild. The second build reuses its layers.
    podman.build(APP_BUILD_STAGE_IMAGE, dockerfile, ROOT, args, volumes, target="build")
    podman.build(APP_IMAGE, dockerfile, ROOT, args, volumes)
    return APP_IMAGE


def _wait_ready(url: str, timeout_s: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} not ready in {timeout_s} s:\n{logs()[-6000:]}")


def _solve_and_chat(url: str) -> dict:
    solve = httpx.post(
        f"{url}/solve",
        json={"question": QUESTION, "max_turns": 2, "max_tokens": 24, "temperature": 0.0},
        timeout=300,
    )
    assert solve.status_code == 200, solve.text
    body = solve.json()
    assert body["new_turns"] == 2 and len(body["turns"]) == 2
    assert all(turn["text"] for turn in body["turns"])

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=300)
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0.0,
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    return body


def test_cpu_image_serves_and_reuses_its_prepared_model_after_restart(
    podman: Podman, app_image: str
) -> None:
    name = f"rise-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Its own network, as compose makes one: on a host whose default network was created by
    # another backend (CNI), ports published on 127.0.0.1 were unreachable ("No route to host").
    network = f"{name}-net"
    podman("volume", "create", volume)
    podman("network", "create", network)
    try:
        podman(
            "run", "-d", "--name", name, "--init", "--shm-size", "1g", "--network", network,
            "-p", f"127.0.0.1:{port}:8000", "-v", f"{volume}:/data",
            "-e", "RISE_KV_CACHE_GIB=1", app_image,
        )  # fmt: skip
        model_dir = cache_dir_for(DEFAULT_MODEL, podman.volume_mountpoint(volume))
        assert not model_dir.exists(), "a new volume should hold no prepared model"
        _wait_ready(url, READY_TIMEOUT_S, lambda: podman.logs(name))
        _solve_and_chat(url)

        assert (model_dir / PREPARED_MARKER).is_file(), (
            f"no model prepared in the volume: {model_dir}"
        )
        prepared = file_times(model_dir)
        assert any(path.endswith(".safetensors") for path in prepared), prepared
        owner = podman("exec", name, "stat", "-c", "%u", "/data/models").stdout.strip()
        assert owner == "10001", "the volume's model folder should belong to the image's user"

        podman("stop", "-t", "30", name, timeout=120)
        podman("start", name)
        _wait_ready(url, READY_TIMEOUT_S, lambda: podman.logs(name))
        assert file_times(model_dir) == prepared, "the restart prepared the model again"
        _solve_and_chat(url)
    finally:
        podman("rm", "-f", "-t", "5", name, check=False, timeout=120)
        podman("volume", "rm", "-f", volume, check=False)
        podman("network", "rm", "-f", network, check=False)


@pytest.fixture
def compose_project(podman: Podman, app_image: str, tmp_path: Path) -> Iterator[dict]:
    """Debian's docker-compose on podman's socket, with a test override (published port, Redis)."""
    redis_image = podman.build_redis()
    port = free_port()
    project = f"risetest{uuid.uuid4().hex[:6]}"
    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "app-cpu": {"ports": [f"127.0.0.1:{port}:8000"]},
                    "redis": {"image": redis_image},
                }
            }
        )
    )
    with podman.api_socket(tmp_path) as docker_host:
        env = {
            **podman.env,
            "DOCKER_HOST": docker_host,
            "COMPOSE_PROJECT_NAME": project,
            "RISE_KV_CACHE_GIB": "1",
        }
        base = [COMPOSE_V1, "-f", str(COMPOSE_FILE), "-f", str(override), "--profile", "cpu"]

        def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(
                [*base, *args], env=env, capture_output=True, text=True, timeout=timeout
            )
            assert proc.returncode == 0, f"docker-compose {args} failed:\n{proc.stderr[-4000:]}"
            return proc

        try:
            yield {"compose": compose, "url": f"http://127.0.0.1:{port}", "project": project}
        finally:
            subprocess.run(
                [*base, "down", "-v", "-t", "5"], env=env, capture_output=True, timeout=300
            )


def _container_of(podman: Podman, project: str, service: str) -> str:
    ids = podman(
        "ps", "-q",
        "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).stdout.split()  # fmt: skip
    assert len(ids) == 1, f"expected one running {service} container, found {ids}"
    return ids[0]


def _redis_keys(podman: Podman, project: str) -> set[str]:
    redis = _container_of(podman, project, "redis")
    return set(podman("exec", redis, "redis-cli", "--scan").stdout.split())


def test_compose_app_and_redis_come_up_and_keep_sessions_across_down(
    podman: Podman, compose_project: dict
) -> None:
    compose, url, project = (
        compose_project["compose"],
        compose_project["url"],
        compose_project["project"],
    )
    label = f"com.docker.compose.project={project}"
    # app-cpu waits for redis's health check (compose's service_healthy), which podman without
    # systemd only runs when asked.
    with podman.healthchecks_running(label):
        compose("up", "-d", "--no-build", "app-cpu", timeout=900)
    _wait_ready(
        url, READY_TIMEOUT_S, lambda: podman.logs(_container_of(podman, project, "app-cpu"))
    )
    app_env = podman("exec", _container_of(podman, project, "app-cpu"), "env").stdout
    assert "RISE_REDIS_URL=redis://redis:6379/0" in app_env

    body = _solve_and_chat(url)
    session_id = body["session_id"]
    assert SESSION_KEY_PREFIX + session_id in _redis_keys(podman, project)

    model_dir = cache_dir_for(DEFAULT_MODEL, podman.volume_mountpoint(f"{project}_model-cache"))
    prepared = file_times(model_dir)
    assert PREPARED_MARKER in prepared, prepared

    compose("down", "-t", "10")
    volumes = set(podman("volume", "ls", "-q").stdout.split())
    assert {f"{project}_model-cache", f"{project}_redis-data"} <= volumes, volumes

    with podman.healthchecks_running(label):
        compose("up", "-d", "--no-build", "app-cpu", timeout=900)
    _wait_ready(
        url, READY_TIMEOUT_S, lambda: podman.logs(_container_of(podman, project, "app-cpu"))
    )
    stored = httpx.get(f"{url}/sessions/{session_id}", timeout=30)
    assert stored.status_code == 200, stored.text
    assert [t["text"] for t in stored.json()["turns"]] == [t["text"] for t in body["turns"]]
    model_dir = cache_dir_for(DEFAULT_MODEL, podman.volume_mountpoint(f"{project}_model-cache"))
    assert file_times(model_dir) == prepared, "the second up prepared the model again"


def test_a_rebuilt_tag_leaves_no_superseded_image_behind(podman: Podman, tmp_path: Path) -> None:
    """Each fresh clone rebuilds the app image; the one it replaces (and its layers) must go."""
    base = podman.ensure_base()
    tag = f"localhost/rise-test-rebuild:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Containerfile").write_text(f"FROM {base}\nARG STAMP\nRUN echo $STAMP > /stamp\n")
    ids = []

    def stored() -> set[str]:
        return set(podman("images", "-a", "-q", "--no-trunc").stdout.split())

    before = stored()
    try:
        for stamp in ("first", "second"):
            podman.build(tag, tmp_path / "Containerfile", tmp_path, {"STAMP": stamp}, timeout=600)
            ids.append(podman.image_id(tag))
        assert None not in ids and ids[0] != ids[1], ids
        assert not podman.image_exists(ids[0]), "the superseded image is still stored"
        assert podman.image_exists(base), "removing the old image must not take the shared base"
        podman.build(tag, tmp_path / "Containerfile", tmp_path, {"STAMP": "second"}, timeout=600)
        assert podman.image_id(tag) == ids[1], "a cached rebuild keeps (and must not remove) it"
        podman("rmi", tag)
        assert stored() == before, "build layers of a removed image are still stored"
    finally:
        podman("rmi", "-f", tag, check=False)


def test_host_pip_settings_mount_local_indexes_and_the_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The builder's index settings reach the Dockerfile's pip steps, local folders as volumes."""
    index = tmp_path / "mirror" / "simple"
    wheels = tmp_path / "wheels"
    index.mkdir(parents=True)
    wheels.mkdir()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_INDEX_URL", f"file://{index}")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_CERT", str(ca))
    args, volumes = host_pip_settings()
    assert args["PIP_INDEX_URL"] == f"file://{index}"
    assert args["PIP_FIND_LINKS"] == str(wheels)
    assert args["PIP_CERT"] == "/etc/ssl/host-ca.crt"
    assert args["TORCH_INDEX_URL"] == "https://mirror.example/simple"
    assert f"{index.parent}:{index.parent}:ro" in volumes  # the index's files sit beside simple/
    assert f"{wheels}:{wheels}:ro" in volumes
    assert f"{ca}:/etc/ssl/host-ca.crt:ro" in volumes
    assert not any("mirror.example" in v for v in volumes)
