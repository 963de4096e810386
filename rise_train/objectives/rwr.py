"""Reward-weighted regression: RISE's objective (docs/RISE.md §4).

RWR (Peters & Schaal, "Reinforcement learning by reward-weighted regression for operational
space control", ICML 2007) fits the policy to its own samples, each weighted by exp(r/τ). RISE
(Qu, Zhang, Garg & Kumar, NeurIPS 2024, arXiv 2407.18219, §4) trains its multi-turn rollouts
this way: every action is an example, wrong turns included at a lower weight, so the model
learns from the good and the bad parts of its rollouts. ``build`` computes the weights
(τ = 0.4: correct ≈ 12.18, wrong 1.0, unparseable ≈ 0.082); the loss here is

    example = weight × mean target-token NLL,    loss = mean over the batch's examples.

An example whose every label is masked has a loss of exactly 0 (its token count is clamped to 1)
and no gradient; it still counts in the mean's denominator.
"""

from __future__ import annotations

import torch

from rise_train.objectives.base import Objective, Stats, refuse_negative
from rise_train.scoring import mean_nll, sequence_logps

__all__ = ["RWR", "weighted_nll"]


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``weight × mean target-token NLL`` of each example.

    logits [B, L, V], labels [B, L], weights [B] → scalar.
    """
    per_example = mean_nll(*sequence_logps(logits, labels))  # [B]
    return (per_example * weights.to(per_example.dtype)).mean()


class RWR(Objective):
    """Weight × NLL, the weights exp(r/τ)."""

    name = "rwr"

    def loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Stats]:
        refuse_negative(batch["weights"])
        return weighted_nll(logits, batch["labels"], batch["weights"]), {}
