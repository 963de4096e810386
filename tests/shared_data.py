"""Where the GSM8K and MATH files (never copied into the repo) are found, and skipping without them.

The files and where to get them are described in docs/DATA.md. Tests look, in order, at
``$RISE_SHARED_DATA``, a ``shared/data`` folder beside the checkout (what CI has), the same
folder beside the checkout a local clone came from (its ``origin``; a throwaway clone in a temp
dir has no neighbours, its origin does), and ``.data/datasets`` in the checkout.

Tests that need the files call :func:`shared_file` (or take the ``shared_data`` fixture of
``tests/conftest.py``): on a clone without the data they are skipped with a reason that says
where to put it, instead of failing. A ``RISE_SHARED_DATA`` that is set but wrong fails: the
person who set it expects the tests to run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".data" / "datasets"  # where docs/DATA.md downloads them (git-ignored)
ENV = "RISE_SHARED_DATA"
FILES = ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math/test.jsonl", "math/math500_test.jsonl")


def _origin_checkout() -> Path | None:
    try:
        url = subprocess.run(
            ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(url) if url and Path(url).is_dir() else None


def shared_data_dir() -> Path:
    """$RISE_SHARED_DATA; else the first folder that exists of ../shared/data,
    <origin checkout>/../shared/data and .data/datasets (else ../shared/data, for the message)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    candidates = [REPO.parent / "shared" / "data"]
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(origin.resolve().parent / "shared" / "data")
    candidates.append(LOCAL)
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_DATA = shared_data_dir()


def missing_reason(path: Path) -> str:
    """Why a data-dependent test cannot run, and how to make it run."""
    return (
        f"GSM8K/MATH data not found: {path} is missing. Put the files ({', '.join(FILES)}) in "
        f"{LOCAL.relative_to(REPO)}/ or in a folder named by {ENV} (docs/DATA.md: where to get "
        "them)"
    )


def require(path: Path) -> Path:
    """``path`` when it exists; else skip the calling test (fail when $RISE_SHARED_DATA is set)."""
    if path.exists():
        return path
    if os.environ.get(ENV):
        pytest.fail(f"{ENV}={os.environ[ENV]} is set, but {missing_reason(path)}")
    pytest.skip(missing_reason(path))


def shared_file(*parts: str) -> Path:
    """A data file (``shared_file("gsm8k", "test.jsonl")``), or skip the test without it."""
    return require(SHARED_DATA.joinpath(*parts))
