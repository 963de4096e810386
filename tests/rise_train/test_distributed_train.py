"""``rise_train train`` across two processes for real: ``accelerate launch`` starts two CPU
processes that train with DDP over gloo (torch.distributed), against one process on the same
data, and the two-process checkpoint is served by the real vLLM engine.

The runs are set up so that the two must agree: one global batch holds every example (one
process: 8 rows; two processes: 4 rows each, DDP averages their gradients), so the data order
cannot differ, and the optimiser is plain SGD, whose step is the gradient itself (Adam's first
step is about ±lr whatever the gradient, and would hide a wrongly weighted loss). A control run
with other weights shows that the tolerance can tell a different loss apart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rise_train.records import Example, write_jsonl

pytestmark = pytest.mark.slow

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(3, 4), (10, 3), (12, 7), (5, 9)]]
ANSWERS = ["3 + 4 = 7. \\boxed{7}", "13. \\boxed{13}", "12 + 7 = 19, \\boxed{19}", "\\boxed{14}"]
WEIGHTS = [12.18, 1.0, 0.5, 3.0, 12.18, 0.082, 1.0, 7.0]


def write_examples(model: Path, path: Path, weights: list[float]) -> Path:
    """Eight chat examples with unequal weights and lengths."""
    from transformers import AutoTokenizer

    from rise.prompts import ChatRenderer, PromptConfig

    renderer, prompts = ChatRenderer(AutoTokenizer.from_pretrained(model)), PromptConfig()
    rows = []
    for i, weight in enumerate(weights):
        question, answer = QUESTIONS[i % 4], ANSWERS[(i * 3) % 4] * (1 + i % 3)
        prompt = renderer.render(
            [{"role": "user", "content": prompts.first_user_message(question)}]
        )
        target, _ = renderer.response_ids(answer)
        rows.append(Example.from_ids(prompt, target, weight, problem_id=f"p{i}", turn=0).to_dict())
    write_jsonl(rows, path)
    return path


def train_command(model: Path, examples: Path, out: Path, batch_size: int) -> list[str]:
    """Two SGD steps, each over all eight examples (one global batch)."""
    return [
        "-m", "rise_train", "train",
        "--model", str(model), "--examples", str(examples), "--output-dir", str(out),
        "--batch-size", str(batch_size), "--grad-accum", "1", "--max-steps", "2",
        "--learning-rate", "0.5", "--max-length", "512",
        "--train-arg", "optim=sgd", "--train-arg", "lr_scheduler_type=constant",
        "--train-arg", "warmup_steps=0", "--train-arg", "logging_steps=1",
        "--train-arg", "save_strategy=no", "--train-arg", "disable_tqdm=true",
        "--train-arg", "use_cpu=true",
    ]  # fmt: skip


def run(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("w") as handle:
        done = subprocess.run(args, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{args[:6]} exited {done.returncode}:\n{log.read_text()[-4000:]}"


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses(folder: Path) -> list[float]:
    return json.loads((folder / "rise_train_result.json").read_text())["losses"]


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process, two processes (accelerate + DDP over gloo), and the control."""
    work = tmp_path_factory.mktemp("ddp")
    examples = write_examples(tiny_model_dir, work / "examples.jsonl", WEIGHTS)
    control_examples = write_examples(tiny_model_dir, work / "control.jsonl", [1.0] * len(WEIGHTS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = {name: work / name for name in ("single", "ddp", "control")}
    python = [sys.executable]
    run(python + train_command(tiny_model_dir, examples, out["single"], 8), env, work / "1.log")
    run(
        python + train_command(tiny_model_dir, control_examples, out["control"], 8),
        env,
        work / "control.log",
    )
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None, "accelerate is a dependency of the train extra"
    launch = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
    ]  # fmt: skip
    ddp_args = train_command(tiny_model_dir, examples, out["ddp"], 4)
    run(launch + ddp_args, env, work / "ddp.log")
    return out


def test_two_processes_ran_ddp_over_gloo(runs: dict[str, Path]) -> None:
    ddp = json.loads((runs["ddp"] / "rise_train_result.json").read_text())
    assert (ddp["world_size"], ddp["distributed_backend"]) == (2, "gloo"), ddp
    assert ddp["global_step"] == 2
    single = json.loads((runs["single"] / "rise_train_result.json").read_text())
    assert (single["world_size"], single["distributed_backend"]) == (1, None)


def test_two_process_loss_and_weights_match_one_process(runs: dict[str, Path]) -> None:
    one, two, control = (weights_of(runs[k]) for k in ("single", "ddp", "control"))
    assert losses(runs["ddp"]) == pytest.approx(losses(runs["single"]), rel=1e-4, abs=1e-5)
    gap = max_difference(one, two)
    assert gap < 1e-4, f"DDP and single-process weights differ by {gap}"
    # the control (uniform weights, same rows) moves the weights by far more than the gap
    assert max_difference(one, control) > 100 * max(gap, 1e-6)
    assert losses(runs["control"])[0] != pytest.approx(losses(runs["single"])[0], rel=1e-3)


def test_the_two_process_checkpoint_serves(runs: dict[str, Path], tmp_path: Path) -> None:
    """The real vLLM engine loads what rank 0 saved and runs two RISE turns on it."""
    env = {**os.environ, "RISE_DATA_DIR": str(tmp_path), "RISE_KV_CACHE_GIB": "0.25"}
    done = subprocess.run(
        [sys.executable, "-m", "rise", "solve", "What is 3 + 4?", "--model", str(runs["ddp"]),
         "--turns", "2", "--max-tokens", "16", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    episode = json.loads(done.stdout)
    assert len(episode["turns"]) == 2 and all(t["output_ids"] for t in episode["turns"])
