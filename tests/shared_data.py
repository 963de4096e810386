"""Where the shared data sets (GSM8K, MATH; never copied into the repo) are found.

CI clones the repo with ``../shared`` beside it. A throwaway clone of a local checkout (say, in a
temp dir, to check ``.ci/run`` on a fresh clone) has no ``../shared``, but its ``origin`` is
that checkout, which does. ``RISE_SHARED_DATA`` overrides both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    """The first of $RISE_SHARED_DATA, ../shared/data, <origin checkout>/../shared/data."""
    if os.environ.get("RISE_SHARED_DATA"):
        return Path(os.environ["RISE_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    origin = _origin_checkout()
    if beside.is_dir() or origin is None:
        return beside
    return origin.resolve().parent / "shared" / "data"


SHARED_DATA = shared_data_dir()
