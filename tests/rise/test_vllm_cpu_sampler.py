"""vLLM-CPU's speculative (rejection) sampler draws from the distribution it should, with the
correction in ``rise/engine/vllm_plugin.py`` — and did not without it.

No engine: vLLM's own ``RejectionSampler`` runs in this process on hand-made logits, through
the C++ kernels vLLM-CPU registers in place of Triton's, many requests in one batch. Each
request drafts two tokens (as n-gram speculation does: no draft probabilities); the first
output token must follow the target distribution at the request's temperature and top-p, the
second (after an accepted first draft) the second position's, and greedy requests batched with
sampled ones must get their argmax. Chi-square goodness of fit at ALPHA (tests/sampling_stats.py).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from contextlib import contextmanager
from typing import Any

import pytest

from rise.engine import vllm_plugin
from tests.sampling_stats import ALPHA, chi_square_p_value, softmax

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

VOCAB = 12
# Logits of the two draft positions and the bonus position (no ties; top-p 0.8 keeps 4 tokens
# of position 0 with margin on both sides).
POSITION_LOGITS = (
    [2.0, 1.2, 0.3, -0.5, 1.6, 0.0, -1.2, 0.8, -2.0, 0.5, -0.8, -3.0],
    [0.2, -1.0, 1.9, 0.6, -0.3, 1.1, 0.0, -2.2, 0.9, -0.6, 1.5, -1.5],
    [-0.4, 0.7, 0.1, 1.3, -1.1, 0.4, 2.1, -0.2, 0.9, -2.5, 0.6, 1.0],
)
DRAFTS = (4, 2)  # the second most likely token at position 0, the most likely at position 1
GROUPS = (  # (temperature, top_p, requests)
    (0.7, 1.0, 6000),
    (1.0, 1.0, 6000),
    (1.0, 0.8, 6000),
    (0.0, 1.0, 500),  # greedy, batched with the sampled requests
)


def _sampling_metadata(temperature: Any, top_p: Any) -> Any:
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    batch = temperature.numel()
    zeros = torch.zeros(batch)
    return SamplingMetadata(
        temperature=temperature,
        all_greedy=False,
        all_random=False,
        top_p=top_p,
        top_k=None,
        generators={},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=zeros,
        presence_penalties=zeros,
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


@contextmanager
def cpu_kernels(expand: Any):
    """vLLM-CPU's C++ kernels registered in place of the Triton ones, with ``expand`` as the
    expand shim (vLLM's own or ours); ours again afterwards."""
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON
    from vllm.utils import cpu_triton_utils

    if HAS_TRITON or not current_platform.is_cpu():
        pytest.skip("vLLM-CPU's C++ sampling kernels run only on a CPU build without Triton")
    current_platform.import_kernels()
    saved = cpu_triton_utils._expand_kernel_impl
    cpu_triton_utils._expand_kernel_impl = expand
    try:
        current_platform.register_triton_kernel_overrides()
        yield
    finally:
        cpu_triton_utils._expand_kernel_impl = saved
        from vllm.triton_utils.dispatcher import register_kernels

        register_kernels({vllm_plugin.EXPAND_KERNEL: vllm_plugin.expand_kernel})


def vllm_expand_shim() -> Any:
    """vLLM's own ``_expand_kernel_impl``, from a fresh copy of its module (the installed one
    may already hold ours: the plugin runs wherever vLLM loads its plugins)."""
    from vllm.utils import cpu_triton_utils

    spec = importlib.util.spec_from_file_location(
        "pristine_cpu_triton_utils", cpu_triton_utils.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._expand_kernel_impl


def run_rejection_sampler() -> tuple[list[tuple[float, float]], Any]:
    """One batch through vLLM's RejectionSampler: the per-request (temperature, top_p) and the
    [requests, 3] output token ids (-1 after a rejection)."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    params = [(t, p) for t, p, n in GROUPS for _ in range(n)]
    batch = len(params)
    metadata = SpecDecodeMetadata.make_dummy([list(DRAFTS)] * batch, device=torch.device("cpu"))
    rows = torch.arange(batch * 3).reshape(batch, 3)
    metadata.target_logits_indices = rows[:, :2].reshape(-1).to(torch.int32)
    metadata.bonus_logits_indices = rows[:, 2].to(torch.int32).contiguous()
    logits = torch.tensor(POSITION_LOGITS, dtype=torch.float32).repeat(batch, 1)
    sampling = _sampling_metadata(
        torch.tensor([t for t, _ in params], dtype=torch.float32),
        torch.tensor([p for _, p in params], dtype=torch.float32),
    )
    out = RejectionSampler(Sampler())(metadata, None, logits, sampling)
    return params, out.sampled_token_ids


def fit(
    params: list[tuple[float, float]],
    tokens: Any,
    temperature: float,
    top_p: float,
    positions: tuple[str, ...] = ("first", "second", "bonus"),
) -> dict:
    """P-values of the group's first token, its second after an accepted first draft, and its
    bonus after two accepted drafts, against the exact distributions at (temperature, top_p)."""
    rows = [i for i, (t, p) in enumerate(params) if (t, p) == (temperature, top_p)]
    first = Counter(int(tokens[i, 0]) for i in rows)
    after = [i for i in rows if int(tokens[i, 0]) == DRAFTS[0]]
    second = Counter(int(tokens[i, 1]) for i in after)
    both = [i for i in after if int(tokens[i, 1]) == DRAFTS[1]]
    bonus = Counter(int(tokens[i, 2]) for i in both)

    def p_value(counts: Counter, logits: list[float]) -> float:
        probs = softmax(logits, temperature, top_p)
        return chi_square_p_value([counts.get(v, 0) for v in range(VOCAB)], probs)

    counts = {"first": first, "second": second, "bonus": bonus}
    result = {
        name: p_value(counts[name], POSITION_LOGITS[i])
        for i, name in enumerate(counts)
        if name in positions
    }
    return {**result, "accepted": len(after) / len(rows), "both accepted": len(both) / len(rows)}


def test_expand_kernel_writes_at_the_callers_dtype():
    cu = torch.tensor([2, 2, 5], dtype=torch.int32)  # 2, 0 and 3 tokens
    for values, expected in (
        (torch.tensor([0.7, 1.0, 0.9]), [0.7, 0.7, 0.9, 0.9, 0.9]),
        (torch.tensor([3, 5, 9], dtype=torch.int32), [3, 3, 9, 9, 9]),
        (torch.tensor([3, 5, 9], dtype=torch.int64), [3, 3, 9, 9, 9]),
    ):
        out = torch.full((5,), -7, dtype=values.dtype)
        vllm_plugin.expand_kernel(out, values, cu, 99, 98)
        assert out.dtype == values.dtype
        assert out.tolist() == pytest.approx(expected)
    # replace_from -> replace_to (greedy temperature 0 becomes 1 before dividing the logits)
    out = torch.empty(5)
    vllm_plugin.expand_kernel(out, torch.tensor([0.7, 2.0, 0.0]), cu, 0, 1)
    assert out.tolist() == pytest.approx([0.7, 0.7, 1.0, 1.0, 1.0])


def test_vllm_cpu_expand_shim_still_drops_its_output():
    """vllm-project/vllm#55005: vLLM's shim fills an int64 copy of a float buffer and drops it.
    When this fails, vLLM fixed it: remove rise/engine/vllm_plugin.py and its entry point."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the shim exists on vLLM-CPU only")
    current_platform.import_kernels()
    out = torch.full((3,), float("nan"))
    vllm_expand_shim()(out, torch.tensor([0.7, 1.0]), torch.tensor([1, 3]), 0, 1)
    assert torch.isnan(out).all(), "vLLM's expand shim writes its output now"


def test_plugin_is_an_installed_vllm_plugin():
    """vLLM finds the correction through the entry point pyproject.toml declares."""
    from vllm.plugins import load_plugins_by_group

    plugins = load_plugins_by_group("vllm.general_plugins")
    assert plugins.get("rise_cpu_sampling") is vllm_plugin.register


def test_rejection_sampler_keeps_the_distribution_with_the_correction():
    with cpu_kernels(vllm_plugin.expand_kernel):
        params, tokens = run_rejection_sampler()
    for temperature, top_p, _ in GROUPS[:3]:
        result = fit(params, tokens, temperature, top_p)
        for position in ("first", "second", "bonus"):
            assert result[position] > ALPHA, (temperature, top_p, position, result)
    greedy = [i for i, (t, _) in enumerate(params) if t == 0.0]
    argmax = [max(range(VOCAB), key=row.__getitem__) for row in POSITION_LOGITS]
    # draft 0 (token 4) is not position 0's argmax (token 0): rejected, the argmax recovered
    assert {tuple(tokens[i].tolist()) for i in greedy} == {(argmax[0], -1, -1)}


def test_the_fit_can_fail():
    """The same samples against the distribution at a slightly other temperature are
    rejected: the test above has the power to see a temperature applied wrongly."""
    with cpu_kernels(vllm_plugin.expand_kernel):
        params, tokens = run_rejection_sampler()
    rows = [i for i, (t, p) in enumerate(params) if (t, p) == (0.7, 1.0)]
    first = Counter(int(tokens[i, 0]) for i in rows)
    counts = [first.get(v, 0) for v in range(VOCAB)]
    assert chi_square_p_value(counts, softmax(POSITION_LOGITS[0], 0.7)) > ALPHA
    assert chi_square_p_value(counts, softmax(POSITION_LOGITS[0], 0.8)) < ALPHA


def test_rejection_sampler_is_wrong_without_the_correction():
    """Today's vLLM-CPU: the first token of every sampled group fails the fit."""
    with cpu_kernels(vllm_expand_shim()):
        params, tokens = run_rejection_sampler()
    p_values = [fit(params, tokens, t, p, positions=("first",))["first"] for t, p, _ in GROUPS[:3]]
    assert max(p_values) < ALPHA, p_values
