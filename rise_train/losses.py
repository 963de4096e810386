"""The training objective: reward-weighted NLL on examples plus DPO against copying on pairs.

A batch is one padded tensor of token rows. An SFT row contributes ``weight × mean target-token
NLL`` (:func:`weighted_nll`, docs/RISE.md §4). A preference pair (records.PreferencePair: in a
state, ``chosen`` is preferred to ``rejected``, e.g. a correct answer over a verbatim copy of
the wrong attempt) occupies two rows and contributes ``weight × (pref_coef × DPO + nll_coef ×
mean-token NLL of chosen)``: DPO (Rafailov et al., arXiv 2305.18290) against reference
log-probs of the initial model, plus the NLL-on-chosen regulariser of iterative RPO (Pang et
al., arXiv 2404.19733), which keeps DPO from lowering both responses' likelihood together.
:func:`rise_loss` is the mean of those per-row terms over the batch's rows (a pair counts once).

TRL is not used: its ``DPOTrainer`` is a whole trainer with its own dataset format and
collator, and cannot put weighted SFT rows and per-pair-weighted pairs into one batch and one
loss, which is the point here. What is needed from it, the DPO sigmoid loss (and its
``rpo_alpha`` NLL term), is a few lines below; reference log-probs are precomputed once by
``train.precompute_reference_logps`` as TRL's ``precompute_ref_log_probs`` would.

Every function takes logits [B, L, V] and labels [B, L] with position i predicting token i+1
and ``IGNORE_INDEX`` marking non-targets; log-probs are computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rise_train.records import IGNORE_INDEX


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's target tokens, and their count: ([B] fp32, [B] long).

    A fully masked row has a sum of 0 over 0 tokens, and no gradient.
    """
    logits = logits[:, :-1, :].float()  # [B, L-1, V]; fp32 so bf16 logits do not lose precision
    targets = labels[:, 1:]  # [B, L-1]
    mask = targets != IGNORE_INDEX
    token_logp = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)  # 0 (and no gradient) at ignored positions
    return (token_logp * mask).sum(dim=1), mask.sum(dim=1)


def mean_nll(logp_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Per-row mean target-token NLL; 0 for a row with no target (the count is clamped to 1)."""
    return -logp_sum / n_tokens.clamp(min=1).to(logp_sum.dtype)


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``weight × mean target-token NLL`` of each example.

    logits [B, L, V], labels [B, L], weights [B] → scalar. A fully masked example has a loss of
    exactly 0 and gives no gradient; it still counts in the batch mean's denominator.
    """
    per_example = mean_nll(*sequence_logps(logits, labels))  # [B]
    return (per_example * weights.to(per_example.dtype)).mean()


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


def rise_loss(
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
    """The batch's loss and detached stats, over SFT rows and preference pairs together.

    logits [R, L, V], labels [R, L], weights [R] (a pair's weight is read at its chosen row);
    ``sft_index`` [S], ``chosen_index`` / ``rejected_index`` [P] are row numbers and
    ``ref_*_logps`` [P] the reference's summed log-probs of each pair's responses. Without
    pair indices every row is an SFT row and the loss equals :func:`weighted_nll`; without
    ``sft_index`` every row outside a pair is one.

    loss = (Σ_sft w·NLL + Σ_pairs w·(pref_coef·DPO + nll_coef·NLL_chosen)) / (S + P). A row or
    pair with no target tokens (either side of a pair) contributes exactly 0, with no gradient.
    Stats: ``sft_nll`` (unweighted mean over SFT rows), ``dpo``, ``pref_accuracy`` (fraction of
    pairs with a positive margin) and ``margin`` (means over pairs), ``n_sft``, ``n_pairs``.
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
    sft_total = (weights[sft_index] * nll[sft_index]).sum()

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

    n_rows = sft_index.numel() + n_pairs
    loss = (sft_total + pair_total) / max(n_rows, 1)

    def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        values = values.detach().float()
        return torch.where(keep, values, 0.0).sum() / keep.sum().clamp(min=1)

    stats = {
        "sft_nll": masked_mean(nll[sft_index], sft_has),
        "dpo": masked_mean(dpo, valid),
        "pref_accuracy": masked_mean((margin > 0).float(), valid),
        "margin": masked_mean(margin, valid),
        "n_sft": sft_has.sum(),
        "n_pairs": valid.sum(),
    }
    return loss, stats
