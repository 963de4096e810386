"""Reward-weighted SFT of a causal LM on RISE examples (RISE.md §4), on the Hugging Face stack.

Per example: the mean token NLL over its target turn, times the example's weight; the batch
loss is the mean of those weighted per-example losses (:func:`weighted_nll`). The trainer is a
``transformers.Trainer`` that changes only ``compute_loss``; everything else — optimiser, cosine
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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from rise_train.build import IGNORE_INDEX, read_examples, truncate_left

logger = logging.getLogger(__name__)


# -- the loss --------------------------------------------------------------------------------------


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``weight × mean target-token NLL`` of each example.

    logits [B, L, V], labels [B, L] (``-100`` = not a target), weights [B] → scalar.
    Position i predicts token i+1, as in every causal LM. A fully masked example has a loss of
    exactly 0 (its token count is clamped to 1, so no 0/0) and gives no gradient; it still
    counts in the batch mean's denominator.
    """
    logits = logits[:, :-1, :].float()  # [B, L-1, V]; fp32 so bf16 logits do not lose the NLL
    targets = labels[:, 1:]  # [B, L-1]
    mask = targets != IGNORE_INDEX
    token_nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)  # 0 at ignored positions
    per_example = (token_nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B]
    return (per_example * weights.to(per_example.dtype)).mean()


class WeightedSFTTrainer(Trainer):
    """``Trainer`` whose loss is :func:`weighted_nll` on the batch's ``weights``."""

    # compute_loss returns a per-batch mean, so the Trainer must still divide by the number of
    # gradient-accumulation steps (left to None it would guess from the model's loss kwargs).
    loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels, weights = inputs.pop("labels"), inputs.pop("weights")
        outputs = model(**inputs)
        loss = weighted_nll(outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss


# -- data ------------------------------------------------------------------------------------------


class ExampleDataset(Dataset):
    """Built examples (``input_ids``, ``labels``, ``weight``) held in memory."""

    def __init__(self, examples: list[dict[str, Any]], max_length: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.dropped = 0
        for ex in examples:
            row = _fit(ex, max_length)
            if row is None:
                self.dropped += 1
            else:
                self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _fit(example: dict[str, Any], max_length: int | None) -> dict[str, Any] | None:
    """The example re-fitted to ``max_length`` with build's rule; None when nothing is trainable."""
    labels = example["labels"]
    n_context = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    ids = example["input_ids"]
    fitted = truncate_left(ids[:n_context], ids[n_context:], max_length)
    if fitted is None or n_context == len(labels):
        return None
    prompt, target = fitted
    return {
        "input_ids": [*prompt, *target],
        "labels": [IGNORE_INDEX] * len(prompt) + labels[n_context:],
        "weight": float(example.get("weight", 1.0)),
    }


@dataclass
class WeightedCollator:
    """Right-pads a batch to its longest row (not to max length) and stacks the weights."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[i, :n] = 1
        weights = torch.tensor([float(f.get("weight", 1.0)) for f in features])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "weights": weights,
        }


# -- configuration ---------------------------------------------------------------------------------


@dataclass
class TrainConfig(TrainingArguments):
    """``TrainingArguments`` with RISE's defaults and fields; each field is a CLI flag."""

    # Parent defaults changed to the public RISE code's (RISE.md §4). Effective batch 64 =
    # per-device 4 × accumulation 4 × 4 GPUs; raise the accumulation on fewer GPUs.
    output_dir: str | None = field(
        default="runs/rise-model", metadata={"help": "Checkpoints and the final model go here."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.04, metadata={"help": "Warm-up: steps, or a fraction of all steps if < 1."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Rows per device."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Accumulated batches."})
    logging_steps: float = field(default=1, metadata={"help": "Log the loss every N steps."})
    report_to: str | list[str] | None = field(
        default="none", metadata={"help": "Experiment trackers (none by default)."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "random | sequential | group_by_length (less padding)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept off: the collator picks the columns."}
    )

    # RISE fields.
    model_name_or_path: str = field(
        default="", metadata={"help": "Base model: a Hugging Face folder or hub name."}
    )
    examples: str = field(default="", metadata={"help": "Examples JSONL written by `build`."})
    max_length: int | None = field(
        default=2048, metadata={"help": "Max tokens per row; the context is cut from the left."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on a bf16 GPU, else fp32) | bf16 | fp16 | fp32."},
    )
    save_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the saved model: auto (the base model's) | bfloat16 | float32."
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager | sdpa | flash_attention_2 (default: the model's)."}
    )
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "all-linear, or comma-separated module names."}
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "Merge the adapter into the base weights before saving."}
    )

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


# -- the run ---------------------------------------------------------------------------------------


def fit(config: TrainConfig) -> TrainResult:
    """Train on ``config.examples`` and save a plain HF model folder to ``config.output_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(config.seed)  # before the model exists, so LoRA's initialisation is seeded too
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    dataset = ExampleDataset(read_examples(config.examples), config.max_length)
    if dataset.dropped:
        logger.warning("dropped %d examples with no target left within max_length", dataset.dropped)
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
    trainer = WeightedSFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=WeightedCollator(pad_token_id=int(pad_id)),
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
    )
    if trainer.is_world_process_zero():
        summary = {k: v for k, v in vars(result).items() if k != "model_dir"}
        (out / "rise_train_result.json").write_text(json.dumps(summary, indent=1))
    return result


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
