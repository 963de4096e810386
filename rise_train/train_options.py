"""RISE's training settings: the fields :class:`rise_train.train.TrainConfig` adds to or changes in
``transformers.TrainingArguments``.

They live apart from the trainer so the CLI can build its options from them (each default and
help text once) without importing torch and transformers, which takes seconds; ``TrainConfig``
inherits them. Any other ``TrainingArguments`` field is reachable as ``--train-arg KEY=VALUE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rise_train.objectives import ObjectiveName


@dataclass
class TrainOptions:
    """RISE's defaults for ``TrainingArguments`` fields, and RISE's own fields."""

    # Parent defaults changed to the public RISE code's (docs/RISE.md §4). Effective batch 64 =
    # per-device 4 × accumulation 4 × 4 GPUs; raise the accumulation on fewer GPUs.
    output_dir: str | None = field(
        default="runs/rise-model", metadata={"help": "Checkpoints and the final model go here."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the examples."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (-1: run the epochs)."}
    )
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
    # Random order: length grouping orders each mega-batch long to short, so the weighted
    # examples of one length band (first answers are shorter than corrections) meet the
    # optimiser together. docs/EXPERIMENTS.md compares the two on the same collection.
    train_sampling_strategy: str = field(
        default="random",
        metadata={"help": "random (default) | sequential | group_by_length (less padding)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept off: the collator picks the columns."}
    )

    # RISE fields.
    objective: ObjectiveName = field(
        default="rwr",
        metadata={
            "help": "The loss (docs/RISE.md §4), the objective the examples were built for: "
            "rwr | awr | sft (weight x NLL) | advantage (clipped ratio) | preference "
            "(+ DPO on pairs)."
        },
    )
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

    # Objective 'preference' (rise_train/objectives/preference.py).
    pref_beta: float = field(
        default=0.1,
        metadata={
            "help": "DPO beta on preference pairs: the scale of the implicit reward "
            "beta * log(policy / reference); smaller lets the policy move further."
        },
    )
    pref_coef: float = field(
        default=1.0, metadata={"help": "Weight of the DPO term in a pair's loss."}
    )
    pref_nll_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the mean-token NLL of the chosen response in a pair's loss "
            "(the RPO regulariser; 0 gives plain DPO)."
        },
    )

    # Objective 'advantage' (rise_train/objectives/advantage.py).
    policy_clip: float = field(
        default=0.2,
        metadata={
            "help": "Objective advantage: epsilon of the clipped sequence-ratio objective "
            "(GSPO) that trains the signed weights."
        },
    )
    anchor_kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "Objective advantage: weight of the penalty 1/2 (log pi - log pi_anchor)^2 "
            "on the anchored rows (--anchor-turns), keeping them near the anchor's."
        },
    )
    anchor_turns: Literal["first", "all"] = field(
        default="first",
        metadata={
            "help": "Rows the anchor penalty holds: first answers (SCoRe's turn-1 KL) or every "
            "example (a KL to the anchor on all turns, a trust region on the whole policy)."
        },
    )
    anchor_model: str | None = field(
        default=None,
        metadata={
            "help": "The anchor of the penalty (default: the model before training; iterate: "
            "the base model from the second iteration on)."
        },
    )
