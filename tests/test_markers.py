"""The test markers keep their promise: a test not marked ``engine`` cannot start an engine."""

from __future__ import annotations

import pytest


def test_an_unmarked_test_cannot_start_an_engine(tmp_path) -> None:
    from rise.engine.vllm_engine import VLLMEngine
    from testbed.processes import LiveServer

    with pytest.raises(pytest.fail.Exception, match="mark it `engine`"):
        VLLMEngine.from_layout(None, model_name="m")  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception, match="mark it `engine`"):
        LiveServer({"RISE_PORT": "1"}, tmp_path / "log").launch()


def test_fixtures_mark_what_a_test_needs(request: pytest.FixtureRequest) -> None:
    from tests.conftest import NEEDS

    assert NEEDS["engine"] >= {"tiny_engine", "parrot_engine", "live"}
    assert request.node.get_closest_marker("engine") is None
