"""Goodness-of-fit tests for sampled tokens: does a sampler draw from the distribution it should?

Pearson's chi-square, with the p-value from torch's regularised upper incomplete gamma function
(``chi2.sf(x, df) = Q(df / 2, x / 2)``), so the tests need no SciPy. Categories expected fewer
than ``MIN_EXPECTED`` times are pooled into one, where the chi-square approximation holds; a
category of zero probability that was sampled at all makes the p-value 0. Rows of a Markov
chain's transitions (one row per current state) add their statistics and degrees of freedom:
given the visits to each state, its next tokens are independent draws from its row.

The tests reject at ``ALPHA``: a correct sampler fails a given check with probability at most
1e-4 (asymptotically), while the faults these checks exist for (logits scaled by the wrong
temperature, a filter applied to the wrong rows) give p-values below 1e-30 at these sample
sizes; every check's power is shown beside it by a deliberately wrong expectation.
"""

from __future__ import annotations

from collections.abc import Sequence

ALPHA = 1e-4
MIN_EXPECTED = 5.0


def softmax(logits: Sequence[float], temperature: float = 1.0, top_p: float = 1.0) -> list[float]:
    """The distribution vLLM samples from: ``softmax(logits / temperature)`` restricted to the
    top-p nucleus by vLLM's rule (ascending sort, drop the tokens whose cumulative mass is at
    most ``1 - top_p``, always keep the most likely one), renormalised. Float64."""
    import torch

    scaled = torch.tensor(logits, dtype=torch.float64) / temperature
    probs = scaled.softmax(-1)
    if top_p < 1.0:
        ascending, order = probs.sort()
        drop = ascending.cumsum(-1) <= 1 - top_p
        drop[-1] = False
        probs[order[drop]] = 0.0
        probs = probs / probs.sum()
    return probs.tolist()


def chi_square_fit(counts: Sequence[int], probs: Sequence[float]) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom of ``counts`` against ``probs`` (infinite
    when a zero-probability category was sampled; an error when there are no counts)."""
    import torch

    observed = torch.tensor(counts, dtype=torch.float64)
    p = torch.tensor(probs, dtype=torch.float64)
    if observed.shape != p.shape:
        raise ValueError(f"{observed.numel()} counts for {p.numel()} probabilities")
    n = observed.sum()
    if n == 0:
        raise ValueError("no samples: a fit of nothing proves nothing")
    if bool((observed[p == 0] > 0).any()):
        return float("inf"), 1
    possible = p > 0
    expected = n * p
    small = (expected < MIN_EXPECTED) & possible
    o = torch.cat([observed[possible & ~small], observed[small].sum().reshape(1)])
    e = torch.cat([expected[possible & ~small], expected[small].sum().reshape(1)])
    keep = e > 0
    o, e = o[keep], e[keep]
    return float(((o - e) ** 2 / e).sum()), o.numel() - 1


def p_value(statistic: float, df: int) -> float:
    """Upper tail of the chi-square distribution with ``df`` degrees of freedom."""
    import torch

    if df < 1:
        return 1.0
    if statistic == float("inf"):
        return 0.0
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(statistic / 2)))


def chi_square_p_value(counts: Sequence[int], probs: Sequence[float]) -> float:
    """P-value of Pearson's goodness-of-fit test of ``counts`` against ``probs``."""
    return p_value(*chi_square_fit(counts, probs))


def chain_fit_p_value(
    rows: Sequence[Sequence[int]], probs: Sequence[Sequence[float]], min_visits: int = 1
) -> float:
    """One p-value for a Markov chain's transition counts ``rows[state][next]`` against its
    transition probabilities (rows visited fewer than ``min_visits`` times are left out)."""
    statistic, df = 0.0, 0
    for counts, row in zip(rows, probs, strict=True):
        if sum(counts) >= min_visits:
            s, d = chi_square_fit(counts, row)
            statistic, df = statistic + s, df + d
    if df == 0:
        raise ValueError("no state was visited enough to test")
    return p_value(statistic, df)


def homogeneity_p_value(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Two-sample test: do transition counts ``a`` and ``b`` (``[state][next]``) come from one
    chain? Per state, a 2 x K contingency table (K: next tokens seen, rare ones pooled), the
    statistics and degrees of freedom summed over states."""
    import torch

    statistic, df = 0.0, 0
    for row_a, row_b in zip(a, b, strict=True):
        table = torch.tensor([row_a, row_b], dtype=torch.float64)
        if bool((table.sum(1) == 0).any()):
            continue
        columns = table.sum(0)
        expected = table.sum(1, keepdim=True) * columns / table.sum()
        rare = expected.min(0).values < MIN_EXPECTED
        table = torch.cat([table[:, ~rare], table[:, rare].sum(1, keepdim=True)], dim=1)
        table = table[:, table.sum(0) > 0]
        if table.shape[1] < 2:
            continue
        expected = table.sum(1, keepdim=True) * table.sum(0) / table.sum()
        statistic += float(((table - expected) ** 2 / expected).sum())
        df += table.shape[1] - 1
    if df == 0:
        raise ValueError("no state with enough samples in both to compare")
    return p_value(statistic, df)
