"""Fine-tune a model on RISE's training rows and save a plain model folder: ``fit``.

``fit`` reads a ``build`` file into an :class:`~rise_train.data.ExampleDataset`, has the
configured objective (``TrainConfig.objective``, :mod:`rise_train.objectives`) check the rows and
precompute what it compares against, trains with :class:`~rise_train.trainer.RiseTrainer`, and
saves. Full fine-tuning or LoRA (peft); a LoRA adapter is merged into the base weights before the
final save (``merge_lora``), so ``output_dir`` is always a plain Hugging Face model folder
(safetensors + tokenizer + chat template) that the service and vLLM load as any model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from rise_train.data import ExampleDataset, WeightedCollator
from rise_train.objectives import check_objective, make_objective
from rise_train.records import read_rows
from rise_train.scoring import Scorer
from rise_train.train_options import TrainOptions
from rise_train.trainer import RiseTrainer

__all__ = ["TrainConfig", "TrainResult", "fit"]

logger = logging.getLogger(__name__)


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
        check_objective(self.objective)
        if self.objective == "advantage" and self.policy_clip <= 0:
            raise ValueError(f"objective 'advantage' needs policy_clip > 0, got {self.policy_clip}")
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
    objective = make_objective(config)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    dataset = ExampleDataset(read_rows(config.examples), config.max_length)
    if dataset.dropped:
        logger.warning("dropped %d rows with no target left within max_length", dataset.dropped)
    if not len(dataset):
        raise ValueError(f"no trainable examples in {config.examples}")
    objective.check(dataset, config.examples)

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
    # What the objective compares against is scored by the model before any update (a resumed
    # run loads its checkpoint later, in trainer.train). Every process scores all rows itself: one
    # no-grad pass, and the data stays identical on every rank.
    scorer = Scorer(
        collator,
        batch_size=config.per_device_eval_batch_size,
        device=config.device,
        autocast_dtype=torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None,
        load_dtype=_load_dtype(config),
    )
    objective.prepare(model, dataset, scorer)
    logger.info("training in %d process(es), %s", config.world_size, config.parallel_mode.value)
    trainer = RiseTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        objective=objective,
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


def _backend() -> str | None:
    """The process group's backend, when training ran in several processes."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


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
