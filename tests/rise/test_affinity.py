"""Session roots and engine-rank pinning (rise.affinity) and the data-parallel argument mapping."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rise.affinity import (
    is_root,
    is_session_id,
    new_root,
    new_session_ids,
    session_root,
)
from rise.engine import EngineSettings, SamplingConfig
from rise.engine.base import affinity_rank
from rise.engine.vllm_engine import VLLMEngine, engine_layout


def test_session_ids_of_one_request_share_a_root() -> None:
    plain = new_session_ids(1)
    assert len(plain) == 1 and is_root(plain[0])  # a single fresh session keeps a plain id
    three = new_session_ids(3)
    assert three[0] == session_root(three[1]) == session_root(three[2])
    assert len(set(three)) == 3 and all(is_session_id(i) for i in three)
    given = new_session_ids(2, "conversation-7")
    assert all(i.startswith("conversation-7.") for i in given) and given[0] != given[1]
    assert session_root("abcdefgh") == "abcdefgh"
    with pytest.raises(ValueError, match="root"):
        new_session_ids(1, "no.dots.here")


def test_roots_and_ids_are_validated() -> None:
    assert is_root(new_root()) and len(new_root()) >= 16
    assert not is_root("short") and not is_root("a b c d e f g") and not is_root("x" * 65)
    assert is_session_id("abcdefgh.suffix") and not is_session_id("abcdefgh.")
    assert not is_session_id("abcdefgh.a.b")


def test_affinity_rank_is_a_stable_hash_that_covers_every_rank() -> None:
    key = "conversation1"
    expected = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 4
    assert affinity_rank(key, 4) == expected  # not Python's per-process salted hash()
    assert affinity_rank(key, 1) == 0
    counts = Counter(affinity_rank(new_root(), 4) for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 800
    with pytest.raises(ValueError):
        affinity_rank(key, 0)


def test_data_parallel_size_reaches_vllm_engine_args(tmp_path: Path) -> None:
    settings = EngineSettings(data_parallel_size=4, tensor_parallel_size=2)
    layout = engine_layout(settings, tmp_path, gpu=True)
    assert layout.kwargs["data_parallel_size"] == 4 and layout.kwargs["tensor_parallel_size"] == 2
    assert layout.data_parallel_size == 4
    assert engine_layout(EngineSettings(), tmp_path, gpu=False).kwargs["data_parallel_size"] == 1


def test_data_parallel_size_reads_its_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("RISE_DATA_PARALLEL_SIZE", "2")
    assert EngineSettings().data_parallel_size == 2
    monkeypatch.setenv("RISE_DATA_PARALLEL_SIZE", "0")
    with pytest.raises(ValueError, match="data_parallel_size"):
        EngineSettings()


class _RecordingLLM:
    """Stands in for ``AsyncLLM`` to record the arguments of ``generate`` (argument mapping
    only: the real engine's data parallelism needs GPUs)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def generate(self, prompt: Any, params: Any, **kwargs: Any):
        self.calls.append(kwargs)
        return
        yield  # an async generator that yields nothing

    async def abort(self, request_id: str) -> None:
        pass


@pytest.mark.parametrize("size", [1, 3])
async def test_generate_pins_a_session_to_its_rank(size: int) -> None:
    llm = _RecordingLLM()
    engine = VLLMEngine(llm, None, "m", 128, per_request_seed=False, data_parallel_size=size)
    sampling = SamplingConfig(max_tokens=4)
    for affinity in ("conversation1", "conversation2", None):
        async for _ in engine.generate([1, 2, 3], sampling, f"r-{affinity}", affinity):
            pass
    ranks = [call["data_parallel_rank"] for call in llm.calls]
    if size == 1:
        assert ranks == [None, None, None]  # one rank: nothing to choose
    else:
        assert ranks[:2] == [affinity_rank("conversation1", 3), affinity_rank("conversation2", 3)]
        assert ranks[2] is None  # no session: vLLM's own balancing
    assert llm.calls[0]["request_id"] == "r-conversation1"
