"""Feedback providers (rise/feedback): the calculator's exact checks, the providers' verdicts and
messages, the plan's feedback rules, a real HTTP verifier process (right, wrong, slow, failing,
garbage), and the loop carrying feedback from one turn into the next."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from rise.engine.base import GenerationChunk
from rise.episode import Feedback, Outcome, StopReason, Turn, Verdict
from rise.feedback import (
    Attempt,
    CalculatorFeedback,
    FeedbackProviders,
    FixedFeedback,
    OracleFeedback,
)
from rise.feedback.calculator import (
    evaluate,
    find_slips,
    format_number,
    normalise,
    slip_followed_up,
)
from rise.feedback.verifier import HttpVerifier, VerifierSettings, parse_verifiers
from rise.loop import TurnLoop, new_episode
from rise.plan import PlanError, PlanLimits, RequestPlan
from rise.prompts import ChatRenderer, PromptConfig
from tests.scripted_engine import ScriptedEngineBase

PROMPTS = PromptConfig()
Q = "Ana buys 12 bags with 6 apples in each bag. How many apples does Ana buy?"


# ---- the calculator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "slips"),
    [
        ("So 12 x 6 = 62 apples.", ["12 x 6 = 72, not 62"]),
        ("She has 21 - 12 = 8 stamps left.", ["21 - 12 = 9, not 8"]),
        ("9 ÷ 3 = 4, and 2 × 3 = 6.", ["9 ÷ 3 = 3, not 4"]),
        ("(5 + 3) \\times 2 = 18", ["(5 + 3) \\times 2 = 16, not 18"]),
        ("3 + 4 = 7 + 2 = 10", ["7 + 2 = 9, not 10"]),  # a chain, link by link
        ("1,000 + 250 = 1,200", ["1,000 + 250 = 1250, not 1,200"]),
        ("7 / 2 = 3", ["7 / 2 = 3.5, not 3"]),  # an integer claim is not a rounding
        ("$9 + $4 = $14", ["$9 + $4 = 13, not $14"]),
        ("1. (12 bags) + 6 apples = 20 apples", ["(12 bags) + 6 apples = 18, not 20"]),
        ("3 boxes x 4 = 13", ["3 boxes x 4 = 12, not 13"]),  # "x" the operator, not in "boxes"
        ("12 times 6 = 62", ["12 times 6 = 72, not 62"]),
    ],
)
def test_calculator_names_wrong_statements(text: str, slips: list[str]) -> None:
    assert [str(slip) for slip in find_slips(text)] == slips


@pytest.mark.parametrize(
    "text",
    [
        "Ben buys 5 more pencils, so he has 18 + 5 = 23 pencils. The answer is \\boxed{23}.",
        "10 / 3 = 3.33 and 10/3 = 3.3",  # rounded to the decimals written
        "x = 6 and 2x + 5 = 17",  # algebra, not arithmetic
        "1/0 = 5",  # no value to compare
        "The answer is 42.",
        "0.1 + 0.2 = 0.3",  # exact rationals, not floats
        "2 hours x 60 minutes = 120 minutes",
        "He has 3 apples and 4 pears = 7",  # words between the numbers: not arithmetic
    ],
)
def test_calculator_finds_no_slip_in_right_or_uncheckable_text(text: str) -> None:
    assert find_slips(text) == []


def test_calculator_arithmetic_is_exact_and_sanitised() -> None:
    assert normalise("12 x 6") == normalise("12x6") == "12*6" and normalise("1,000 ÷ 8") == "1000/8"
    assert normalise("(3 + 4") is None and normalise("import os") is None
    assert evaluate("1/3+1/6") == Fraction(1, 2)
    assert evaluate("0.1+0.2") == Fraction(3, 10)
    with pytest.raises(ValueError):
        evaluate("__import__('os')")
    assert [format_number(Fraction(*v)) for v in ((72, 1), (7, 2), (1, 8), (7, 3))] == [
        "72",
        "3.5",
        "0.125",
        "7/3",
    ]


# ---- providers ---------------------------------------------------------------------------------


def attempt(text: str, answer: str | None, outcome: Outcome | None = None) -> Attempt:
    return Attempt(Q, text, answer, 0, reference="72", outcome=outcome)


async def test_fixed_feedback_is_rises_prompt_whatever_the_attempt() -> None:
    feedback = await FixedFeedback().judge(attempt("12 x 6 = 62", "62"), PROMPTS)
    assert feedback.verdict is Verdict.UNKNOWN
    assert feedback.message == PROMPTS.introspection_message(Q)


async def test_oracle_feedback_follows_the_reference() -> None:
    wrong = await OracleFeedback().judge(attempt("62", "62", Outcome.WRONG), PROMPTS)
    right = await OracleFeedback().judge(attempt("72", "72", Outcome.CORRECT), PROMPTS)
    assert (wrong.verdict, wrong.message) == (
        Verdict.INCORRECT,
        PROMPTS.introspection_message(Q),
    )
    assert (right.verdict, right.message) == (Verdict.CORRECT, PROMPTS.correct_message(Q))


async def test_calculator_feedback_names_the_slip_or_says_nothing_new() -> None:
    slip = await CalculatorFeedback().judge(attempt("12 x 6 = 62", "62"), PROMPTS)
    assert slip.verdict is Verdict.INCORRECT and slip.slips == ("12 x 6 = 72, not 62",)
    assert "Check your arithmetic: 12 x 6 = 72, not 62." in slip.message and Q in slip.message
    clean = await CalculatorFeedback().judge(attempt("12 x 6 = 72", "72"), PROMPTS)
    assert clean.verdict is Verdict.UNKNOWN  # a calculator cannot prove an answer right
    assert clean.message == PROMPTS.introspection_message(Q)
    many = await CalculatorFeedback().judge(attempt("1+1=3, 2+2=5, 3+3=7", "7"), PROMPTS)
    assert len(many.slips) == 2  # the first two, not a wall of text


async def test_feedback_wording_comes_from_the_prompt_file() -> None:
    prompts = PromptConfig(feedback_slips="Fix {slips} in: {question}")
    slip = await CalculatorFeedback().judge(attempt("12 x 6 = 62", "62"), prompts)
    assert slip.message == f"Fix 12 x 6 = 72, not 62 in: {Q}"


def test_providers_offer_builtins_and_named_verifiers_only() -> None:
    providers = FeedbackProviders({"units": HttpVerifier("units", "http://127.0.0.1:9/x")})
    assert providers.names == ("fixed", "oracle", "calculator", "units")
    assert providers.is_verifier("units") and not providers.is_verifier("calculator")
    with pytest.raises(KeyError, match="offers fixed, oracle, calculator, units"):
        providers.get("http://evil.example/verify")
    with pytest.raises(ValueError, match="taken"):
        FeedbackProviders({"calculator": HttpVerifier("calculator", "http://x")})


def test_feedback_round_trips_through_a_stored_turn() -> None:
    feedback = Feedback("calculator", Verdict.INCORRECT, "m", ("12 x 6 = 72, not 62",))
    turn = Turn(0, "u", [1], [2], "t", "stop", feedback=feedback)
    assert Turn.from_dict(turn.to_dict()).feedback == feedback
    legacy = turn.to_dict()
    del legacy["feedback"]  # a session stored before feedback existed
    assert Turn.from_dict(legacy).feedback is None


# ---- the plan ----------------------------------------------------------------------------------


def test_plan_checks_feedback_names_against_the_deployment() -> None:
    limits = PlanLimits(
        max_turns=10, max_tokens=512, n=4, feedback=("fixed", "calculator", "units")
    )
    RequestPlan(feedback="units").check(limits)
    with pytest.raises(PlanError) as caught:
        RequestPlan(feedback="oracle").check(limits)
    assert caught.value.field == "feedback" and "fixed, calculator, units" in str(caught.value)
    with pytest.raises(PlanError):
        RequestPlan(feedback="")


def test_plan_needs_a_reference_for_the_oracle_not_for_a_verifier_stop() -> None:
    assert RequestPlan(feedback="oracle").needs_reference
    assert RequestPlan(stop_on_correct=True).needs_reference  # graded by the reference
    assert RequestPlan(stop_on_correct=True, feedback="calculator").needs_reference
    assert not RequestPlan(stop_on_correct=True, feedback="units").needs_reference
    assert not RequestPlan(feedback="calculator").needs_reference


# ---- a real HTTP verifier process --------------------------------------------------------------


async def test_verifier_verdicts_and_messages(verifier) -> None:
    verifier = HttpVerifier("seven", f"{verifier.url}/seven", timeout_s=2)
    try:
        wrong = await verifier.judge(attempt("6 + 2 = 8", "8"), PROMPTS)
        right = await verifier.judge(attempt("3 + 4 = 7", "7"), PROMPTS)
    finally:
        await verifier.aclose()
    assert (wrong.verdict, wrong.error) == (Verdict.INCORRECT, None)
    assert wrong.message == PROMPTS.verifier_message(Q, "The result should be 7.")
    assert (right.verdict, right.message) == (Verdict.CORRECT, PROMPTS.correct_message(Q))
    assert wrong.latency_s > 0


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ("slow", "timeout"),
        ("error", "status"),
        ("garbage", "malformed"),
        ("shapeless", "malformed"),
    ],
)
async def test_a_failing_verifier_gives_rises_prompt_and_names_the_failure(
    verifier, route: str, error: str
) -> None:
    verifier = HttpVerifier(route, f"{verifier.url}/{route}", timeout_s=0.5)
    try:
        feedback = await verifier.judge(attempt("6 + 2 = 8", "8"), PROMPTS)
    finally:
        await verifier.aclose()
    assert (feedback.verdict, feedback.error) == (Verdict.UNKNOWN, error)
    assert feedback.message == PROMPTS.introspection_message(Q)


async def test_an_unreachable_verifier_is_named_so() -> None:
    verifier = HttpVerifier("gone", "http://127.0.0.1:9/verify", timeout_s=2)
    feedback = await verifier.judge(attempt("x", None), PROMPTS)
    await verifier.aclose()
    assert (feedback.verdict, feedback.error) == (Verdict.UNKNOWN, "unreachable")


def test_verifier_settings_parse_names_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_verifiers(" a=http://x:1/v , b-2=https://y/v ") == {
        "a": "http://x:1/v",
        "b-2": "https://y/v",
    }
    for bad in ("a", "a=ftp://x", "1a=http://x", "a=http://x,a=http://y"):
        with pytest.raises(ValueError):
            parse_verifiers(bad)
    monkeypatch.setenv("RISE_VERIFIERS", "units=http://127.0.0.1:9/v")
    monkeypatch.setenv("RISE_VERIFIER_TIMEOUT_S", "1.5")
    (verifier,) = VerifierSettings().providers().values()
    assert (verifier.name, verifier.url, verifier.timeout_s) == (
        "units",
        "http://127.0.0.1:9/v",
        1.5,
    )
    monkeypatch.setenv("RISE_VERIFIERS", "units")
    with pytest.raises(ValueError, match="name=url"):
        VerifierSettings()


# ---- the loop ----------------------------------------------------------------------------------


class ReplyEngine(ScriptedEngineBase):
    """Answers with the next scripted reply, whatever the prompt; remembers the prompts."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        super().__init__(tokenizer)
        self.replies = list(replies)
        self.prompts: list[str] = []

    async def generate(self, prompt_ids, sampling, request_id, affinity=None, stream=True):
        self.prompts.append(self.tokenizer.decode(prompt_ids))
        text = self.replies.pop(0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        yield GenerationChunk(ids, text, True, "stop", 0, 0.01)
        await asyncio.sleep(0)


async def test_loop_carries_calculator_feedback_into_the_next_turn(tiny_tokenizer) -> None:
    engine = ReplyEngine(
        tiny_tokenizer, ["12 x 6 = 62. The answer is 62.", "12 x 6 = 72. The answer is 72."]
    )
    loop = TurnLoop(engine, ChatRenderer(tiny_tokenizer))
    episode = new_episode(Q, reference="72", grader="gsm8k")
    await loop.run([episode], RequestPlan(max_turns=2, feedback="calculator"))
    first, second = episode.turns
    assert first.feedback is not None and first.feedback.slips == ("12 x 6 = 72, not 62",)
    assert second.user_message == first.feedback.message
    assert "Check your arithmetic: 12 x 6 = 72, not 62." in engine.prompts[1]
    assert second.feedback is not None and second.feedback.verdict is Verdict.UNKNOWN


async def test_loop_stops_on_a_verifiers_correct_without_a_reference(
    tiny_tokenizer, verifier
) -> None:
    replies = ["2 + 3 = 5. The answer is 5.", "3 + 4 = 7. The answer is 7.", "never asked"]
    engine = ReplyEngine(tiny_tokenizer, replies)
    providers = FeedbackProviders({"seven": HttpVerifier("seven", f"{verifier.url}/seven")})
    loop = TurnLoop(engine, ChatRenderer(tiny_tokenizer), providers)
    episode = new_episode("What is 3 + 4?", grader="gsm8k")  # no reference
    plan = RequestPlan(max_turns=3, feedback="seven", stop_on_correct=True)
    assert not plan.needs_reference
    await loop.run([episode], plan)
    await providers.aclose()
    assert [t.feedback.verdict for t in episode.turns if t.feedback] == [
        Verdict.INCORRECT,
        Verdict.CORRECT,
    ]
    assert episode.stop_reason is StopReason.ORACLE
    assert episode.turns[1].user_message.startswith("The result should be 7.")


@pytest.mark.parametrize(
    ("later", "follow_up"),
    [
        ("So 12 x 6 = 72 apples.", "fixed"),
        ("12 × 6 = 72", "fixed"),  # another spelling of the same computation
        ("12x6 = 62 again", "repeated"),
        ("The answer is 7.", "dropped"),
    ],
)
def test_a_named_slip_is_followed_up_fixed_repeated_or_dropped(later: str, follow_up: str) -> None:
    (slip,) = find_slips("12 x 6 = 62")
    assert slip_followed_up(str(slip), later) == follow_up


def test_calculator_rejects_a_long_run_without_equals_in_polynomial_time() -> None:
    """A looping attempt ("1 + 2 + 3 + ..." and never "=") once made the statement pattern
    backtrack exponentially (two "\\s*" sharing each gap): 12 operands did not finish in 20 s,
    and issue 31's solution-teacher run hung on such an attempt. Checked in a child process so
    a regression fails by the (generous) deadline instead of hanging the suite; no timing is
    asserted beyond "it finishes"."""
    import subprocess
    import sys

    code = (
        "from rise.feedback.calculator import find_slips, statements\n"
        "run = ' + '.join(str(i) for i in range(1, 400))\n"
        "assert statements(run + ' is the sum') == []\n"
        "assert statements('( ' * 60 + '1 + 2' + ' )' * 60 + ' apples and more') == []\n"
        "(slip,) = find_slips(' + '.join(['1'] * 300) + ' = 7')\n"
        "assert slip.value == 300 and slip.written == '7'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
