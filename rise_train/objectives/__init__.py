"""The training objectives, one module each, chosen by name (docs/RISE.md §4).

A run names its objective once (``objective`` in :class:`~rise_train.build.BuildConfig` and in
the training config; ``iterate --objective`` sets both). The name says how ``build`` weights the
examples and which loss the trainer optimises; the trainer calls the configured objective and
never guesses it from the data.

==========  =================================================  ===============================
name        example weight (``build``)                         loss (the trainer)
==========  =================================================  ===============================
rwr         exp(r/τ) — RISE's objective                        weight × mean-token NLL
awr         max(0, exp(r/τ) − the problem's mean)              weight × mean-token NLL
sft         1                                                  mean-token NLL
advantage   r − leave-one-out baseline, signed (study: E4)     clipped sequence ratio, anchor
preference  exp(r/τ), plus preference pairs (study: E2, E3)    weight × NLL; DPO + NLL on pairs
==========  =================================================  ===============================

This package module stays free of torch so that configs and ``--help`` can name objectives
cheaply; an objective's module is imported on first use, as vLLM's model registry does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from rise_train.objectives.base import Objective
    from rise_train.train import TrainConfig

ObjectiveName = Literal["rwr", "awr", "sft", "advantage", "preference"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)

# name → (module, class), loaded lazily
_REGISTRY = {
    "rwr": ("rwr", "RWR"),
    "awr": ("awr", "AWR"),
    "sft": ("sft", "SFT"),
    "advantage": ("advantage", "Advantage"),
    "preference": ("preference", "Preference"),
}
assert set(_REGISTRY) == set(OBJECTIVES)


def check_objective(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is an objective."""
    if name not in _REGISTRY:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")


def objective_class(name: str) -> type[Objective]:
    """The class of objective ``name`` (its module imported now)."""
    check_objective(name)
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_objective(config: TrainConfig) -> Objective:
    """The objective ``config.objective``, with its hyper-parameters from ``config``."""
    return objective_class(config.objective).from_config(config)


__all__ = ["OBJECTIVES", "ObjectiveName", "check_objective", "make_objective", "objective_class"]
