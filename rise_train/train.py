"""Reward-weighted SFT of a causal LM on RISE examples (docs/RISE.md §4), on the Hugging Face stack.

Per example: the mean token NLL over its target turn, times the example's weight; the batch
loss is the mean of those weighted per-example losses (:func:`weighted_nll`). Preference pairs
in the same file (copy-as-negative pairs, docs/RISE.md §4 and §10) join the same batches and the
same loss: weight × (DPO + NLL on the chosen response), :func:`rise_train.losses.rise_loss`,
against reference log-probs that :func:`fit` computes once with the initial model before any
update. The trainer is a ``transformers.Trainer`` that changes only ``compute_loss`` (and adds
the pair statistics to its logs); everything else — optimiser, cosine
schedule, gradient accumulation, checkpoints and resume, mixed precision, DDP, DeepSpeed ZeRO-3
and FSDP through ``accelerate launch --config_file rise_train/configs/...`` — is the stock one.

Batches are padded to their longest row, never to ``max_length``, and rows of similar length
are batched together (``train_sampling_strategy="group_by_length"``) so little padding remains.
Packing several examples into one row was left out on purpose: a per-example mean needs
per-example segments, and keeping packed examples from attending to each other needs either
the flash-attention varlen kernel (GPU-only, position-id driven) or 4-D block masks that the
SDPA/eager paths materialise at O(L²) memory; length grouping gets most of the saving with
neither.

Full fine-tuning or LoRA (peft). A LoRA adapter is merged into the base weights before the final
save (``merge_lora``), so ``output_dir`` is always a plain Hugging Face model folder
(safetensors + tokenizer + chat template) that the service / vLLM loads as any model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from rise_train.build import truncate_left
from rise_train.losses import mean_nll, rise_loss, sequence_logps, weighted_nll
from rise_train.records import IGNORE_INDEX, PreferencePair, TrainingRow, read_rows, row_from_dict
from rise_train.train_options import TrainOptions

__all__ = [
    "ExampleDataset",
    "TrainConfig",
    "TrainResult",
    "WeightedCollator",
    "WeightedSFTTrainer",
    "fit",
    "precompute_reference_logps",
    "precompute_sft_logps",
    "train",
    "weighted_nll",
]

logger = logging.getLogger(__name__)


# -- the trainer -----------------------------------------------------------------------------------

PAIR_KEYS = (
    "sft_index",
    "chosen_index",
    "rejected_index",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "sft_old_logps",
    "sft_anchor_logps",
)
STAT_KEYS = ("sft_nll", "dpo", "pref_accuracy", "margin", "clip_fraction", "anchor_kl")


class WeightedSFTTrainer(Trainer):
    """``Trainer`` whose loss is :func:`~rise_train.losses.rise_loss` of the batch.

    An SFT-only batch gives :func:`~rise_train.losses.weighted_nll`; a batch with preference
    pairs adds their DPO + NLL-on-chosen terms, with ``pref_beta``, ``pref_coef`` and
    ``pref_nll_coef`` from the config. When the training data holds pairs, every logged loss
    comes with the stats of the same steps: ``sft_nll``, ``dpo``, ``pref_accuracy``, ``margin``.
    With ``policy_clip`` (signed advantages) SFT rows use the clipped sequence-ratio objective
    against their precomputed collecting-policy log-probs, and the logs add ``clip_fraction``
    and ``anchor_kl``.
    """

    # compute_loss returns a per-batch mean, so the Trainer must still divide by the number of
    # gradient-accumulation steps (left to None it would guess from the model's loss kwargs).
    loss_is_scaled_for_ga = False
    _stat_sums: torch.Tensor | None = None  # [8] on the device, summed since the last log

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels, weights = inputs.pop("labels"), inputs.pop("weights")
        extra: dict[str, Any] = {key: inputs.pop(key) for key in PAIR_KEYS if key in inputs}
        outputs = model(**inputs)
        if "chosen_index" in extra:  # the collator adds the pair keys only to a batch with pairs
            args = cast("TrainConfig", self.args)
            extra.update(beta=args.pref_beta, pref_coef=args.pref_coef, nll_coef=args.pref_nll_coef)
        if "sft_old_logps" in extra:  # ... and these only to examples scored for policy_clip
            args = cast("TrainConfig", self.args)
            extra.update(clip_eps=args.policy_clip, kl_coef=args.anchor_kl_coef)
        loss, stats = rise_loss(outputs.logits, labels, weights, **extra)
        if model.training:
            self._add_stats(stats)
        return (loss, outputs) if return_outputs else loss

    def _add_stats(self, stats: dict[str, torch.Tensor]) -> None:
        # Sums since the last log, kept on the device (no sync per step): counts and
        # count-weighted means, so the logged value is a mean over every row of the window.
        n_sft, n_pairs = stats["n_sft"].float(), stats["n_pairs"].float()
        row = torch.stack(
            [
                n_sft,
                stats["sft_nll"] * n_sft,
                n_pairs,
                stats["dpo"] * n_pairs,
                stats["pref_accuracy"] * n_pairs,
                stats["margin"] * n_pairs,
                stats["clip_fraction"] * n_sft,
                stats["anchor_kl"] * n_sft,
            ]
        )
        self._stat_sums = row if self._stat_sums is None else self._stat_sums + row

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        sums = self._stat_sums
        if "loss" in logs and sums is not None:  # a training log: the window's stats, then reset
            self._stat_sums = None
            clipped = cast("TrainConfig", self.args).policy_clip > 0
            if getattr(self.train_dataset, "n_pairs", 0) or clipped:  # plain SFT logs as before
                if self.args.world_size > 1:  # every rank logs here (the loss was gathered too)
                    sums = self.accelerator.reduce(sums, reduction="sum")
                n_sft, sft_nll, n_pairs, dpo, accuracy, margin, clip, kl = sums.tolist()
                logs = dict(logs)
                if n_sft:
                    logs["sft_nll"] = sft_nll / n_sft
                    if clipped:
                        logs.update(clip_fraction=clip / n_sft, anchor_kl=kl / n_sft)
                if n_pairs:
                    logs.update(dpo=dpo / n_pairs, pref_accuracy=accuracy / n_pairs)
                    logs["margin"] = margin / n_pairs
        super().log(logs, start_time)


# -- data ------------------------------------------------------------------------------------------


class ExampleDataset(Dataset):
    """Training rows in memory: examples and preference pairs, fitted to ``max_length``.

    Takes the records of ``records.read_rows`` (or their JSON dicts). Each item is a dict for
    :class:`WeightedCollator`: an example is ``{kind: "sft", input_ids, labels, weight, turn,
    old_logp, anchor_logp}`` (the last two None until :func:`precompute_sft_logps`); a
    pair is ``{kind: "pair", input_ids, labels, rejected_input_ids, rejected_labels, weight,
    ref_chosen_logp, ref_rejected_logp}`` — its ``input_ids``/``labels`` are the chosen
    sequence (prompt + chosen, the prompt masked), so length grouping sees a pair by its chosen
    row. The reference log-probs are None until :func:`precompute_reference_logps` fills them.
    """

    def __init__(
        self, rows: Iterable[TrainingRow | dict[str, Any]], max_length: int | None = None
    ) -> None:
        self.rows: list[dict[str, Any]] = []
        self.dropped = 0
        self.n_pairs = 0
        for row in rows:
            record = row_from_dict(row) if isinstance(row, dict) else row
            item = _fit(record, max_length)
            if item is None:
                self.dropped += 1
                continue
            self.rows.append(item)
            self.n_pairs += item["kind"] == "pair"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _fit(row: TrainingRow, max_length: int | None) -> dict[str, Any] | None:
    """The row re-fitted to ``max_length`` with build's rule; None when nothing is trainable."""
    if isinstance(row, PreferencePair):
        return _fit_pair(row, max_length)
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


def _fit_pair(pair: PreferencePair, max_length: int | None) -> dict[str, Any] | None:
    """Cut the prompt's left end so prompt + the longer response fits; None if it cannot."""
    if not pair.prompt_ids or not pair.chosen_ids or not pair.rejected_ids:
        return None
    longest = max(len(pair.chosen_ids), len(pair.rejected_ids))
    fitted = truncate_left(pair.prompt_ids, [0] * longest, max_length)
    if fitted is None:
        return None
    prompt = fitted[0]
    masked = [IGNORE_INDEX] * len(prompt)
    return {
        "kind": "pair",
        "input_ids": [*prompt, *pair.chosen_ids],
        "labels": [*masked, *pair.chosen_ids],
        "rejected_input_ids": [*prompt, *pair.rejected_ids],
        "rejected_labels": [*masked, *pair.rejected_ids],
        "weight": float(pair.weight),
        "ref_chosen_logp": None,
        "ref_rejected_logp": None,
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
    pairs = [row for row in dataset.rows if row["kind"] == "pair"]
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
    rows = _sft_rows(dataset, first_turn_only)
    jobs = [(row, key, row["input_ids"], row["labels"]) for row in rows]
    _score(model, jobs, collator, batch_size, device, autocast_dtype, mean=True)
    return len(rows)


def _sft_rows(dataset: ExampleDataset, first_turn_only: bool) -> list[dict[str, Any]]:
    """The dataset's example rows (not pairs), or its first answers only."""
    return [
        row
        for row in dataset.rows
        if row["kind"] == "sft" and (not first_turn_only or row.get("turn", 0) == 0)
    ]


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


def _is_zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _gathered_if_zero3(model: torch.nn.Module) -> Any:
    """Under DeepSpeed ZeRO-3 the loaded weights are partitioned: gather them for the forward."""
    if not _is_zero3():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


# -- configuration ---------------------------------------------------------------------------------


@dataclass
class TrainConfig(TrainOptions, TrainingArguments):
    """``TrainingArguments`` with RISE's defaults and fields (:class:`TrainOptions`).

    The dataclass machinery merges fields base by base, last base first, so a field that
    :class:`TrainOptions` declares replaces the ``TrainingArguments`` field of that name:
    RISE's defaults and help texts exist once, in a module light enough for ``--help``.
    """

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("TrainConfig.model_name_or_path is required")
        cuda = torch.cuda.is_available()
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto | bf16 | fp16 | fp32, got {self.precision!r}")
        self.bf16, self.fp16 = precision == "bf16", precision == "fp16"
        if self.pref_beta <= 0:
            raise ValueError(f"pref_beta must be > 0, got {self.pref_beta}")
        if self.pref_coef < 0 or self.pref_nll_coef < 0:
            raise ValueError("pref_coef and pref_nll_coef must be >= 0")
        if self.anchor_turns not in ("first", "all"):
            raise ValueError(f"anchor_turns must be first | all, got {self.anchor_turns!r}")
        if not cuda:
            self.use_cpu = True
        # "last" resumes from the newest checkpoint in output_dir, if there is one.
        if self.resume_from_checkpoint == "last":
            from transformers.trainer_utils import get_last_checkpoint

            out = Path(self.output_dir or "")
            self.resume_from_checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
        super().__post_init__()


@dataclass
class TrainResult:
    """What a run produced: the model folder and the loss curve."""

    model_dir: Path
    global_step: int
    training_loss: float
    losses: list[float]  # the logged training losses, in step order
    log_history: list[dict[str, Any]]
    dropped_examples: int = 0
    pairs: int = 0  # preference pairs trained on (each with precomputed reference log-probs)
    world_size: int = 1  # training processes (DDP/FSDP/DeepSpeed ranks)
    distributed_backend: str | None = None  # torch.distributed's: "gloo" on CPU, "nccl" on GPUs


# -- the run ---------------------------------------------------------------------------------------


def fit(config: TrainConfig) -> TrainResult:
    """Train on ``config.examples`` and save a plain HF model folder to ``config.output_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(config.seed)  # before the model exists, so LoRA's initialisation is seeded too
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    dataset = ExampleDataset(read_rows(config.examples), config.max_length)
    if dataset.dropped:
        logger.warning("dropped %d rows with no target left within max_length", dataset.dropped)
    if not len(dataset):
        raise ValueError(f"no trainable examples in {config.examples}")

    model = AutoModelForCausalLM.from_pretrained(
        config.model_name_or_path, dtype=_load_dtype(config), **_attn_kwargs(config)
    )
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    if config.lora:
        model = _wrap_lora(model, config)

    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    collator = WeightedCollator(pad_token_id=int(pad_id))
    negative = sum(row["kind"] == "sft" and row["weight"] < 0 for row in dataset.rows)
    if negative and config.policy_clip <= 0:
        raise ValueError(
            f"{negative} examples in {config.examples} have negative weights (advantages); "
            "train them with policy_clip > 0 (--policy-clip), the clipped ratio objective"
        )
    if dataset.n_pairs or config.policy_clip > 0:
        # The reference is the policy before any update (a resumed run loads its checkpoint
        # later, in train(), so this is still the initial model). Every process scores all
        # rows itself: one no-grad pass, and the data stays identical on every rank.
        scoring = {
            "batch_size": config.per_device_eval_batch_size,
            "device": config.device,
            "autocast_dtype": torch.bfloat16
            if config.bf16
            else torch.float16
            if config.fp16
            else None,
        }
        if not _is_zero3():
            model.to(config.device)  # type: ignore[arg-type]  # (transformers' stub)
        n = precompute_reference_logps(model, dataset, collator, **scoring)
        logger.info("reference log-probs of %d preference pairs computed", n)
        if config.policy_clip > 0:
            n = precompute_sft_logps(model, dataset, collator, "old_logp", **scoring)
            logger.info("collecting-policy log-probs of %d examples computed", n)
            if config.anchor_kl_coef > 0:
                n = _precompute_anchor(model, dataset, collator, config, scoring)
                logger.info("anchor log-probs of %d examples computed", n)
    logger.info("training in %d process(es), %s", config.world_size, config.parallel_mode.value)
    trainer = WeightedSFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_state()  # trainer_state.json: the log history next to the model

    out = Path(config.output_dir or ".")
    if config.lora and config.merge_lora:
        _save_merged(trainer, config, out)
    else:
        _save_full(trainer, config, out)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()

    history = list(trainer.state.log_history)
    result = TrainResult(
        model_dir=out,
        global_step=trainer.state.global_step,
        training_loss=float(output.training_loss),
        losses=[float(h["loss"]) for h in history if "loss" in h],
        log_history=history,
        dropped_examples=dataset.dropped,
        pairs=dataset.n_pairs,
        world_size=config.world_size,
        distributed_backend=_backend(),
    )
    if trainer.is_world_process_zero():
        summary = {k: v for k, v in vars(result).items() if k != "model_dir"}
        (out / "rise_train_result.json").write_text(json.dumps(summary, indent=1))
    return result


def _precompute_anchor(
    model: torch.nn.Module,
    dataset: ExampleDataset,
    collator: WeightedCollator,
    config: TrainConfig,
    scoring: dict[str, Any],
) -> int:
    """Anchored rows' log-probs (first answers, or every example with ``anchor_turns="all"``)
    under the anchor: ``anchor_model``, else the initial model."""
    first_only = config.anchor_turns == "first"
    if not config.anchor_model:
        # The initial model is the collecting policy, which has just scored every example
        # (``old_logp``): the same numbers, so no second pass.
        rows = _sft_rows(dataset, first_only)
        for row in rows:
            row["anchor_logp"] = row["old_logp"]
        return len(rows)
    from transformers import AutoModelForCausalLM

    anchor = AutoModelForCausalLM.from_pretrained(config.anchor_model, dtype=_load_dtype(config))
    if not _is_zero3():
        anchor.to(config.device)  # type: ignore[arg-type]
    try:
        return precompute_sft_logps(
            anchor, dataset, collator, "anchor_logp", first_turn_only=first_only, **scoring
        )
    finally:
        del anchor


def _backend() -> str | None:
    """The process group's backend, when training ran in several processes."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def train(config: TrainConfig) -> Path:
    """Train and return the saved model folder (see :func:`fit`)."""
    return fit(config).model_dir


def _load_dtype(config: TrainConfig) -> torch.dtype:
    # Full fine-tuning keeps fp32 master weights (autocast does the bf16 maths); a frozen LoRA
    # base can live in the compute dtype and halve its memory.
    if config.lora and config.bf16:
        return torch.bfloat16
    if config.lora and config.fp16:
        return torch.float16
    return torch.float32


def _attn_kwargs(config: TrainConfig) -> dict[str, str]:
    return {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}


def _wrap_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = config.lora_target_modules
    targets: str | list[str] = (
        names if names == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed frozen embeddings would cut the graph
    return get_peft_model(model, lora)


def _save_dtype(config: TrainConfig, base_config: Any) -> torch.dtype:
    if config.save_dtype == "auto":
        dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return dtype if isinstance(dtype, torch.dtype) else torch.float32
    return getattr(torch, config.save_dtype)


def _save_full(trainer: Trainer, config: TrainConfig, out: Path) -> None:
    if config.deepspeed or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # The integrations gather the shards (ZeRO-3 16-bit gather / FSDP full state dict).
        trainer.save_model(str(out))
        return
    if trainer.is_world_process_zero():
        from transformers import AutoConfig

        model = trainer.accelerator.unwrap_model(trainer.model)
        base = AutoConfig.from_pretrained(config.model_name_or_path)
        model.to(_save_dtype(config, base))  # training is over: the cast costs nothing later
        model.config.use_cache = True
        model.save_pretrained(out, safe_serialization=True)


def _save_merged(trainer: Trainer, config: TrainConfig, out: Path) -> None:
    """Save the adapter, then merge it into a fresh copy of the base on the main process.

    Reloading the base (rather than merging the in-memory model) works the same whether the
    weights were sharded by ZeRO-3 / FSDP or not, and yields exactly the base architecture.
    """
    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    base_config = AutoConfig.from_pretrained(config.model_name_or_path)
    dtype = _save_dtype(config, base_config)
    base = AutoModelForCausalLM.from_pretrained(config.model_name_or_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(out, safe_serialization=True)
