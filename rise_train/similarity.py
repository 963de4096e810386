"""How alike two attempts are: the one edit-distance ratio used by building and evaluation.

Copying the previous attempt is the failure RISE training must avoid (behavior collapse), so
the same measure decides which correct candidate to train on (the least similar to the attempt
it corrects) and reports how much consecutive turns differ at evaluation. It is the normalised
Levenshtein similarity of the two token-id sequences, from ``rapidfuzz`` (a maintained C++
implementation; difflib's ratio is a different, non-metric measure and ~100x slower):

    1 - distance(a, b) / max(len(a), len(b))        (1.0 for two empty sequences)

Token ids, not characters: the model copies tokens, and ids are what training sees.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein


def edit_ratio(a: Sequence[int] | str, b: Sequence[int] | str) -> float:
    """Similarity in [0, 1]: 1 identical, 0 nothing in common (see the module docstring)."""
    if not a and not b:
        return 1.0
    return float(Levenshtein.normalized_similarity(a, b))
