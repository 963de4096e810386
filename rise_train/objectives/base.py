"""What an objective is to the trainer: the rows it accepts, what it precomputes, and its loss.

The trainer (:class:`~rise_train.trainer.RiseTrainer`) holds one objective, made from the
training config by :func:`rise_train.objectives.make_objective`. Before training, ``check``
refuses rows the objective has no loss for (data built for another objective) and ``prepare``
stores the fixed models' log-probs it compares against; every step, ``loss`` turns the batch's
logits into the loss and a few detached statistics that are logged beside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Self

import torch

if TYPE_CHECKING:
    from rise_train.data import ExampleDataset
    from rise_train.scoring import Scorer
    from rise_train.train import TrainConfig

# name → (mean over the batch's rows that have it, how many rows that is); detached
Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]


class Objective(ABC):
    """A training objective (see :mod:`rise_train.objectives` for the list)."""

    name: ClassVar[str]
    stats: ClassVar[tuple[str, ...]] = ()  # the statistics its loss returns, logged per window
    signed: ClassVar[bool] = False  # trains negative example weights
    trains_pairs: ClassVar[bool] = False  # trains preference pairs

    @classmethod
    def from_config(cls, config: TrainConfig) -> Self:
        """The objective with its hyper-parameters read from the training config."""
        return cls()

    def check(self, dataset: ExampleDataset, source: str) -> None:
        """Refuse rows this objective has no loss for: the data was built for another one."""
        negative = sum(row["weight"] < 0 for row in dataset.examples())
        if negative and not self.signed:
            raise ValueError(
                f"{negative} examples in {source} have negative weights (advantages); "
                "train them with objective 'advantage' (--objective advantage, --policy-clip), "
                "the clipped ratio objective"
            )
        if dataset.n_pairs and not self.trains_pairs:
            raise ValueError(
                f"{source} holds {dataset.n_pairs} preference pairs; train them with objective "
                "'preference' (--objective preference)"
            )

    def prepare(self, model: torch.nn.Module, dataset: ExampleDataset, scorer: Scorer) -> None:
        """Store in ``dataset``'s rows the fixed log-probs the loss needs (none by default)."""
        return None

    @abstractmethod
    def loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Stats]:
        """The batch's loss (a scalar) and its :data:`Stats`, from logits [R, L, V] and the
        collator's batch (:class:`~rise_train.data.WeightedCollator`)."""


def refuse_negative(weights: torch.Tensor) -> None:
    """Weight × NLL is unbounded below for a negative weight: refuse one."""
    if bool((weights < 0).any()):
        raise ValueError(
            "negative example weights (advantages) need objective 'advantage' (the clipped ratio)"
        )


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``keep`` (0 when nothing is kept), detached, fp32."""
    values = values.detach().float()
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp(min=1)
