"""The training objective: reward-weighted NLL on examples plus DPO against copying on pairs.

A batch is one padded tensor of token rows. An SFT row contributes ``weight × mean target-token
NLL`` (:func:`weighted_nll`, docs/RISE.md §4). A preference pair (records.PreferencePair: in a
state, ``chosen`` is preferred to ``rejected``, e.g. a correct answer over a verbatim copy of
the wrong attempt) occupies two rows and contributes ``weight × (pref_coef × DPO + nll_coef ×
mean-token NLL of chosen)``: DPO (Rafailov et al., arXiv 2305.18290) against reference
log-probs of the initial model, plus the NLL-on-chosen regulariser of iterative RPO (Pang et
al., arXiv 2404.19733), which keeps DPO from lowering both responses' likelihood together.
:func:`rise_loss` is the mean of those per-row terms over the batch's rows (a pair counts once).

**Signed advantages** (on-policy cycles, ``build --weighting advantage``): an SFT row whose
weight is an advantage A (negative for a sample worse than its state's others) cannot use
``A × NLL`` — a negative weight makes that loss unbounded below. With ``clip_eps`` set, every
SFT row uses the clipped sequence-ratio objective of GSPO (Zheng et al., arXiv 2507.18071):
``-min(ρ·A, clip(ρ, 1-ε, 1+ε)·A)`` with ``ρ = exp(mean-token log π − mean-token log π_old)``
against the collecting policy's log-probs precomputed once. At ρ = 1 its gradient is that of
``A × NLL``; once a row's ratio has moved ε in its advantage's direction the row stops pushing,
so a rejected sample's likelihood is lowered a bounded amount, not to zero. Optionally a
penalty ``kl_coef · ½(mean-token log π − mean-token log π_anchor)²`` on anchored rows — turn-1
rows (SCoRe's turn-1 KL to the base, Kumar et al., arXiv 2409.12917, as the k2 estimator on the
sampled first answers) keeps the first answer near the anchor's while the corrections move;
every row (``--anchor-turns all``) holds the whole policy near it.

TRL's ``GRPOTrainer`` is not used for signed advantages either: its rollouts live inside the
trainer, while RISE's multi-turn collection already runs (and resumes) on the project's vLLM
loop; what is needed from it is the clipped objective, a few lines below.

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
    sft_old_logps: torch.Tensor | None = None,
    sft_anchor_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    pref_coef: float = 1.0,
    nll_coef: float = 1.0,
    clip_eps: float | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's loss and detached stats, over SFT rows and preference pairs together.

    logits [R, L, V], labels [R, L], weights [R] (a pair's weight is read at its chosen row);
    ``sft_index`` [S], ``chosen_index`` / ``rejected_index`` [P] are row numbers and
    ``ref_*_logps`` [P] the reference's summed log-probs of each pair's responses. Without
    pair indices every row is an SFT row and the loss equals :func:`weighted_nll`; without
    ``sft_index`` every row outside a pair is one.

    loss = (Σ_sft w·NLL + Σ_pairs w·(pref_coef·DPO + nll_coef·NLL_chosen)) / (S + P). A row or
    pair with no target tokens (either side of a pair) contributes exactly 0, with no gradient.

    With ``clip_eps`` (signed advantages, module docstring), ``sft_old_logps`` [S] holds each SFT
    row's mean target-token log-prob under the collecting policy and an SFT row's term is
    :func:`clipped_ratio_loss` with its weight as the advantage; ``sft_anchor_logps`` [S] (NaN
    where a row has no anchor) adds ``kl_coef · ½(mean log π −
    anchor)²`` (which rows have one is the trainer's choice: ``anchor_turns``). Without
    ``clip_eps`` a negative SFT weight is an error.

    Stats: ``sft_nll`` (unweighted mean over SFT rows), ``dpo``, ``pref_accuracy`` (fraction of
    pairs with a positive margin) and ``margin`` (means over pairs), ``n_sft``, ``n_pairs``,
    and with ``clip_eps`` ``clip_fraction`` (SFT rows whose clipped branch was taken) and
    ``anchor_kl`` (mean ½(log-ratio)² over anchored rows).
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
    clip_fraction = anchor_kl = nll.new_zeros(())
    if clip_eps is None:
        if bool((sft_weights < 0).any()):
            raise ValueError("negative example weights (advantages) need clip_eps")
        sft_total = (sft_weights * nll[sft_index]).sum()
    else:
        if sft_old_logps is None:
            raise ValueError("clip_eps needs sft_old_logps, the collecting policy's log-probs")
        mean_logp = -nll[sft_index]  # [S]
        per_row, clipped = clipped_ratio_loss(
            mean_logp, sft_old_logps.to(mean_logp.dtype), sft_weights, clip_eps
        )
        clip_fraction = masked_mean(clipped.float(), sft_has)
        if sft_anchor_logps is not None and kl_coef > 0:
            anchored = sft_has & ~torch.isnan(sft_anchor_logps)
            log_ratio = mean_logp - torch.nan_to_num(sft_anchor_logps.to(mean_logp.dtype))
            penalty = 0.5 * log_ratio.pow(2)
            per_row = per_row + kl_coef * torch.where(anchored, penalty, 0.0)
            anchor_kl = masked_mean(penalty, anchored)
        sft_total = torch.where(sft_has, per_row, 0.0).sum()

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

    stats = {
        "sft_nll": masked_mean(nll[sft_index], sft_has),
        "dpo": masked_mean(dpo, valid),
        "pref_accuracy": masked_mean((margin > 0).float(), valid),
        "margin": masked_mean(margin, valid),
        "n_sft": sft_has.sum(),
        "n_pairs": valid.sum(),
        "clip_fraction": clip_fraction,
        "anchor_kl": anchor_kl,
    }
    return loss, stats


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``keep`` (0 when nothing is kept), detached, fp32."""
    values = values.detach().float()
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp(min=1)
