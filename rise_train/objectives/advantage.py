"""Signed advantages with a clipped sequence ratio: on-policy cycles (the study's E4; not RISE).

RISE's objective only ever raises probabilities. Here ``build`` makes every sampled candidate an
example weighted by its advantage A = r − b, where b is the mean reward of the other candidates
of the same state (the leave-one-out baseline of RLOO: Kool et al. 2019; Ahmadian et al., arXiv
2402.14740), so a sample worse than its state's others — a copy of a wrong attempt among them —
is pushed down. ``A × NLL`` is unbounded below for A < 0, so each example instead uses the
clipped sequence-ratio objective of GSPO (Zheng et al., arXiv 2507.18071; PPO's clip, Schulman
et al., arXiv 1707.06347, on a length-normalised sequence ratio):

    ρ = exp(mean-token log π(y|x) − mean-token log π_old(y|x)),
    example = −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A)  (+ kl_coef · ½(mean-token log π − log π_anchor)²)

π_old is the policy that collected the examples (the model before the first step, scored once).
At ρ = 1 the gradient is that of ``A × NLL``; a row stops pushing once its ratio has moved ε its
advantage's way, so a bad sample is pushed down a bounded amount. The optional penalty holds the
anchored rows near ``anchor_model``: first answers only (SCoRe's turn-1 KL, Kumar et al., arXiv
2409.12917, as the k2 estimator on the sampled answers) or every example (a trust region on the
whole policy). TRL's ``GRPOTrainer`` is not used: its rollouts live inside the trainer, while
RISE's multi-turn collection runs (and resumes) on the project's vLLM loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

import torch

from rise_train.objectives.base import Objective, Stats, masked_mean
from rise_train.scoring import mean_nll, sequence_logps

if TYPE_CHECKING:
    from rise_train.data import ExampleDataset
    from rise_train.scoring import Scorer
    from rise_train.train import TrainConfig

__all__ = ["Advantage", "advantage_loss", "clipped_ratio_loss"]

logger = logging.getLogger(__name__)


def clipped_ratio_loss(
    mean_logp: torch.Tensor, old_mean_logp: torch.Tensor, advantage: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO's per-sequence loss ``-min(ρA, clip(ρ, 1-ε, 1+ε)A)`` and whether it is clipped [N].

    ``mean_logp`` / ``old_mean_logp``: mean target-token log-probs under the policy and the
    collecting policy; ``ρ = exp(mean_logp - old_mean_logp)``. "Clipped" means the clipped
    branch is the smaller one and the row gives no gradient (detached bool).
    """
    ratio = torch.exp(mean_logp - old_mean_logp)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - eps, 1.0 + eps) * advantage
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def advantage_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    old_logps: torch.Tensor,
    anchor_logps: torch.Tensor | None = None,
    *,
    clip_eps: float,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's loss and detached stats; every row is an example, its weight the advantage.

    logits [R, L, V], labels [R, L], weights [R]; ``old_logps`` [R]: each row's mean
    target-token log-prob under the collecting policy; ``anchor_logps`` [R] under the anchor
    (NaN where a row has no anchor). loss = Σ rows (clipped ratio + penalty) / R; a row with no
    target tokens contributes exactly 0. Stats: ``sft_nll`` (unweighted mean), ``clip_fraction``
    (rows whose clipped branch was taken), ``anchor_kl`` (mean ½(log-ratio)² over anchored rows)
    and ``n_sft`` (rows with a target).
    """
    logp, n_tokens = sequence_logps(logits, labels)  # [R], [R]
    nll = mean_nll(logp, n_tokens)
    has = n_tokens > 0
    mean_logp = -nll
    per_row, clipped = clipped_ratio_loss(
        mean_logp, old_logps.to(mean_logp.dtype), weights.to(mean_logp.dtype), clip_eps
    )
    anchor_kl = nll.new_zeros(())
    if anchor_logps is not None and kl_coef > 0:
        anchored = has & ~torch.isnan(anchor_logps)
        log_ratio = mean_logp - torch.nan_to_num(anchor_logps.to(mean_logp.dtype))
        penalty = 0.5 * log_ratio.pow(2)
        per_row = per_row + kl_coef * torch.where(anchored, penalty, 0.0)
        anchor_kl = masked_mean(penalty, anchored)
    loss = torch.where(has, per_row, 0.0).sum() / max(nll.size(0), 1)
    stats = {
        "sft_nll": masked_mean(nll, has),
        "clip_fraction": masked_mean(clipped.float(), has),
        "anchor_kl": anchor_kl,
        "n_sft": has.sum(),
    }
    return loss, stats


@dataclass
class Advantage(Objective):
    """The clipped sequence ratio on signed advantages, with an optional anchor penalty."""

    clip_eps: float = 0.2  # ε
    kl_coef: float = 0.0  # weight of the anchor penalty (0: none)
    anchor_turns: Literal["first", "all"] = "first"
    anchor_model: str | None = None  # None: the initial model, i.e. the collecting policy

    name = "advantage"
    stats = ("sft_nll", "clip_fraction", "anchor_kl")
    signed = True

    def __post_init__(self) -> None:
        if self.clip_eps <= 0:
            raise ValueError(f"objective 'advantage' needs policy_clip > 0, got {self.clip_eps}")

    @classmethod
    def from_config(cls, config: TrainConfig) -> Self:
        return cls(
            clip_eps=config.policy_clip,
            kl_coef=config.anchor_kl_coef,
            anchor_turns=config.anchor_turns,
            anchor_model=config.anchor_model,
        )

    def prepare(self, model: torch.nn.Module, dataset: ExampleDataset, scorer: Scorer) -> None:
        """The collecting policy's log-probs of every example (the model before any update),
        then the anchor's of the anchored rows."""
        n = scorer.example_logps(model, dataset, "old_logp")
        logger.info("collecting-policy log-probs of %d examples computed", n)
        if self.kl_coef > 0:
            n = self.precompute_anchor(dataset, scorer)
            logger.info("anchor log-probs of %d examples computed", n)

    def precompute_anchor(self, dataset: ExampleDataset, scorer: Scorer) -> int:
        """The anchored rows' log-probs (first answers, or every example with ``anchor_turns``
        ``all``) under ``anchor_model``; without one, the collecting policy's, which
        ``old_logp`` already holds (no second pass). Returns the number of rows anchored."""
        first_only = self.anchor_turns == "first"
        if not self.anchor_model:
            rows = dataset.examples(first_only)
            for row in rows:
                row["anchor_logp"] = row["old_logp"]
            return len(rows)
        anchor = scorer.load(self.anchor_model)
        try:
            return scorer.example_logps(anchor, dataset, "anchor_logp", first_turn_only=first_only)
        finally:
            del anchor

    def loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Stats]:
        old = batch.get("sft_old_logps")
        if old is None:
            raise ValueError(
                "objective 'advantage' needs the collecting policy's log-probs of every example "
                "(Advantage.prepare, before training)"
            )
        loss, stats = advantage_loss(
            logits,
            batch["labels"],
            batch["weights"],
            old,
            batch.get("sft_anchor_logps"),
            clip_eps=self.clip_eps,
            kl_coef=self.kl_coef,
        )
        n = stats["n_sft"]
        return loss, {name: (stats[name], n) for name in self.stats}
