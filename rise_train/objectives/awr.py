"""Advantage-weighted regression: the variant of RISE's objective that its paper describes.

AWR (Peng, Kumar, Zhang & Levine, arXiv 1910.00177, 2019) is RWR with the exponentiated reward
replaced by an advantage: here ``build`` subtracts from exp(r/τ) its mean over every candidate of
every turn of the same problem, keeps max(0, ·) and drops the examples left at 0. RISE's paper
(Qu et al. 2024, §4) names this variant; its public code never implemented it. The loss is
:class:`~rise_train.objectives.rwr.RWR`'s, weight × NLL.
"""

from __future__ import annotations

from rise_train.objectives.rwr import RWR

__all__ = ["AWR"]


class AWR(RWR):
    """Weight × NLL, the weights exp(r/τ) minus the problem's mean, clipped at 0."""

    name = "awr"
