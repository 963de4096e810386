"""Reward-weighted SFT: the loss on hand-computed logits, the collator, and tiny-model runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rise_train.data import ExampleDataset, WeightedCollator
from rise_train.objectives.rwr import RWR, weighted_nll
from rise_train.records import IGNORE_INDEX, Example, write_jsonl
from rise_train.train import TrainConfig, fit
from rise_train.trainer import RiseTrainer
from testbed.tiny_models import tiny_train_config


def make_example(prompt: list[int], target: list[int], weight: float, **meta: Any) -> dict:
    return Example.from_ids(prompt, target, weight, **meta).to_dict()


CONFIGS = Path(__file__).resolve().parents[2] / "rise_train" / "configs"
PAIRS = [
    ("What is 3 + 4?", "3 + 4 = 7. The final answer is \\boxed{7}."),
    ("What is 10 - 3?", "10 - 3 = 7. So \\boxed{7}."),
    ("A farmer has 12 cows and buys 7 more.", "12 + 7 = 19, so \\boxed{19}."),
    ("How many minutes are in 3 hours?", "60 minutes in an hour, so 180. \\boxed{180}"),
]


def _lse(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs))


# -- the loss --------------------------------------------------------------------------------------


def test_weighted_nll_matches_hand_computation() -> None:
    rows = [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 0.0, 0.0]]
    logits = torch.tensor([rows, rows])  # [B=2, L=3, V=3]
    labels = torch.tensor([[IGNORE_INDEX, 2, 0], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    weights = torch.tensor([2.0, 0.5])
    # Position i predicts label i+1. Example 0: targets 2 (from row 0) and 0 (from row 1).
    ex0 = ((_lse(rows[0]) - rows[0][2]) + (_lse(rows[1]) - rows[1][0])) / 2
    # Example 1: target 1 from row 1 only.
    ex1 = _lse(rows[1]) - rows[1][1]
    expected = (2.0 * ex0 + 0.5 * ex1) / 2
    assert weighted_nll(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_nll_uniform_equals_mean_of_per_example_means() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = IGNORE_INDEX
    labels[1, 2:4] = IGNORE_INDEX  # a shorter target: per-example means, not a token mean
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=-100)
            for b in range(3)
        ]
    ).mean()
    assert weighted_nll(logits, labels, torch.ones(3)).item() == pytest.approx(expected.item())


def test_weighted_nll_fully_masked_example_is_finite_and_inert() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4], [IGNORE_INDEX] * 5])
    loss = weighted_nll(logits, labels, torch.tensor([1.0, 12.18]))
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[1]) == 0  # no gradient from the masked example
    assert torch.count_nonzero(logits.grad[0]) > 0
    alone = weighted_nll(logits[:1].detach(), labels[:1], torch.tensor([1.0]))
    assert loss.item() == pytest.approx(alone.item() / 2)  # it counts in the batch mean only


def test_weighted_nll_all_masked_batch_is_zero() -> None:
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = weighted_nll(logits, torch.full((2, 4), IGNORE_INDEX), torch.ones(2))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_weighted_nll_bf16_logits_are_upcast() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 9)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 5]])
    full = weighted_nll(logits, labels, torch.ones(1))
    half = weighted_nll(logits.bfloat16(), labels, torch.ones(1))
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


# -- data ------------------------------------------------------------------------------------------


def test_collator_pads_to_longest_in_batch() -> None:
    batch = WeightedCollator(pad_token_id=0)(
        [make_example([5, 6], [7], 2.0), make_example([5, 6, 8, 9], [7, 3], 0.5)]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0], [5, 6, 8, 9, 7, 3]]
    assert batch["labels"].tolist() == [[-100, -100, 7, -100, -100, -100], [-100] * 4 + [7, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["weights"].tolist() == [2.0, 0.5]
    padded = WeightedCollator(pad_token_id=0, pad_to_multiple_of=8)([make_example([1], [2], 1.0)])
    assert padded["input_ids"].shape == (1, 8)


def test_example_dataset_refits_and_drops_untrainable_rows() -> None:
    rows = [
        make_example(list(range(10)), [100, 101], 1.0),
        make_example([1, 2], [], 1.0),  # nothing to learn
        make_example([1], [5, 6, 7, 8, 9, 10], 1.0),  # target longer than max_length
    ]
    dataset = ExampleDataset(rows, max_length=6)
    assert len(dataset) == 1 and dataset.dropped == 2
    assert dataset[0]["input_ids"] == [6, 7, 8, 9, 100, 101]
    assert dataset[0]["labels"] == [-100] * 4 + [100, 101]


# -- configuration ---------------------------------------------------------------------------------


def test_train_config_defaults(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), model_name_or_path="m")
    assert config.learning_rate == 1e-5
    assert config.lr_scheduler_type.value == "cosine"
    assert config.warmup_steps == 0.04
    assert config.weight_decay == 0.0
    assert config.report_to == []
    assert config.lora is False and config.merge_lora is True
    if not torch.cuda.is_available():
        assert config.use_cpu is True and config.bf16 is False
    with pytest.raises(ValueError, match="model_name_or_path"):
        TrainConfig(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(output_dir=str(tmp_path), model_name_or_path="m", precision="fp8")


def test_train_config_fields_have_help() -> None:
    import dataclasses

    from transformers import TrainingArguments

    own = {f.name for f in dataclasses.fields(TrainConfig)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    assert own >= {"model_name_or_path", "examples", "lora", "lora_r", "merge_lora", "max_length"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in own:
            assert f.metadata.get("help"), f.name


def test_accelerate_configs_parse() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    zero3 = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate_deepspeed_zero3.yaml"))
    assert zero3.distributed_type.value == "DEEPSPEED"
    ds_file = zero3.deepspeed_config["deepspeed_config_file"]
    ds = json.loads((CONFIGS.parents[1] / ds_file).read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    fsdp = ClusterConfig.from_yaml_file(str(CONFIGS / "accelerate_fsdp.yaml"))
    assert fsdp.distributed_type.value == "FSDP"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# -- tiny-model runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_path(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four chat examples (one per weight class) rendered with the tiny model's template."""
    from transformers import AutoTokenizer

    from rise.prompts import ChatRenderer, PromptConfig

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(tiny_model_dir))
    prompts = PromptConfig()
    rows = []
    for (question, answer), weight in zip(PAIRS, [12.18, 1.0, 0.082, 1.0], strict=True):
        prompt = renderer.render(
            [{"role": "user", "content": prompts.first_user_message(question)}]
        )
        target, _ = renderer.response_ids(answer)
        rows.append(make_example(prompt, target, weight, problem_id=question, turn=0))
    rows.append(make_example([1, 2, 3], [], 1.0))  # fully masked: dropped, never a NaN
    path = tmp_path_factory.mktemp("examples") / "examples.jsonl"
    write_jsonl(rows, path)
    return path


def _config(model: Path, examples: Path, out: Path, **overrides: Any) -> TrainConfig:
    return tiny_train_config(model, examples, out, **overrides)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_fit_full_lowers_loss_and_changes_parameters(
    tiny_model_dir: Path, examples_path: Path, tmp_path: Path
) -> None:
    result = fit(_config(tiny_model_dir, examples_path, tmp_path / "out"))
    assert result.global_step == 8 and result.dropped_examples == 1
    assert len(result.losses) == 8 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < 0.7 * result.losses[0]
    before, after = _weights(tiny_model_dir), _weights(result.model_dir)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert not torch.equal(tensor, after[name]), f"{name} did not change"
    summary = json.loads((result.model_dir / "rise_train_result.json").read_text())
    assert summary["losses"] == result.losses


def test_fit_saves_a_loadable_model_folder(
    tiny_model_dir: Path, examples_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = fit(_config(tiny_model_dir, examples_path, tmp_path / "out", max_steps=1)).model_dir
    assert out == tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert model.config.use_cache is True
    assert (out / "trainer_state.json").is_file()


def test_fit_lora_merges_into_a_plain_checkpoint(
    tiny_model_dir: Path, examples_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    result = fit(
        _config(
            tiny_model_dir, examples_path, tmp_path / "out", lora=True, lora_r=4, learning_rate=5e-3
        )
    )
    assert result.losses[-1] < result.losses[0]
    after = _weights(result.model_dir)
    before = _weights(tiny_model_dir)
    assert after.keys() == before.keys()  # no lora_A / lora_B / base_model prefixes
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert any("q_proj" in n for n in changed)
    assert not any("embed_tokens" in n or "norm" in n for n in changed)  # frozen under LoRA
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert type(model) is LlamaForCausalLM
    assert (result.model_dir / "adapter" / "adapter_config.json").is_file()


def test_fit_resumes_from_last_checkpoint(
    tiny_model_dir: Path, examples_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = fit(
        _config(
            tiny_model_dir, examples_path, out, max_steps=4, save_strategy="steps", save_steps=2
        )
    )
    assert first.global_step == 4
    assert (out / "checkpoint-4").is_dir()
    config = _config(tiny_model_dir, examples_path, out, max_steps=6, resume_from_checkpoint="last")
    assert config.resume_from_checkpoint == str(out / "checkpoint-4")
    resumed = fit(config)
    assert resumed.global_step == 6
    steps = [h["step"] for h in resumed.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # the history continues; steps 1-4 were not redone
    assert resumed.losses[:4] == first.losses
    # Model, optimiser, schedule and data order all came back: the same curve as one run.
    straight = fit(_config(tiny_model_dir, examples_path, tmp_path / "straight", max_steps=6))
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-4)


def test_trainer_loss_is_weighted_nll_of_the_batch(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = WeightedCollator(pad_token_id=0)(
        [make_example([5, 6, 7], [8, 9], 12.18), make_example([5], [8, 9, 10, 11], 0.5)]
    )
    assert RiseTrainer.loss_is_scaled_for_ga is False  # the Trainer divides by GA steps
    trainer = RiseTrainer.__new__(RiseTrainer)  # the loss needs no more of a trainer
    trainer.objective = RWR()
    loss = trainer.compute_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loss.item() == pytest.approx(
        weighted_nll(logits, batch["labels"], batch["weights"]).item()
    )
    assert "labels" in batch and "weights" in batch  # compute_loss does not mutate its input
