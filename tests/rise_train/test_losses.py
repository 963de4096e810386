"""The objectives on hand-computed logits, pairs in the data path, and tiny-model DPO and
signed-advantage runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rise_train.data import ExampleDataset, WeightedCollator
from rise_train.objectives import make_objective
from rise_train.objectives.advantage import Advantage, advantage_loss, clipped_ratio_loss
from rise_train.objectives.preference import Preference, dpo_loss, preference_loss
from rise_train.objectives.rwr import RWR, weighted_nll
from rise_train.records import IGNORE_INDEX, Example, PreferencePair, read_rows, write_jsonl
from rise_train.scoring import (
    Scorer,
    mean_nll,
    precompute_reference_logps,
    precompute_sft_logps,
    sequence_logps,
)
from rise_train.train import TrainConfig, fit
from rise_train.trainer import RiseTrainer
from testbed.tiny_models import tiny_train_config

LOG2 = math.log(2.0)
ROWS = [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 0.0, 0.0]]  # logits of one sequence, [L=3, V=3]


def _lse(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def _logp(row: list[float], token: int) -> float:
    return row[token] - _lse(row)


def _hand_logps(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, int]]:
    """(summed target log-prob, count) per row, by explicit loops over log_softmax."""
    out = []
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    for b in range(labels.size(0)):
        total, n = 0.0, 0
        for i in range(1, labels.size(1)):
            if labels[b, i] != IGNORE_INDEX:
                total += logprobs[b, i - 1, labels[b, i]].item()
                n += 1
        out.append((total, n))
    return out


# -- sequence_logps and dpo_loss -------------------------------------------------------------------


def test_sequence_logps_matches_hand_computation() -> None:
    logits = torch.tensor([ROWS, ROWS, ROWS])
    labels = torch.tensor(
        [[IGNORE_INDEX, 2, 0], [IGNORE_INDEX, IGNORE_INDEX, 1], [IGNORE_INDEX] * 3]
    )
    logp, n = sequence_logps(logits, labels)
    # Position i predicts label i+1: row 0 scores token 2 from ROWS[0] and token 0 from ROWS[1].
    expected = [_logp(ROWS[0], 2) + _logp(ROWS[1], 0), _logp(ROWS[1], 1), 0.0]
    assert logp.tolist() == pytest.approx(expected, rel=1e-6)
    assert n.tolist() == [2, 1, 0]
    assert logp.dtype == torch.float32
    half, _ = sequence_logps(logits.bfloat16(), labels)
    assert half.dtype == torch.float32


def test_sequence_logps_masked_row_has_no_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX, 4], [IGNORE_INDEX] * 5])
    logp, n = sequence_logps(logits, labels)
    logp.sum().backward()
    assert n.tolist() == [3, 0] and logp[1].item() == 0.0
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[1]) == 0
    assert torch.count_nonzero(logits.grad[0, 2]) == 0  # predicts a masked position
    assert [(round(a, 5), b) for a, b in _hand_logps(logits.detach(), labels)] == [
        (round(logp[0].item(), 5), 3),
        (0.0, 0),
    ]


def test_dpo_loss_matches_hand_computation() -> None:
    pc = torch.tensor([-1.0, -4.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.0, -2.0])
    rc = torch.tensor([-2.0, -2.0, -5.0])
    rr = torch.tensor([-2.0, -2.0, -5.0])
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margins: 0.5·((−1+2) − (−3+2)) = 1, 0.5·((−4+2) − (−1+2)) = −1.5, 0.5·(3 − 3) = 0
    assert margin.tolist() == pytest.approx([1.0, -1.5, 0.0])
    expected = [math.log1p(math.exp(-m)) for m in (1.0, -1.5, 0.0)]  # −log σ(m)
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    assert loss[2].item() == pytest.approx(LOG2)
    assert not margin.requires_grad
    loss.sum().backward()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d(−log σ(m))/d pc = −β·σ(−m)
    assert pc.grad is not None
    assert pc.grad.tolist() == pytest.approx([-0.5 * sigmoid(-m) for m in (1.0, -1.5, 0.0)])


# -- the objectives' losses ----------------------------------------------------------------------


def _mixed_batch() -> dict[str, Any]:
    """Rows: 0 SFT, 1 chosen of pair A, 2 SFT, 3 rejected of A, 4 chosen of B, 5 rejected of B."""
    torch.manual_seed(0)
    logits = torch.randn(6, 6, 9)
    labels = torch.randint(0, 9, (6, 6))
    labels[:, :2] = IGNORE_INDEX
    labels[2, 2:4] = IGNORE_INDEX  # a shorter SFT target
    labels[5, 5] = IGNORE_INDEX  # responses of different lengths
    return {
        "logits": logits,
        "labels": labels,
        "weights": torch.tensor([12.18, 2.0, 0.5, 2.0, 1.0, 1.0]),
        "sft_index": torch.tensor([0, 2]),
        "chosen_index": torch.tensor([1, 4]),
        "rejected_index": torch.tensor([3, 5]),
        "ref_chosen_logps": torch.tensor([-9.0, -12.0]),
        "ref_rejected_logps": torch.tensor([-10.0, -7.5]),
    }


def test_preference_loss_mixed_batch_equals_hand_combination() -> None:
    b = _mixed_batch()
    beta, pref_coef, nll_coef = 0.1, 0.7, 0.3
    hand = _hand_logps(b["logits"], b["labels"])
    nll = [-total / n for total, n in hand]
    w = b["weights"].tolist()
    sft = [w[0] * nll[0], w[2] * nll[2]]
    pairs, margins = [], []
    for (c, r), rc, rr in zip(
        [(1, 3), (4, 5)],
        b["ref_chosen_logps"].tolist(),
        b["ref_rejected_logps"].tolist(),
        strict=True,
    ):
        m = beta * ((hand[c][0] - rc) - (hand[r][0] - rr))
        dpo = math.log1p(math.exp(-m))
        pairs.append((w[c] * (pref_coef * dpo + nll_coef * nll[c]), dpo))
        margins.append(m)
    expected = (sum(sft) + sum(p for p, _ in pairs)) / 4  # 2 SFT rows + 2 pairs

    loss, stats = preference_loss(
        **{k: v for k, v in b.items()}, beta=beta, pref_coef=pref_coef, nll_coef=nll_coef
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["sft_nll"].item() == pytest.approx((nll[0] + nll[2]) / 2, rel=1e-5)
    assert stats["dpo"].item() == pytest.approx(sum(d for _, d in pairs) / 2, rel=1e-5)
    assert stats["margin"].item() == pytest.approx(sum(margins) / 2, rel=1e-4)
    assert stats["pref_accuracy"].item() == pytest.approx(sum(m > 0 for m in margins) / 2)
    assert stats["n_sft"].item() == 2 and stats["n_pairs"].item() == 2
    assert all(not v.requires_grad for v in stats.values())
    # Without sft_index, every row outside a pair is an SFT row: the same loss.
    rest = {k: v for k, v in b.items() if k != "sft_index"}
    again, _ = preference_loss(**rest, beta=beta, pref_coef=pref_coef, nll_coef=nll_coef)
    assert again.item() == pytest.approx(loss.item())


def test_preference_loss_policy_equal_to_reference_gives_log2() -> None:
    b = _mixed_batch()
    logp, _ = sequence_logps(b["logits"], b["labels"])
    b["ref_chosen_logps"] = logp[b["chosen_index"]]
    b["ref_rejected_logps"] = logp[b["rejected_index"]]
    b["sft_index"] = torch.zeros(0, dtype=torch.long)
    b["weights"] = torch.ones(6)
    loss, stats = preference_loss(**b, beta=0.1, pref_coef=1.0, nll_coef=0.0)
    assert stats["dpo"].item() == pytest.approx(LOG2, rel=1e-6)
    assert stats["margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["pref_accuracy"].item() == 0.0  # a margin of 0 is not a win
    assert loss.item() == pytest.approx(LOG2, rel=1e-6)


def test_preference_loss_without_pairs_is_weighted_nll() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 8)
    labels = torch.randint(0, 8, (3, 5))
    labels[:, :2] = IGNORE_INDEX
    weights = torch.tensor([12.18, 1.0, 0.082])
    loss, stats = preference_loss(logits, labels, weights)
    assert loss.item() == pytest.approx(weighted_nll(logits, labels, weights).item(), rel=1e-6)
    assert stats["n_pairs"].item() == 0 and stats["dpo"].item() == 0.0
    assert stats["n_sft"].item() == 3


def test_preference_loss_fully_masked_rows_contribute_zero_without_nan() -> None:
    b = _mixed_batch()
    b["labels"][0] = IGNORE_INDEX  # an SFT row with no target
    b["labels"][5] = IGNORE_INDEX  # pair B's rejected response is empty
    logits = b.pop("logits").requires_grad_(True)
    loss, stats = preference_loss(logits, **b, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    for row in (0, 4, 5):  # the masked SFT row and both rows of the masked pair
        assert torch.count_nonzero(logits.grad[row]) == 0, row
    assert stats["n_sft"].item() == 1 and stats["n_pairs"].item() == 1
    # They still count in the denominator; the rest is the loss of the remaining rows alone.
    keep = {
        "sft_index": torch.tensor([0]),
        "chosen_index": torch.tensor([1]),
        "rejected_index": torch.tensor([2]),
        "ref_chosen_logps": b["ref_chosen_logps"][:1],
        "ref_rejected_logps": b["ref_rejected_logps"][:1],
    }
    rows = [2, 1, 3]
    alone, _ = preference_loss(
        logits.detach()[rows], b["labels"][rows], b["weights"][rows], **keep, beta=0.1
    )
    assert loss.item() == pytest.approx(alone.item() * 2 / 4, rel=1e-6)


def test_preference_loss_all_masked_is_exactly_zero() -> None:
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss, stats = preference_loss(
        logits,
        torch.full((2, 4), IGNORE_INDEX),
        torch.ones(2),
        chosen_index=torch.tensor([0]),
        rejected_index=torch.tensor([1]),
        ref_chosen_logps=torch.tensor([-3.0]),
        ref_rejected_logps=torch.tensor([-1.0]),
    )
    loss.backward()
    assert loss.item() == 0.0 and stats["dpo"].item() == 0.0
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_clipped_ratio_loss_matches_hand_values() -> None:
    """-min(ρA, clip(ρ, 0.8, 1.2)A) for ρ = e^0.2 ≈ 1.2214 (A = ±1) and ρ = 0.7 (A = −1)."""
    mean_logp = torch.tensor([-1.0, -1.0, -1.0])
    old = torch.tensor([-1.2, -1.2, -1.0 - math.log(0.7)])
    advantage = torch.tensor([2.0, -1.0, -1.0])
    loss, clipped = clipped_ratio_loss(mean_logp, old, advantage, 0.2)
    rho = math.exp(0.2)
    assert loss.tolist() == pytest.approx([-2.0 * 1.2, rho, 0.8], rel=1e-6)
    # A > 0 past 1 + ε: clipped; A < 0 with ρ > 1: the unclipped branch (pushed back down);
    # A < 0 with ρ below 1 − ε: clipped, it has been pushed down far enough.
    assert clipped.tolist() == [True, False, True]


def test_advantage_loss_at_ratio_one_has_weighted_nll_gradient() -> None:
    """Against its own log-probs (ρ = 1) the clipped objective's gradient is A × NLL's, with
    negative advantages; without clip_eps a negative weight is an error."""
    torch.manual_seed(2)
    logits = torch.randn(4, 6, 8, requires_grad=True)
    labels = torch.randint(0, 8, (4, 6))
    labels[:, :3] = IGNORE_INDEX
    labels[3] = IGNORE_INDEX  # a row with no target: no gradient, no NaN
    weights = torch.tensor([1.5, -0.5, -1.0, 2.0])
    old = -mean_nll(*sequence_logps(logits.detach(), labels))
    loss, stats = advantage_loss(logits, labels, weights, old, clip_eps=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-(1.5 - 0.5 - 1.0) / 4, abs=1e-6)  # −mean(A·ρ), ρ = 1
    assert stats["clip_fraction"].item() == 0.0
    clipped_grad = logits.grad.clone()
    logits.grad = None
    (weights[:3] * mean_nll(*sequence_logps(logits, labels))[:3]).sum().div(4).backward()
    assert torch.allclose(clipped_grad, logits.grad, atol=1e-6)
    assert torch.count_nonzero(clipped_grad[3]) == 0
    with pytest.raises(ValueError, match="advantage"):  # weight × NLL refuses them
        RWR().loss(logits, {"labels": labels, "weights": weights})
    with pytest.raises(ValueError, match="advantage"):
        preference_loss(logits, labels, weights)


def test_advantage_loss_anchor_penalty_on_anchored_rows_only() -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, 5, 8)
    labels = torch.randint(0, 8, (3, 5))
    labels[:, :2] = IGNORE_INDEX
    mean_logp = -mean_nll(*sequence_logps(logits, labels))
    weights = torch.tensor([1.0, -1.0, 0.5])
    anchor = torch.tensor([mean_logp[0].item() - 0.5, math.nan, mean_logp[2].item() + 1.0])
    plain, _ = advantage_loss(logits, labels, weights, mean_logp, clip_eps=0.2)
    loss, stats = advantage_loss(
        logits, labels, weights, mean_logp, anchor, clip_eps=0.2, kl_coef=2.0
    )
    # ½·0.5² and ½·1² on rows 0 and 2, × kl_coef 2, over 3 rows.
    assert loss.item() == pytest.approx(plain.item() + 2.0 * (0.125 + 0.5) / 3, rel=1e-5)
    assert stats["anchor_kl"].item() == pytest.approx((0.125 + 0.5) / 2, rel=1e-5)


def test_preference_loss_pairs_need_reference_logps() -> None:
    with pytest.raises(ValueError, match="reference"):
        preference_loss(
            torch.randn(2, 3, 4),
            torch.ones(2, 3, dtype=torch.long),
            torch.ones(2),
            chosen_index=torch.tensor([0]),
            rejected_index=torch.tensor([1]),
        )


# -- pairs in the data path ------------------------------------------------------------------------


def _pair(prompt: list[int], chosen: list[int], rejected: list[int], weight: float) -> dict:
    return PreferencePair(prompt, chosen, rejected, weight=weight).to_dict()


def _example(prompt: list[int], target: list[int], weight: float) -> dict:
    return Example.from_ids(prompt, target, weight).to_dict()


def test_dataset_holds_both_kinds_and_fits_pairs_from_the_left() -> None:
    rows = [
        _example([1, 2, 3], [4], 1.0),
        _pair(list(range(10, 20)), [7, 8], [9, 9, 9], 12.18),  # prompt cut to 3 for max 6
        _pair([1], [7, 8, 9, 10, 11, 12], [5], 1.0),  # the longer response leaves no context
        _pair([1, 2], [], [5], 1.0),  # nothing chosen
    ]
    dataset = ExampleDataset(rows, max_length=6)
    assert len(dataset) == 2 and dataset.dropped == 2 and dataset.n_pairs == 1
    pair = dataset[1]
    assert pair["kind"] == "pair" and pair["weight"] == 12.18
    assert pair["input_ids"] == [17, 18, 19, 7, 8]
    assert pair["labels"] == [IGNORE_INDEX] * 3 + [7, 8]
    assert pair["rejected_input_ids"] == [17, 18, 19, 9, 9, 9]
    assert pair["rejected_labels"] == [IGNORE_INDEX] * 3 + [9, 9, 9]
    assert pair["ref_chosen_logp"] is None
    with pytest.raises(ValueError, match="weight"):
        ExampleDataset(
            [{"kind": "pair", "prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
        )


def test_collator_puts_examples_and_pairs_into_one_batch() -> None:
    dataset = ExampleDataset(
        [_pair([1, 2], [3], [4, 5], 2.0), _example([6], [7, 8], 0.5), _pair([9], [3], [4], 1.0)]
    )
    for i, row in enumerate(r for r in dataset.rows if r["kind"] == "pair"):
        row["ref_chosen_logp"], row["ref_rejected_logp"] = -1.0 - i, -2.0 - i
    batch = WeightedCollator(pad_token_id=0)(dataset.rows)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 0],
        [1, 2, 4, 5],
        [6, 7, 8, 0],
        [9, 3, 0, 0],
        [9, 4, 0, 0],
    ]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 4, 5]
    assert batch["attention_mask"][3].tolist() == [1, 1, 0, 0]
    assert batch["weights"].tolist() == [2.0, 2.0, 0.5, 1.0, 1.0]
    assert batch["sft_index"].tolist() == [2]
    assert batch["chosen_index"].tolist() == [0, 3]
    assert batch["rejected_index"].tolist() == [1, 4]
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -2.0]
    assert batch["ref_rejected_logps"].tolist() == [-2.0, -3.0]
    sft_only = WeightedCollator(pad_token_id=0)([dataset[1]])
    assert set(sft_only) == {"input_ids", "attention_mask", "labels", "weights"}
    dataset.rows[0]["ref_chosen_logp"] = None
    with pytest.raises(ValueError, match="reference log-probs"):
        WeightedCollator(pad_token_id=0)([dataset[0]])


def test_train_config_preference_fields(tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), model_name_or_path="m")
    assert (config.pref_beta, config.pref_coef, config.pref_nll_coef) == (0.1, 1.0, 1.0)
    with pytest.raises(ValueError, match="pref_beta"):
        TrainConfig(output_dir=str(tmp_path), model_name_or_path="m", pref_beta=0.0)


# -- tiny-model runs -------------------------------------------------------------------------------

QUESTIONS = [
    ("What is 3 + 4?", "3 + 4 = 7. The final answer is \\boxed{7}.", "3 + 4 = 8. \\boxed{8}"),
    ("What is 10 - 3?", "10 - 3 = 7. So \\boxed{7}.", "10 - 3 = 13. So \\boxed{13}."),
    ("A farmer has 12 cows and buys 7 more.", "12 + 7 = 19, so \\boxed{19}.", "\\boxed{5}"),
]


@pytest.fixture(scope="module")
def rows_path(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three turn-1 examples and three copy-as-negative pairs, rendered with the tiny model."""
    from transformers import AutoTokenizer

    from rise.prompts import ChatRenderer, PromptConfig

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(tiny_model_dir))
    prompts = PromptConfig()
    rows: list[Example | PreferencePair] = []
    for question, right, wrong in QUESTIONS:
        first = [{"role": "user", "content": prompts.first_user_message(question)}]
        rows.append(
            Example.from_ids(renderer.render(first), renderer.response_ids(right)[0], 12.18)
        )
        retry = [
            *first,
            {"role": "assistant", "content": wrong},
            {"role": "user", "content": prompts.introspection_message(question)},
        ]
        rows.append(
            PreferencePair(
                prompt_ids=renderer.render(retry),
                chosen_ids=renderer.response_ids(right)[0],
                rejected_ids=renderer.response_ids(wrong)[0],  # the wrong attempt, copied
                weight=1.0,
            )
        )
    path = tmp_path_factory.mktemp("rows") / "examples.jsonl"
    write_jsonl(rows, path)
    return path


def _config(model: Path, examples: Path, out: Path, **overrides: Any) -> TrainConfig:
    # every row in every step (batch 8): step 1 sees the initial model
    return tiny_train_config(
        model, examples, out, **{"max_steps": 30, "per_device_train_batch_size": 8, **overrides}
    )


def test_precompute_reference_logps_are_the_models(tiny_model_dir: Path, rows_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rise_train.records import read_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    dataset = ExampleDataset(read_rows(rows_path))
    n = precompute_reference_logps(
        model, dataset, WeightedCollator(pad_token_id=0), batch_size=4, device="cpu"
    )
    assert n == dataset.n_pairs == 3
    assert model.training  # its mode is restored
    model.eval()
    for row in dataset.rows:
        if row["kind"] != "pair":
            assert "ref_chosen_logp" not in row
            continue
        for ids, labels, key in (
            (row["input_ids"], row["labels"], "ref_chosen_logp"),
            (row["rejected_input_ids"], row["rejected_labels"], "ref_rejected_logp"),
        ):
            with torch.no_grad():  # one unpadded sequence at a time
                logits = model(input_ids=torch.tensor([ids])).logits
            ((expected, _),) = _hand_logps(logits, torch.tensor([labels]))
            assert row[key] == pytest.approx(expected, rel=1e-4)


def _stat(history: list[dict[str, Any]], key: str) -> list[float]:
    return [h[key] for h in history if key in h]


def test_fit_with_pairs_starts_at_log2_and_raises_the_margin(
    tiny_model_dir: Path, rows_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="--objective preference"):  # the pairs need their loss
        fit(_config(tiny_model_dir, rows_path, tmp_path / "refused"))
    result = fit(_config(tiny_model_dir, rows_path, tmp_path / "out", objective="preference"))
    assert result.global_step == 30 and result.pairs == 3
    history = result.log_history
    dpo, margin = _stat(history, "dpo"), _stat(history, "margin")
    accuracy, sft_nll = _stat(history, "pref_accuracy"), _stat(history, "sft_nll")
    assert len(dpo) == len(margin) == len(accuracy) == len(sft_nll) == len(result.losses) == 30
    # Step 1 runs the initial model against its own precomputed log-probs: DPO = log 2.
    assert dpo[0] == pytest.approx(LOG2, abs=1e-4)
    assert margin[0] == pytest.approx(0.0, abs=1e-3)
    assert all(math.isfinite(x) for x in result.losses + dpo + margin + sft_nll)
    assert margin[-1] > margin[0] + 0.5
    assert accuracy[-1] == 1.0
    assert dpo[-1] < dpo[0]
    assert sft_nll[-1] < sft_nll[0]
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert model.config.use_cache is True
    summary = json.loads((result.model_dir / "rise_train_result.json").read_text())
    assert summary["pairs"] == 3


def test_fit_lora_with_pairs_uses_the_initial_model_as_reference(
    tiny_model_dir: Path, rows_path: Path, tmp_path: Path
) -> None:
    result = fit(
        _config(
            tiny_model_dir,
            rows_path,
            tmp_path / "out",
            objective="preference",
            max_steps=2,
            lora=True,
            lora_r=4,
            lora_dropout=0.0,
        )
    )
    assert _stat(result.log_history, "dpo")[0] == pytest.approx(LOG2, abs=1e-4)


def test_trainer_loss_with_pairs_is_preference_loss(
    tiny_model_dir: Path, rows_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from rise_train.records import read_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    dataset = ExampleDataset(read_rows(rows_path))
    collator = WeightedCollator(pad_token_id=0)
    precompute_reference_logps(model, dataset, collator, device="cpu")
    batch = collator(dataset.rows)

    config = TrainConfig(
        output_dir=str(tmp_path), model_name_or_path="m", objective="preference",
        pref_beta=0.1, pref_coef=0.5, pref_nll_coef=2.0,
    )  # fmt: skip
    trainer = RiseTrainer.__new__(RiseTrainer)  # the loss needs no more of a trainer
    trainer.objective = make_objective(config)
    assert trainer.objective == Preference(beta=0.1, pref_coef=0.5, nll_coef=2.0)
    loss = trainer.compute_loss(model, batch)
    assert isinstance(loss, torch.Tensor)
    assert "chosen_index" in batch  # compute_loss does not mutate its input
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pair_keys = ("sft_index", "chosen_index", "rejected_index")
    expected, stats = preference_loss(
        logits,
        batch["labels"],
        batch["weights"],
        **{k: batch[k] for k in pair_keys},
        ref_chosen_logps=batch["ref_chosen_logps"],
        ref_rejected_logps=batch["ref_rejected_logps"],
        beta=0.1,
        pref_coef=0.5,
        nll_coef=2.0,
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["dpo"].item() == pytest.approx(LOG2, abs=1e-5)  # eval mode: policy = reference


def _signed_rows(tmp_path: Path, tokenizer: Any) -> Path:
    """Each question: the right answer at +1, the wrong one at −1 in the same state (turn 2),
    and the first answer at +0.5 (turn 1)."""
    from rise.prompts import ChatRenderer

    renderer = ChatRenderer(tokenizer)
    rows = []
    for question, right, wrong in QUESTIONS:
        prompt = renderer.render([{"role": "user", "content": question}])
        rows.append(Example.from_ids(prompt, renderer.response_ids(right)[0], 0.5, turn=0))
        rows.append(Example.from_ids(prompt, renderer.response_ids(right)[0], 1.0, turn=1))
        rows.append(Example.from_ids(prompt, renderer.response_ids(wrong)[0], -1.0, turn=1))
    path = tmp_path / "signed.jsonl"
    write_jsonl(rows, path)
    return path


def test_fit_signed_advantages_need_policy_clip_and_move_both_ways(
    tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """Negative weights without --policy-clip are refused; with it, training raises the right
    answers and lowers the wrong ones, the first step unclipped and at the anchor."""
    from transformers import AutoModelForCausalLM

    rows = _signed_rows(tmp_path, tiny_tokenizer)
    with pytest.raises(ValueError, match="policy-clip"):
        fit(_config(tiny_model_dir, rows, tmp_path / "refused", max_steps=1))
    with pytest.raises(ValueError, match="policy_clip > 0"):
        _config(tiny_model_dir, rows, tmp_path / "refused", objective="advantage", policy_clip=0)
    result = fit(
        _config(
            tiny_model_dir,
            rows,
            tmp_path / "out",
            objective="advantage",
            max_steps=20,
            policy_clip=0.2,
            anchor_kl_coef=0.1,
        )
    )
    clip, kl = _stat(result.log_history, "clip_fraction"), _stat(result.log_history, "anchor_kl")
    assert len(clip) == len(kl) == 20
    assert clip[0] == 0.0 and kl[0] == pytest.approx(0.0, abs=1e-8)
    assert max(clip) > 0.0  # the clip engaged: rows stopped pushing once past 1 ± ε
    assert all(math.isfinite(x) for x in result.losses + kl)

    dataset = ExampleDataset(read_rows(rows))
    collator = WeightedCollator(pad_token_id=0)
    before, after = (
        AutoModelForCausalLM.from_pretrained(path) for path in (tiny_model_dir, result.model_dir)
    )
    scores = {}
    for name, model in (("before", before), ("after", after)):
        precompute_sft_logps(model, dataset, collator, name, device="cpu")
    for row in dataset.rows:
        if row["turn"] == 1:
            moved = row["after"] - row["before"]
            assert moved > 0 if row["weight"] > 0 else moved < 0, row["weight"]
            scores.setdefault(row["weight"], []).append(moved)
    assert len(scores[1.0]) == len(scores[-1.0]) == len(QUESTIONS)


@pytest.mark.parametrize("turns, scored", [("first", {0}), ("all", {0, 1})])
def test_anchor_turns_choose_the_anchored_rows(
    tiny_model_dir: Path, tiny_tokenizer: Any, tmp_path: Path, turns: str, scored: set[int]
) -> None:
    """``anchor_turns`` first scores first answers only (the rest get no anchor, so no penalty);
    ``all`` scores every example."""
    from transformers import AutoModelForCausalLM

    rows = _signed_rows(tmp_path, tiny_tokenizer)
    config = _config(
        tiny_model_dir, rows, tmp_path / "out", objective="advantage", policy_clip=0.2,
        anchor_kl_coef=0.1, anchor_turns=turns,
    )  # fmt: skip
    dataset = ExampleDataset(read_rows(rows))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    scorer = Scorer(WeightedCollator(pad_token_id=0), batch_size=4, device="cpu")
    scorer.example_logps(model, dataset, "old_logp")
    objective = make_objective(config)
    assert isinstance(objective, Advantage)
    n = objective.precompute_anchor(dataset, scorer)
    has = {row["turn"] for row in dataset.rows if row.get("anchor_logp") is not None}
    assert has == scored
    assert n == sum(row["turn"] in scored for row in dataset.rows)
    # Without --anchor-model the anchor is the initial model, i.e. the collecting policy.
    assert all(
        row["anchor_logp"] == row["old_logp"] < 0 for row in dataset.rows if row["turn"] in scored
    )
    # With one, it is scored: here the same weights from disk, so the same numbers.
    named = _config(
        tiny_model_dir, rows, tmp_path / "named", objective="advantage", policy_clip=0.2,
        anchor_kl_coef=0.1, anchor_turns=turns, anchor_model=str(tiny_model_dir),
    )  # fmt: skip
    for row in dataset.rows:
        row.pop("anchor_logp", None)
    assert Advantage.from_config(named).precompute_anchor(dataset, scorer) == n
    for row in dataset.rows:
        if row["turn"] in scored:
            assert row["anchor_logp"] == pytest.approx(row["old_logp"], abs=1e-5)
        else:
            assert row.get("anchor_logp") is None
    with pytest.raises(ValueError, match="anchor_turns"):
        _config(tiny_model_dir, rows, tmp_path / "bad", anchor_turns="second")
