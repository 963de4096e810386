"""Feedback on the live server: the real engine, Redis, and a real HTTP verifier process whose
routes judge (``seven``), time out (``slow``), fail (``error``) and answer garbage
(``garbage``) — configured by RISE_VERIFIERS, picked by requests by name only."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]


def solve(api: httpx.Client, feedback: str, turns: int = 2) -> dict:
    body = {"question": "What is 3 + 4?", "max_turns": turns, "temperature": 0,
            "max_tokens": 12, "feedback": feedback}  # fmt: skip
    response = api.post("/solve", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_feedback_lists_the_configured_verifiers(api: httpx.Client) -> None:
    offered = api.get("/feedback").json()
    assert offered["feedback"] == ["fixed", "oracle", "calculator", "seven", "slow", "error",
                                   "garbage"]  # fmt: skip
    assert offered["verifiers"] == ["seven", "slow", "error", "garbage"]


def test_a_verifiers_message_is_the_next_turns_question(api: httpx.Client, verifier) -> None:
    seen = len(verifier.requests())
    body = solve(api, "seven")
    first = body["turns"][0]["feedback"]
    assert first["provider"] == "seven" and first["error"] is None
    session = api.get(f"/sessions/{body['session_id']}").json()
    said = [m["content"] for m in session["messages"] if m["role"] == "user"]
    if first["verdict"] == "incorrect":  # the random model rarely answers 7
        assert said[1].startswith("The result should be 7.")
    sent = verifier.requests()[seen:]
    assert [r["path"] for r in sent] == ["/seven", "/seven"]
    assert set(sent[0]) == {"path", "question", "attempt", "answer", "turn"}  # no reference
    assert sent[0]["attempt"] == body["turns"][0]["text"] and sent[1]["turn"] == 1


@pytest.mark.parametrize(
    ("verifier_name", "kind"), [("slow", "timeout"), ("error", "status"), ("garbage", "malformed")]
)
def test_a_failing_verifier_never_fails_the_solve(
    api: httpx.Client, helpers, verifier_name: str, kind: str
) -> None:
    before = helpers.scrape()
    body = solve(api, verifier_name)
    after = helpers.scrape()
    for turn in body["turns"]:
        feedback = turn["feedback"]
        assert (feedback["verdict"], feedback["error"]) == ("unknown", kind)
        assert feedback["message"].startswith("The answer is incorrect. Please try again.")
    errors = {"provider": verifier_name, "kind": kind}
    assert helpers.metric(after, "rise_feedback_errors_total", **errors) == helpers.metric(
        before, "rise_feedback_errors_total", **errors
    ) + len(body["turns"])
    unknown = {"provider": verifier_name, "verdict": "unknown"}
    assert helpers.metric(after, "rise_feedback_total", **unknown) >= 2


def test_calculator_feedback_on_the_real_engine(api: httpx.Client, helpers) -> None:
    before = helpers.scrape()
    body = solve(api, "calculator")
    after = helpers.scrape()
    verdicts = [t["feedback"]["verdict"] for t in body["turns"]]
    assert set(verdicts) <= {"incorrect", "unknown"}  # a calculator never says "correct"
    count = "rise_feedback_duration_seconds_count"
    assert helpers.metric(after, count, provider="calculator") == helpers.metric(
        before, count, provider="calculator"
    ) + len(body["turns"])


def test_a_verifier_is_picked_by_name_never_by_url(api: httpx.Client, verifier) -> None:
    seen = len(verifier.requests())
    response = api.post(
        "/solve", json={"question": "q", "feedback": f"{verifier.url}/seven", "max_turns": 1}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "feedback"
    assert len(verifier.requests()) == seen
