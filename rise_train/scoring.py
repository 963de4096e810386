"""Log-probabilities of target tokens: per batch for the objectives, and per row with a fixed
model, once before the first training step.

The objectives compare the policy with fixed models: preference pairs with the reference (the
model before training), signed advantages with the collecting policy and an anchor. Their
log-probs do not change during training, so they are computed once here and stored in the
dataset's rows, as TRL's ``precompute_ref_log_probs`` does; the collator then batches them with
the rows.

Every function takes logits [B, L, V] and labels [B, L] with position i predicting token i+1 and
``IGNORE_INDEX`` marking non-targets; log-probs are computed in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rise_train.data import ExampleDataset, WeightedCollator
from rise_train.records import IGNORE_INDEX

__all__ = [
    "Scorer",
    "mean_nll",
    "precompute_reference_logps",
    "precompute_sft_logps",
    "sequence_logps",
]


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


# -- per row, with a fixed model -------------------------------------------------------------------


@torch.no_grad()
def precompute_reference_logps(
    model: torch.nn.Module,
    dataset: ExampleDataset,
    collator: WeightedCollator,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> int:
    """Store the model's summed log-probs of every pair's chosen and rejected response.

    Called once before training, with the initial policy as the reference (under LoRA the
    freshly wrapped model equals the base: its B matrices start at zero). Eval mode (no
    dropout), no grad, sequences batched by length. Returns the number of pairs scored.
    """
    pairs = dataset.pairs()
    jobs = [
        (row, key, row[ids], row[labels])
        for row in pairs
        for key, ids, labels in (
            ("ref_chosen_logp", "input_ids", "labels"),
            ("ref_rejected_logp", "rejected_input_ids", "rejected_labels"),
        )
    ]
    _score(model, jobs, collator, batch_size, device, autocast_dtype, mean=False)
    return len(pairs)


@torch.no_grad()
def precompute_sft_logps(
    model: torch.nn.Module,
    dataset: ExampleDataset,
    collator: WeightedCollator,
    key: str = "old_logp",
    *,
    first_turn_only: bool = False,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> int:
    """Store the model's mean target-token log-prob of every example under ``key``.

    ``old_logp`` with the initial policy (the policy that collected the examples, for the
    clipped ratio of signed advantages); ``anchor_logp`` with the anchor model, on first answers
    only with ``first_turn_only`` (SCoRe's turn-1 KL). Returns the number of examples scored.
    """
    rows = dataset.examples(first_turn_only)
    jobs = [(row, key, row["input_ids"], row["labels"]) for row in rows]
    _score(model, jobs, collator, batch_size, device, autocast_dtype, mean=True)
    return len(rows)


@dataclass
class Scorer:
    """How training scores rows with a fixed model: what an objective's ``prepare`` is given.

    ``load_dtype`` is the dtype a second model (the anchor) is loaded in: the policy's.
    """

    collator: WeightedCollator
    batch_size: int = 8
    device: torch.device | str | None = None
    autocast_dtype: torch.dtype | None = None
    load_dtype: torch.dtype = torch.float32

    def reference_logps(self, model: torch.nn.Module, dataset: ExampleDataset) -> int:
        """:func:`precompute_reference_logps` with these settings."""
        self._place(model)
        return precompute_reference_logps(model, dataset, self.collator, **self._settings())

    def example_logps(
        self,
        model: torch.nn.Module,
        dataset: ExampleDataset,
        key: str,
        *,
        first_turn_only: bool = False,
    ) -> int:
        """:func:`precompute_sft_logps` with these settings."""
        self._place(model)
        return precompute_sft_logps(
            model, dataset, self.collator, key, first_turn_only=first_turn_only, **self._settings()
        )

    def load(self, name: str) -> torch.nn.Module:
        """Another model to score with (a folder or hub name)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name, dtype=self.load_dtype)

    def _place(self, model: torch.nn.Module) -> None:
        """On the scoring device, unless ZeRO-3 partitions the weights (then they are gathered
        for each forward)."""
        if not is_zero3() and self.device is not None:
            model.to(self.device)

    def _settings(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "device": self.device,
            "autocast_dtype": self.autocast_dtype,
        }


def _score(
    model: torch.nn.Module,
    jobs: list[tuple[dict[str, Any], str, list[int], list[int]]],
    collator: WeightedCollator,
    batch_size: int,
    device: torch.device | str | None,
    autocast_dtype: torch.dtype | None,
    *,
    mean: bool,
) -> None:
    """Write each job's summed (or mean) target log-prob into ``row[key]``: eval mode, no grad,
    longest sequences first so padding stays small."""
    if not jobs:
        return
    jobs = sorted(jobs, key=lambda job: -len(job[2]))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _gathered_if_zero3(model):
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                batch = collator(
                    [{"input_ids": ids, "labels": lab, "weight": 1.0} for _, _, ids, lab in chunk]
                )
                amp = (
                    torch.autocast(device.type, dtype=autocast_dtype)
                    if autocast_dtype is not None
                    else contextlib.nullcontext()
                )
                with amp:
                    logits = model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                    ).logits
                logp, n_tokens = sequence_logps(logits, batch["labels"].to(device))
                if mean:
                    logp = -mean_nll(logp, n_tokens)
                for (row, key, _, _), value in zip(chunk, logp.tolist(), strict=True):
                    row[key] = value
    finally:
        model.train(was_training)


def is_zero3() -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the weights of models loaded now."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _gathered_if_zero3(model: torch.nn.Module) -> Any:
    """Under DeepSpeed ZeRO-3 the loaded weights are partitioned: gather them for the forward."""
    if not is_zero3():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
