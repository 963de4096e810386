"""RWR plus a preference loss against copying (the study's E2 and E3; not RISE).

Nothing in reward-weighted regression lowers the probability of repeating a wrong attempt.
``build`` adds preference pairs (records.PreferencePair): in a state after a wrong attempt, a
correct candidate (chosen) over the attempt repeated verbatim (rejected); with ``fix+keep`` also,
after a right attempt, the attempt repeated over a wrong candidate. A pair is two rows of a
batch, trained with DPO (Rafailov et al., arXiv 2305.18290, NeurIPS 2023) plus the NLL of the
chosen response, the regulariser of iterative RPO (Pang et al., arXiv 2404.19733) that keeps DPO
from lowering both responses together. With log-probs summed over each response and π_ref the
model before training (scored once, before the first step):

    m       = β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]
    pair    = weight · (pref_coef · (−log σ(m)) + nll_coef · mean-token NLL(y_w|x))
    example = weight · mean-token NLL(target|x)      (RWR, exp(r/τ))
    loss    = (Σ examples + Σ pairs) / (number of examples + number of pairs)

TRL's ``DPOTrainer`` is not used: it cannot put weighted examples and weighted pairs into one
batch and one loss; its sigmoid loss and ``rpo_alpha`` term are the few lines below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import torch
import torch.nn.functional as F

from rise_train.objectives.base import Objective, Stats, masked_mean, refuse_negative
from rise_train.scoring import mean_nll, sequence_logps

if TYPE_CHECKING:
    from rise_train.data import ExampleDataset
    from rise_train.scoring import Scorer
    from rise_train.train import TrainConfig

__all__ = ["Preference", "dpo_loss", "preference_loss"]

logger = logging.getLogger(__name__)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's per-pair loss ``-log σ(m)`` and the (detached) implicit reward margin ``m`` [P].

    ``m = β·((π_c − ref_c) − (π_r − ref_r))`` on summed sequence log-probs: the chosen
    response's implicit reward minus the rejected one's. m = 0 (policy = reference) gives log 2.
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin.detach()


def preference_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    sft_index: torch.Tensor | None = None,
    chosen_index: torch.Tensor | None = None,
    rejected_index: torch.Tensor | None = None,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    pref_coef: float = 1.0,
    nll_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's loss and detached stats, over examples and preference pairs together.

    logits [R, L, V], labels [R, L], weights [R] (a pair's weight is read at its chosen row);
    ``sft_index`` [S], ``chosen_index`` / ``rejected_index`` [P] are row numbers and
    ``ref_*_logps`` [P] the reference's summed log-probs of each pair's responses. Without
    pair indices every row is an example and the loss equals
    :func:`~rise_train.objectives.rwr.weighted_nll`; without ``sft_index`` every row outside a
    pair is one. A row or pair with no target tokens (either side of a pair) contributes
    exactly 0, with no gradient; a negative example weight is an error.

    Stats: ``sft_nll`` (unweighted mean over examples), ``dpo``, ``pref_accuracy`` (fraction
    of pairs with a positive margin) and ``margin`` (means over pairs), ``n_sft``, ``n_pairs``.
    """
    logp, n_tokens = sequence_logps(logits, labels)  # [R], [R]
    nll = mean_nll(logp, n_tokens)  # [R]
    weights = weights.to(nll.dtype)
    device = nll.device
    if chosen_index is None or rejected_index is None:
        if chosen_index is not None or rejected_index is not None:
            raise ValueError("chosen_index and rejected_index go together")
        chosen_index = rejected_index = torch.zeros(0, dtype=torch.long, device=device)
    if sft_index is None:  # every row that is not half of a pair
        in_pair = torch.zeros(nll.size(0), dtype=torch.bool, device=device)
        in_pair[chosen_index] = True
        in_pair[rejected_index] = True
        sft_index = (~in_pair).nonzero().squeeze(1)
    n_pairs = chosen_index.numel()

    sft_has = n_tokens[sft_index] > 0  # [S]
    sft_weights = weights[sft_index]
    refuse_negative(sft_weights)
    sft_total = (sft_weights * nll[sft_index]).sum()

    if n_pairs:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("preference pairs need the reference log-probs of both responses")
        dpo, margin = dpo_loss(
            logp[chosen_index],
            logp[rejected_index],
            ref_chosen_logps.to(logp.dtype),
            ref_rejected_logps.to(logp.dtype),
            beta,
        )  # [P]
        valid = (n_tokens[chosen_index] > 0) & (n_tokens[rejected_index] > 0)  # [P]
        per_pair = pref_coef * dpo + nll_coef * nll[chosen_index]
        # where(), not a product: it drops the masked branch entirely, so no 0·inf = NaN.
        pair_total = torch.where(valid, weights[chosen_index] * per_pair, 0.0).sum()
    else:
        dpo = margin = torch.zeros(0, device=device)
        valid = torch.zeros(0, dtype=torch.bool, device=device)
        pair_total = nll.new_zeros(())

    loss = (sft_total + pair_total) / max(sft_index.numel() + n_pairs, 1)
    stats = {
        "sft_nll": masked_mean(nll[sft_index], sft_has),
        "dpo": masked_mean(dpo, valid),
        "pref_accuracy": masked_mean((margin > 0).float(), valid),
        "margin": masked_mean(margin, valid),
        "n_sft": sft_has.sum(),
        "n_pairs": valid.sum(),
    }
    return loss, stats


@dataclass
class Preference(Objective):
    """Weight × NLL on examples, weight × (DPO + NLL on the chosen) on preference pairs."""

    beta: float = 0.1  # DPO's β
    pref_coef: float = 1.0  # weight of the DPO term in a pair's loss
    nll_coef: float = 1.0  # weight of the chosen response's NLL (0: plain DPO)

    name = "preference"
    stats = ("sft_nll", "dpo", "pref_accuracy", "margin")
    trains_pairs = True

    @classmethod
    def from_config(cls, config: TrainConfig) -> Self:
        return cls(beta=config.pref_beta, pref_coef=config.pref_coef, nll_coef=config.pref_nll_coef)

    def check(self, dataset: ExampleDataset, source: str) -> None:
        super().check(dataset, source)
        if not dataset.n_pairs:
            logger.warning("%s holds no preference pairs: the examples' RWR loss alone", source)

    def prepare(self, model: torch.nn.Module, dataset: ExampleDataset, scorer: Scorer) -> None:
        """The reference's log-probs of every pair: the policy before any update (a resumed run
        loads its checkpoint later, in ``Trainer.train``, so this is still the initial model)."""
        n = scorer.reference_logps(model, dataset)
        logger.info("reference log-probs of %d preference pairs computed", n)

    def loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Stats]:
        # The collator adds the pair tensors only to a batch that holds pairs.
        loss, stats = preference_loss(
            logits,
            batch["labels"],
            batch["weights"],
            sft_index=batch.get("sft_index"),
            chosen_index=batch.get("chosen_index"),
            rejected_index=batch.get("rejected_index"),
            ref_chosen_logps=batch.get("ref_chosen_logps"),
            ref_rejected_logps=batch.get("ref_rejected_logps"),
            beta=self.beta,
            pref_coef=self.pref_coef,
            nll_coef=self.nll_coef,
        )
        n_sft, n_pairs = stats["n_sft"], stats["n_pairs"]
        return loss, {
            "sft_nll": (stats["sft_nll"], n_sft),
            "dpo": (stats["dpo"], n_pairs),
            "pref_accuracy": (stats["pref_accuracy"], n_pairs),
            "margin": (stats["margin"], n_pairs),
        }
