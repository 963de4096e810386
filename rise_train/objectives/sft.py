"""Plain supervised fine-tuning: every kept example at weight 1.

With ``--criteria success`` this is rejection-sampling fine-tuning (RFT; Yuan et al., arXiv
2308.01825, 2023): the model trained on its own right answers only. The study trains its
compute-matched single-turn control this way (docs/EXPERIMENTS.md, "the single-turn control").
The loss is :class:`~rise_train.objectives.rwr.RWR`'s with unit weights: the mean NLL.
"""

from __future__ import annotations

from rise_train.objectives.rwr import RWR

__all__ = ["SFT"]


class SFT(RWR):
    """The mean NLL of the examples (weight 1 each)."""

    name = "sft"
