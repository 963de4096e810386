"""/health, /ready and /metrics on the live server: every metric present and moving."""

from __future__ import annotations

import itertools

import httpx
import pytest

from app.metrics import (
    ENGINE_COUNTERS,
    ENGINE_GAUGES,
    ENGINE_HISTOGRAMS,
    EXPORTED_NAMES,
    EXTRACTIONS,
)
from rise.answers import extract_boxed


def extraction_of(text: str, answer: str | None) -> str:
    """The extraction label a turn of this text and answer must be counted under."""
    if answer is None:
        return "none"
    return "boxed" if extract_boxed(text) is not None else "fallback"


pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]


def test_health_and_ready(live) -> None:
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok", "model": None}
    ready = httpx.get(f"{live.url}/ready").json()
    assert ready["status"] == "ready" and ready["model"]


def test_metrics_present_and_moving_after_traffic(api: httpx.Client, helpers) -> None:
    m = helpers.metric
    before = helpers.scrape()
    for name in EXPORTED_NAMES:
        assert name in before, name
    body = api.post(
        "/solve",
        json={"question": "What is 8 * 3?", "max_turns": 3, "temperature": 0, "max_tokens": 16},
    ).json()
    api.get("/sessions/" + body["session_id"])
    after = helpers.scrape()

    solve = {"method": "POST", "route": "/solve", "status": "200"}
    assert (
        m(after, "rise_http_requests_total", **solve)
        == m(before, "rise_http_requests_total", **solve) + 1
    )
    count = "rise_http_request_duration_seconds_count"
    assert m(after, count, method="GET", route="/sessions/{session_id}") > m(
        before, count, method="GET", route="/sessions/{session_id}"
    )
    reason = {"mode": "vote", "stop_reason": "max_turns"}
    assert m(after, "rise_solves_total", **reason) == m(before, "rise_solves_total", **reason) + 1
    assert m(after, "rise_solve_duration_seconds_count") > m(
        before, "rise_solve_duration_seconds_count"
    )
    assert m(after, "rise_turns_used_sum") == m(before, "rise_turns_used_sum") + 3
    usage = body["usage"]
    for kind, value in [
        ("prompt", usage["prompt_tokens"]),
        ("generated", usage["completion_tokens"]),
        ("cached", usage["cached_tokens"]),
    ]:
        assert (
            m(after, "rise_tokens_total", kind=kind)
            == m(before, "rise_tokens_total", kind=kind) + value
        )
    answers = [t["answer"] for t in body["turns"]]
    changes = sum(a != b for a, b in itertools.pairwise(answers))  # gsm8k: numbers
    assert (
        m(after, "rise_answer_changes_total", kind="changed")
        >= m(before, "rise_answer_changes_total", kind="changed") + changes
    )
    if body["vote"]["total"]:
        assert m(after, "rise_vote_margin_count") == m(before, "rise_vote_margin_count") + 1
    model = api.get("/ready").json()["model"]
    found = [extraction_of(t["text"], t["answer"]) for t in body["turns"]]
    for kind in EXTRACTIONS:
        series = {"model": model, "mode": "vote", "extraction": kind}
        assert m(after, "rise_turn_answers_total", **series) == m(
            before, "rise_turn_answers_total", **series
        ) + found.count(kind), kind
    assert m(after, "rise_active_sessions") >= 1
    assert m(after, "rise_engine_queue_depth") == 0


# what the service's own traffic must move in vLLM's series (beside the dashboard's)
VLLM_MOVING = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def test_metrics_carry_the_engines_own_vllm_series(api: httpx.Client, helpers) -> None:
    """vLLM's own stat logger's series, beside ours, moving with traffic."""
    before = helpers.scrape()
    for name in (*ENGINE_GAUGES, *ENGINE_COUNTERS, *ENGINE_HISTOGRAMS):
        assert f"\n{name}" in before, name  # every series the dashboard reads
    question = {"question": "What is 6 * 7?", "max_turns": 2, "temperature": 0, "max_tokens": 8}
    api.post("/solve", json=question).raise_for_status()
    after = helpers.scrape()
    counts = [f"{name}_count" for name in ENGINE_HISTOGRAMS]
    for name in (*VLLM_MOVING, *ENGINE_COUNTERS, *counts):
        # turn 2 re-sends turn 1's prompt: the prefix cache is queried and hit
        assert helpers.metric(after, name) > helpers.metric(before, name), name


def test_metrics_count_right_and_wrong_flips_against_a_reference(
    api: httpx.Client, helpers
) -> None:
    m = helpers.metric
    probe = {"question": "Say a number.", "grader": "exact", "temperature": 0, "max_tokens": 8}
    first = api.post("/solve", json={**probe, "max_turns": 1}).json()["turns"][0]["answer"]
    before = helpers.scrape()
    body = api.post("/solve", json={**probe, "max_turns": 4, "reference": first}).json()
    after = helpers.scrape()
    outcomes = [t["outcome"] for t in body["turns"]]
    assert outcomes[0] == "correct"
    pairs = list(itertools.pairwise(outcomes))
    expected = {
        "wrong_to_right": sum(a != "correct" and b == "correct" for a, b in pairs),
        "right_to_wrong": sum(a == "correct" and b != "correct" for a, b in pairs),
    }
    for kind, delta in expected.items():
        got = m(after, "rise_answer_changes_total", kind=kind)
        assert got == m(before, "rise_answer_changes_total", kind=kind) + delta, kind
