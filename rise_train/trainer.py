"""The trainer: Hugging Face's ``Trainer`` with the configured objective as its loss.

Only the loss changes: ``compute_loss`` runs the model and hands its logits and the batch to the
objective (:mod:`rise_train.objectives`, chosen by name in the config), and the objective's
statistics join the logged loss. Optimiser, schedule, gradient accumulation, checkpoints and
resume, mixed precision, DDP, DeepSpeed ZeRO-3 and FSDP (``accelerate launch --config_file
rise_train/configs/...``) are the stock ones.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from rise_train.objectives.base import Objective, Stats

__all__ = ["RiseTrainer"]


class RiseTrainer(Trainer):
    """``Trainer`` whose loss is ``objective.loss`` of the batch.

    Every logged training loss comes with the objective's statistics over the same steps (for
    example ``dpo`` and ``margin`` for preference pairs, ``clip_fraction`` and ``anchor_kl`` for
    signed advantages): means over every row of the logging window that has them.
    """

    # compute_loss returns a per-batch mean, so the Trainer must still divide by the number of
    # gradient-accumulation steps (left to None it would guess from the model's loss kwargs).
    loss_is_scaled_for_ga = False
    objective: Objective
    _stat_sums: torch.Tensor | None = None  # [2 × stats] on the device, summed since the last log

    def __init__(self, *args: Any, objective: Objective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss, stats = self.objective.loss(outputs.logits, inputs)
        if model.training and self.objective.stats:
            self._add_stats(stats)
        return (loss, outputs) if return_outputs else loss

    def _add_stats(self, stats: Stats) -> None:
        # Sums since the last log, kept on the device (no sync per step): each statistic's
        # count-weighted mean and its count, so the logged value is a mean over the window.
        parts = []
        for name in self.objective.stats:
            mean, count = stats[name]
            count = count.float()
            parts += [mean * count, count]
        row = torch.stack(parts)
        self._stat_sums = row if self._stat_sums is None else self._stat_sums + row

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        sums = self._stat_sums
        if "loss" in logs and sums is not None:  # a training log: the window's stats, then reset
            self._stat_sums = None
            if self.args.world_size > 1:  # every rank logs here (the loss was gathered too)
                sums = self.accelerator.reduce(sums, reduction="sum")
            totals = sums.tolist()
            logs = dict(logs)
            for i, name in enumerate(self.objective.stats):
                total, count = totals[2 * i], totals[2 * i + 1]
                if count:
                    logs[name] = total / count
        super().log(logs, start_time)
