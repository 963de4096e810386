"""The interval estimates behind every evaluation number, kept apart from what is measured.

Two kinds of number come out of an evaluation, and they need different intervals:

- a single proportion (m1@t1, acc@tk, a conditional copy rate): a 95% Wilson score interval. It
  stays inside [0, 1] and behaves at 0/n and n/n, unlike the normal approximation.
- a rate over events that come in groups (the copy rates count consecutive turn pairs, several
  per episode, and turns of one episode are not independent): :func:`cluster_bootstrap`
  resamples the groups (problems), keeping each problem's events together.
- a paired difference over problems (the sequential gain m1@tN − m1@t1, tuned minus base): both
  sides come from the same problems, so comparing two Wilson intervals would be far too wide.
  :func:`paired_bootstrap` resamples problems (a percentile bootstrap), which needs no normality
  and takes fractional per-problem values (averages over evaluation seeds) as they are.
  :func:`paired_mean` (normal approximation) is kept for callers that want the closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054
WILSON_CI = "Wilson score interval, 95% (z = 1.96)"
BOOTSTRAP_CI = "paired percentile bootstrap over problems, 95%"
CLUSTER_CI = "percentile bootstrap over problems (a problem's turns resampled together), 95%"
_BOOT_CHUNK = 2_000_000  # resampled values held in memory at once


def wilson_interval(count: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``count`` successes out of ``n`` ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = count / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """``count`` of ``n``, serialised with its Wilson interval."""

    count: int
    n: int

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.count, self.n)
        return {"value": self.value, "count": self.count, "n": self.n, "ci95": [low, high]}


def _paired_dict(differences: Sequence[float], low: float, high: float) -> dict[str, Any]:
    n = len(differences)
    return {
        "value": sum(differences) / n if n else 0.0,
        "n": n,
        "better": sum(1 for d in differences if d > 0),
        "worse": sum(1 for d in differences if d < 0),
        "ci95": [low, high],
    }


def paired_mean(differences: Sequence[float], z: float = Z95) -> dict[str, Any]:
    """Mean of per-problem differences with a normal-approximation 95% interval.

    ``better``/``worse`` count the problems whose difference is positive/negative.
    """
    n = len(differences)
    if n == 0:
        return _paired_dict([], 0.0, 0.0)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / n  # of the differences themselves
    half = z * math.sqrt(variance / n)
    return _paired_dict(differences, mean - half, mean + half)


def paired_bootstrap(
    differences: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of per-problem differences with a 95% percentile-bootstrap interval over problems.

    The same dict as :func:`paired_mean`. ``n_boot`` resamples of the problems (with
    replacement) give ``n_boot`` means; the interval is their 2.5th and 97.5th percentiles.
    Seeded, so a report is reproducible; a constant difference gives a zero-width interval.
    """
    import numpy as np

    n = len(differences)
    if n == 0:
        return _paired_dict([], 0.0, 0.0)
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_CHUNK // n)  # bound memory for large n
    means: list[Any] = []
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        means.append(values[rng.integers(0, n, size=(size, n))].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return _paired_dict(differences, float(low), float(high))


def cluster_bootstrap(
    groups: Sequence[tuple[int, int]], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """A rate ``sum(hits) / sum(events)`` over groups of events (``(hits, events)`` per
    problem), with a 95% percentile-bootstrap interval that resamples whole groups.

    The copy rates are rates over consecutive turn pairs, several per episode; a Wilson
    interval over the pairs would treat them as independent and come out too narrow. Same
    dict as :meth:`Proportion.to_dict` (``count`` and ``n`` count events), plus ``groups``.
    Groups without events carry no weight; seeded, so a report is reproducible.
    """
    import numpy as np

    kept = [(h, n) for h, n in groups if n > 0]
    count, total = sum(h for h, _ in kept), sum(n for _, n in kept)
    out: dict[str, Any] = {
        "value": count / total if total else 0.0,
        "count": count,
        "n": total,
        "groups": len(kept),
        "ci95": [0.0, 1.0],
        "ci": CLUSTER_CI,
    }
    if not kept:
        return out
    hits = np.asarray([h for h, _ in kept], dtype=float)
    events = np.asarray([n for _, n in kept], dtype=float)
    rng = np.random.default_rng(seed)
    g = len(kept)
    rows = max(1, _BOOT_CHUNK // g)
    rates: list[Any] = []
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        picks = rng.integers(0, g, size=(size, g))
        rates.append(hits[picks].sum(axis=1) / events[picks].sum(axis=1))
    low, high = np.percentile(np.concatenate(rates), [2.5, 97.5])
    out["ci95"] = [float(low), float(high)]
    return out
