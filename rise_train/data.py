"""Training rows in memory, and the collator that pads them into batches (docs/RISE.md §4).

:class:`ExampleDataset` holds the rows of a ``build`` file — examples and preference pairs —
re-fitted to the training ``max_length`` with build's rule (the context's left end is cut, the
target kept whole). :class:`WeightedCollator` right-pads a batch to its longest row, never to
``max_length``. The trainer takes rows in random order; ``train_sampling_strategy=
group_by_length`` batches rows of similar length, with less padding. Packing several examples
into one row was left out on purpose: a per-example mean needs per-example segments, and
keeping packed examples from attending to each other needs the flash-attention varlen kernel
(GPU only) or 4-D masks at O(L²) memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from rise_train.build import fit_pair, truncate_left
from rise_train.records import IGNORE_INDEX, PreferencePair, TrainingRow, row_from_dict

__all__ = ["ExampleDataset", "WeightedCollator"]


class ExampleDataset(Dataset):
    """Training rows in memory: examples and preference pairs, fitted to ``max_length``.

    Takes the records of ``records.read_rows`` (or their JSON dicts). Each item is a dict for
    :class:`WeightedCollator`: an example is ``{kind: "sft", input_ids, labels, weight, turn,
    old_logp, anchor_logp}`` (the last two None until :func:`~rise_train.scoring.
    precompute_sft_logps`); a pair is ``{kind: "pair", input_ids, labels, rejected_input_ids,
    rejected_labels, weight, ref_chosen_logp, ref_rejected_logp}`` — its ``input_ids``/``labels``
    are the chosen sequence (prompt + chosen, the prompt masked), so length grouping sees a pair
    by its chosen row. The reference log-probs are None until :func:`~rise_train.scoring.
    precompute_reference_logps` fills them. Rows with nothing to train are dropped (counted).
    """

    def __init__(
        self, rows: Iterable[TrainingRow | dict[str, Any]], max_length: int | None = None
    ) -> None:
        self.rows: list[dict[str, Any]] = []
        self.dropped = 0
        self.n_pairs = 0
        for row in rows:
            record = row_from_dict(row) if isinstance(row, dict) else row
            item = _item(record, max_length)
            if item is None:
                self.dropped += 1
                continue
            self.rows.append(item)
            self.n_pairs += item["kind"] == "pair"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def examples(self, first_turn_only: bool = False) -> list[dict[str, Any]]:
        """The example rows (not pairs), or only the first answers among them."""
        return [
            row
            for row in self.rows
            if row["kind"] == "sft" and (not first_turn_only or row.get("turn", 0) == 0)
        ]

    def pairs(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["kind"] == "pair"]


def _item(row: TrainingRow, max_length: int | None) -> dict[str, Any] | None:
    """The row re-fitted to ``max_length``; None when nothing is left to train."""
    if isinstance(row, PreferencePair):
        if not (row.prompt_ids and row.chosen_ids and row.rejected_ids):
            return None
        pair = fit_pair(row, max_length)
        if pair is None:
            return None
        masked = [IGNORE_INDEX] * len(pair.prompt_ids)
        return {
            "kind": "pair",
            "input_ids": [*pair.prompt_ids, *pair.chosen_ids],
            "labels": [*masked, *pair.chosen_ids],
            "rejected_input_ids": [*pair.prompt_ids, *pair.rejected_ids],
            "rejected_labels": [*masked, *pair.rejected_ids],
            "weight": float(pair.weight),
            "ref_chosen_logp": None,
            "ref_rejected_logp": None,
        }
    n_context = row.n_context
    ids = row.input_ids
    fitted = truncate_left(ids[:n_context], ids[n_context:], max_length)
    if fitted is None or n_context == len(row.labels):
        return None
    prompt, target = fitted
    return {
        "kind": "sft",
        "input_ids": [*prompt, *target],
        "labels": [IGNORE_INDEX] * len(prompt) + row.labels[n_context:],
        "weight": float(row.weight),
        "turn": row.turn,
        "old_logp": None,
        "anchor_logp": None,
    }


@dataclass
class WeightedCollator:
    """Right-pads a batch of examples and pairs into one tensor batch (to its longest row).

    An example is one row; a pair is two, chosen then rejected. Always: ``input_ids``,
    ``attention_mask``, ``labels`` [R, L] and ``weights`` [R] (a pair's weight on both of its
    rows). Only when the batch has pairs: ``sft_index`` [S], ``chosen_index`` and
    ``rejected_index`` [P] (row numbers) and ``ref_chosen_logps`` / ``ref_rejected_logps`` [P].
    Only when the examples carry precomputed log-probs (signed advantages): ``sft_index``,
    ``sft_old_logps`` [S] and ``sft_anchor_logps`` [S] (NaN for a row without an anchor).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences: list[tuple[list[int], list[int], float]] = []  # (ids, labels, weight)
        sft, chosen, rejected, ref_chosen, ref_rejected = [], [], [], [], []
        old: list[float | None] = []
        anchor: list[float] = []
        for f in features:
            kind = f.get("kind", "sft")
            if kind == "sft":
                sft.append(len(sequences))
                sequences.append((f["input_ids"], f["labels"], float(f["weight"])))
                old.append(f.get("old_logp"))
                value = f.get("anchor_logp")
                anchor.append(math.nan if value is None else float(value))
            elif kind == "pair" and "rejected_input_ids" in f:
                if f.get("ref_chosen_logp") is None or f.get("ref_rejected_logp") is None:
                    raise ValueError(
                        "a preference pair has no reference log-probs; "
                        "run precompute_reference_logps on the dataset first"
                    )
                chosen.append(len(sequences))
                sequences.append((f["input_ids"], f["labels"], float(f["weight"])))
                rejected.append(len(sequences))
                sequences.append(
                    (f["rejected_input_ids"], f["rejected_labels"], float(f["weight"]))
                )
                ref_chosen.append(float(f["ref_chosen_logp"]))
                ref_rejected.append(float(f["ref_rejected_logp"]))
            else:
                raise ValueError(f"not a training row of ExampleDataset (kind {kind!r})")
        batch = self._pad(sequences)
        if chosen:
            batch.update(
                sft_index=torch.tensor(sft, dtype=torch.long),
                chosen_index=torch.tensor(chosen, dtype=torch.long),
                rejected_index=torch.tensor(rejected, dtype=torch.long),
                ref_chosen_logps=torch.tensor(ref_chosen, dtype=torch.float32),
                ref_rejected_logps=torch.tensor(ref_rejected, dtype=torch.float32),
            )
        if any(value is not None for value in old):
            if any(value is None for value in old):
                raise ValueError("some examples have collecting-policy log-probs and some not")
            batch.update(
                sft_index=torch.tensor(sft, dtype=torch.long),
                sft_old_logps=torch.tensor(old, dtype=torch.float32),
                sft_anchor_logps=torch.tensor(anchor, dtype=torch.float32),
            )
        return batch

    def _pad(self, sequences: list[tuple[list[int], list[int], float]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _, _ in sequences)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, (ids, row_labels, _) in enumerate(sequences):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            labels[i, :n] = torch.tensor(row_labels, dtype=torch.long)
            attention_mask[i, :n] = 1
        weights = torch.tensor([weight for _, _, weight in sequences], dtype=torch.float32)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "weights": weights,
        }
