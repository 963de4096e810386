"""Podman as the container engine of the image tests: build and run the real images, no Docker.

No Docker engine runs on the project's machines, and container registries are out of reach, so
the tests make everything locally with Debian's tools:

- **base image**: ``debootstrap`` of Debian bookworm with python3 (what the default
  ``python:3.11-slim-bookworm`` base is: Debian + CPython 3.11) from the Debian mirror this
  machine's apt sources name (``scripts/registries.py``), imported with ``podman import``; the
  root file system is cached as a tarball in the ignored ``.cache/podman`` folder;
- **images**: ``podman build --isolation chroot`` with the repository's Dockerfiles, the base
  image and this machine's pip settings passed as their build arguments (local wheel folders and
  ``file://`` indexes mounted read-only into the ``RUN`` steps, the CA bundle as ``PIP_CERT``);
- **containers**: the ``runc`` runtime with explicit ulimits (Debian's default ``crun`` fails on
  this machine's cgroups), cgroupfs and file-based events (no systemd), and netavark networks
  (with aardvark-dns, compose services find each other by name; Debian's CNI default does not
  resolve names).

Why the podman CLI and not a Python SDK: it is what a person without Docker types, and the same
socket (``podman system service``) serves Debian's docker-compose 1.29 for the compose test.
Podman without systemd never runs health checks on its own: :func:`Podman.healthcheck` runs them
when a test (compose's ``service_healthy``) needs the status.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from scripts.registries import debian_mirror, first_index, pip_config

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "podman"
BASE_IMAGE = "localhost/rise-test-python:3.11-bookworm"
APP_IMAGE = "localhost/rise-cpu:0.1.0"  # the name docker/compose.yaml gives the CPU image
# The Dockerfile's build stage, tagged so that the rebuild of a fresh clone replaces (and removes)
# the previous one instead of leaving it untagged (≈3 GB each).
APP_BUILD_STAGE_IMAGE = "localhost/rise-cpu-build-stage:0.1.0"
REDIS_IMAGE = "localhost/rise-test-redis:bookworm"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]
HOST_CA = "/etc/ssl/host-ca.crt"  # where the builder's CA bundle is mounted for pip

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
"""

# redis-server gets --protected-mode off (the official image's entrypoint does the same); other
# commands (redis-cli) run unchanged.
_REDIS_ENTRYPOINT = json.dumps(
    [
        "/bin/sh",
        "-c",
        '[ "$1" != redis-server ] || set -- "$@" --protected-mode no; exec "$@"',
        "redis",
    ]
)
# The test's own Redis image (not shipped): Debian's redis-server on the bootstrapped base, started
# like the official image (data in /data, protected mode off: other containers connect by name).
REDIS_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT {_REDIS_ENTRYPOINT}
CMD ["redis-server"]
"""


class ContainerError(RuntimeError):
    """A podman command failed; the message carries its output."""


class Podman:
    """The podman CLI with this machine's settings (runtime, ulimits, no systemd)."""

    def __init__(self, conf_dir: Path) -> None:
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf = conf_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.binary = shutil.which("podman")
        if self.binary is None:
            raise ContainerError("podman is not installed (scripts/install-deploy-tools.sh)")

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"podman {' '.join(args[:3])} ... exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def image_exists(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def image_id(self, name: str) -> str | None:
        proc = self("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return (proc.stdout.strip() or None) if proc.returncode == 0 else None

    def check_runs_containers(self) -> None:
        """Fail with the reason when this host cannot run a container at all."""
        proc = self("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
        if proc.returncode != 0:
            raise ContainerError(f"podman cannot run here: {proc.stderr.strip()}")

    # ---- images --------------------------------------------------------------------------------

    def ensure_base(self) -> str:
        """The Debian bookworm + python3 base, bootstrapped once and cached as a tarball."""
        if self.image_exists(BASE_IMAGE):
            return BASE_IMAGE
        tarball = CACHE / f"debian-{DEBIAN_SUITE}-python3.tar"
        if not tarball.exists():
            _bootstrap(tarball)
        with tarball.open("rb") as handle:
            proc = subprocess.run(
                [str(self.binary), "import", "--change", 'CMD ["python3"]', "-", BASE_IMAGE],
                env=self.env,
                stdin=handle,
                capture_output=True,
                text=True,
                timeout=600,
            )
        if proc.returncode != 0:
            raise ContainerError(f"podman import failed: {proc.stderr[-2000:]}")
        return BASE_IMAGE

    def build(
        self,
        tag: str,
        dockerfile: Path,
        context: Path,
        build_args: dict[str, str] | None = None,
        volumes: list[str] | None = None,
        timeout: float = 3600,
        target: str | None = None,
    ) -> None:
        """Build ``tag`` (the Dockerfile's stage ``target``, or its last), then remove the image
        it replaced.

        Every fresh clone is a new build context, so each test run makes a new ~3 GB app image
        and leaves the previous one dangling with its build layers (141 of them filled this
        machine's disk once). ``rmi`` of the superseded image also removes its parent layers
        that nothing else uses, while layers the new image shares stay.
        """
        previous = self.image_id(tag)
        args = ["build", "--format", "docker", "--isolation", "chroot", "-t", tag]
        args += ["-f", str(dockerfile)]
        if target is not None:
            args += ["--target", target]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for volume in volumes or []:
            args += ["--volume", volume]
        self(*args, str(context), timeout=timeout)
        if previous is not None and previous != self.image_id(tag):
            # A container still using it (a user's, or a stale one) keeps it: not an error here.
            self("rmi", previous, check=False, timeout=600)

    def build_redis(self) -> str:
        """Always built: podman's layer cache makes an unchanged Containerfile a no-op."""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "Containerfile").write_text(REDIS_CONTAINERFILE)
            self.build(REDIS_IMAGE, Path(tmp) / "Containerfile", Path(tmp), timeout=900)
        return REDIS_IMAGE

    # ---- containers ----------------------------------------------------------------------------

    def healthcheck(self, container: str) -> bool:
        """Run the container's health check once (podman schedules them through systemd only)."""
        return self("healthcheck", "run", container, check=False, timeout=60).returncode == 0

    @contextlib.contextmanager
    def healthchecks_running(self, *labels: str, every_s: float = 2.0) -> Iterator[None]:
        """Run the health checks of the containers matching ``labels`` until the block ends."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every_s):
                filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
                ids = self("ps", "-q", *filters, check=False, timeout=60).stdout.split()
                for container in ids:
                    self.healthcheck(container)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=90)

    def volume_mountpoint(self, volume: str) -> Path:
        out = self("volume", "inspect", volume).stdout
        return Path(json.loads(out)[0]["Mountpoint"])

    def logs(self, container: str, since: str | None = None) -> str:
        args = ["logs"] + (["--since", since] if since else []) + [container]
        proc = self(*args, check=False, timeout=60)
        return proc.stdout + proc.stderr

    @contextlib.contextmanager
    def api_socket(self, folder: Path) -> Iterator[str]:
        """``podman system service`` on a unix socket: the Docker API for docker-compose."""
        sock = folder / "podman.sock"
        proc = subprocess.Popen(
            [str(self.binary), "system", "service", "--time=0", f"unix://{sock}"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ContainerError(f"podman system service did not start: {proc.stderr}")
                time.sleep(0.1)
            yield f"unix://{sock}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _bootstrap(tarball: Path) -> None:
    """debootstrap Debian with python3 into a tarball (about a minute; cached by the caller)."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ContainerError("debootstrap is not installed (scripts/install-deploy-tools.sh)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                debian_mirror(DEBIAN_SUITE),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if proc.returncode != 0:
            raise ContainerError(
                f"debootstrap failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True
        )
        partial.replace(tarball)


def host_pip_settings() -> tuple[dict[str, str], list[str]]:
    """This machine's pip index settings as the Dockerfiles' build arguments, and the volumes
    (``host:container:ro``) that make the local folders they name visible to ``RUN`` steps.

    Read as pip itself reads them (``pip config list``: its files and the ``PIP_*`` variables;
    ``scripts/registries.py``); local wheel folders and ``file://`` indexes keep their paths
    inside the build, the CA bundle moves to HOST_CA.
    """
    config = pip_config()
    args: dict[str, str] = {}
    volumes: set[str] = set()

    def local_folder(location: str) -> None:
        path = Path(location.removeprefix("file://")).resolve()
        if path.name == "simple":  # a PEP 503 index links its files relative to its parent
            path = path.parent
        if path.exists():
            volumes.add(f"{path}:{path}:ro")

    for name, arg in (
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
        ("find-links", "PIP_FIND_LINKS"),
        ("trusted-host", "PIP_TRUSTED_HOST"),
    ):
        value = config.get(name)
        if value:
            args[arg] = value
            for location in value.split():
                if location.startswith(("/", "file://")):
                    local_folder(location)
    cert = config.get("cert")
    if cert and Path(cert).is_file():
        args["PIP_CERT"] = HOST_CA
        volumes.add(f"{Path(cert).resolve()}:{HOST_CA}:ro")
    # The Dockerfile names torch's index explicitly; keep it on what this machine can reach.
    args["TORCH_INDEX_URL"] = first_index(config)
    return args, sorted(volumes)
