"""Shared fixtures: the tiny models (built once per session), their vLLM engines, the data dir.

Integration tests use the real vLLM CPU engine; it starts in a subprocess (~30 s), so each
engine is built once per session and shared.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.shared_data import SHARED_DATA, require

PARROT_REPLY = "The answer is \\boxed{7}."

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite starts many short-lived engines on models built in fresh folders: compiling each
# (the CPU default where g++ is installed) would add its compile time to every start. Tests run
# eager; the compiled engine has its own test (tests/rise/test_engine_vllm.py).
os.environ.setdefault("RISE_ENFORCE_EAGER", "true")


# Tests are marked by what they need (pyproject.toml's markers); a test that uses one of these
# fixtures needs what it names, whatever its module says.
NEEDS = {
    "engine": {"tiny_engine", "parrot_engine", "live"},
    "redis": {"redis_server", "live"},
    "browser": {"browser"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for mark, fixtures in NEEDS.items():
            if used & fixtures:
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(autouse=True)
def _engines_only_where_marked(request: pytest.FixtureRequest, monkeypatch) -> None:
    """A test without the ``engine`` mark that starts a vLLM engine (in this process or as a
    live server) fails, naming the mark: ``make test-fast`` must never start one."""
    if request.node.get_closest_marker("engine") is not None:
        return
    from rise.engine.vllm_engine import VLLMEngine
    from testbed.processes import LiveServer

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} starts a vLLM engine: mark it `engine`")

    monkeypatch.setattr(VLLMEngine, "from_layout", refuse)
    monkeypatch.setattr(LiveServer, "launch", refuse)


@pytest.fixture(scope="session")
def parrot_reply() -> str:
    return PARROT_REPLY


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The GSM8K/MATH folder (tests/shared_data.py); a test that takes it skips without it."""
    return require(SHARED_DATA)


@dataclass(frozen=True)
class VerifierServer:
    url: str  # routes /seven, /slow, /error, /garbage, /shapeless (tests/verifier_server.py)
    log: Path  # one JSON line per request it received

    def requests(self) -> list[dict]:
        import json

        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture(scope="session")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifierServer]:
    """A real HTTP verifier process (tests/verifier_server.py) on a free port; its routes are
    verifiers that judge, time out, fail and answer garbage."""
    import subprocess
    import sys
    import time

    import httpx

    from testbed.processes import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("verifier") / "requests.jsonl"
    server = Path(__file__).parent / "verifier_server.py"
    proc = subprocess.Popen([sys.executable, str(server), str(port), "--log", str(log)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"{url}/ping", json={}, timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)
    yield VerifierServer(url, log)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from testbed.tiny_models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Llama with a ChatML tokenizer."""
    from testbed.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def parrot_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama taught to answer every chat with PARROT_REPLY (answer 7)."""
    from testbed.tiny_models import build_tiny_model, train_parrot

    path = build_tiny_model(tmp_path_factory.mktemp("parrot-model"), seed=1)
    return train_parrot(path, PARROT_REPLY)


def engine_settings(model_dir: Path, data_dir: Path, **overrides):
    from rise.engine import EngineSettings

    values = dict(
        model=str(model_dir),
        data_dir=data_dir,
        max_model_len=4096,
        kv_cache_gib=0.25,
        block_size=32,
        max_num_seqs=64,
        # The engine tests compare exact tokens and texts of the random tiny model. dtype=auto
        # is bf16 on CPUs with AVX512-BF16 now; there a length-cut greedy turn ended in an
        # incomplete UTF-8 sequence, which vLLM's streamed text withholds ("...Solve") while
        # decode(output_ids) shows it ("...Solve\ufffd\ufffd") — an edge of streaming
        # detokenisation to settle under issue 13. These fixtures keep float32, the dtype their
        # expectations were made in.
        dtype="float32",
    )
    values.update(overrides)
    return EngineSettings(**values)


@pytest.fixture(scope="session")
async def tiny_engine(tiny_model_dir: Path, tmp_path_factory) -> AsyncIterator:
    from rise.engine import build_engine

    engine = build_engine(engine_settings(tiny_model_dir, tmp_path_factory.mktemp("data")))
    yield engine
    await engine.close()


@pytest.fixture(scope="session")
async def parrot_engine(parrot_model_dir: Path, tmp_path_factory) -> AsyncIterator:
    from rise.engine import build_engine

    engine = build_engine(engine_settings(parrot_model_dir, tmp_path_factory.mktemp("data")))
    yield engine
    await engine.close()
