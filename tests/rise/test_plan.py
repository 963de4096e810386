"""rise.plan.RequestPlan: defaults, validation, limits, storage, and what the core runs."""

from __future__ import annotations

import pytest

from rise.engine.base import SamplingConfig
from rise.loop import new_episode
from rise.plan import (
    CLI_PLAN,
    CONTINUE_TURNS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_TURNS,
    PlanError,
    PlanLimits,
    RequestPlan,
    mode_rules,
)


def test_plan_defaults_are_the_engine_contracts_and_one_max_turns() -> None:
    plan = RequestPlan()
    engine = SamplingConfig()
    assert (plan.temperature, plan.top_p, plan.max_tokens) == (
        engine.temperature,
        engine.top_p,
        engine.max_tokens,
    )
    assert DEFAULT_MAX_TOKENS == 512 and plan.max_turns == DEFAULT_MAX_TURNS == 5
    assert CONTINUE_TURNS == 1
    assert (plan.mode, plan.n, plan.stop_on_correct, plan.converge_k) == ("vote", 1, False, None)
    assert CLI_PLAN.updated(temperature=None) == CLI_PLAN  # the CLI's preset, declared here


def test_updated_keeps_unset_fields_and_mode_rules_split_the_oracle() -> None:
    plan = RequestPlan(temperature=0.3, seed=4)
    assert plan.updated(temperature=None, seed=None, max_turns=2) == RequestPlan(
        temperature=0.3, seed=4, max_turns=2
    )
    oracle = plan.updated(**mode_rules("oracle"))
    assert oracle.mode == "oracle" and oracle.stop_on_correct and oracle.needs_reference
    back = oracle.updated(**mode_rules("last"))
    assert back.mode == "last" and not back.stop_on_correct and not back.needs_reference
    assert mode_rules(None) == {}
    assert RequestPlan(stop=["a"]).stop == ("a",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field",
    ["max_turns", "n", "mode", "converge_k", "token_budget", "context_window", "top_p"],
)
def test_plan_refuses_bad_values_naming_the_field(field: str) -> None:
    bad = {"max_turns": 0, "n": 0, "mode": "best", "converge_k": 1, "token_budget": 0}
    bad |= {"context_window": 0, "top_p": 0.0}
    with pytest.raises(PlanError) as error:
        RequestPlan(**{field: bad[field]})
    assert error.value.field == field


def test_check_applies_the_deployment_limits_and_the_reference_rule() -> None:
    limits = PlanLimits(max_turns=10, max_tokens=1024, n=4)
    RequestPlan(max_turns=10, max_tokens=1024, n=4).check(limits)
    for field, value in (("max_turns", 11), ("max_tokens", 1025), ("n", 5)):
        with pytest.raises(PlanError, match="at most") as error:
            RequestPlan(**{field: value}).check(limits)
        assert error.value.field == field
    oracle = RequestPlan(**mode_rules("oracle"))
    oracle.check(limits, [new_episode("q", reference="1")])
    with pytest.raises(PlanError) as error:
        oracle.check(limits, [new_episode("q", reference="1"), new_episode("q")])
    assert error.value.field == "reference"
    with pytest.raises(PlanError):  # the oracle stop rule alone needs grading too
        RequestPlan(stop_on_correct=True).check(limits, [new_episode("q")])


def test_options_round_trip_and_legacy_sessions() -> None:
    plan = RequestPlan(max_turns=3, mode="last", converge_k=3, stop=("x",), seed=1)
    assert RequestPlan.from_options(plan.options()) == plan
    assert RequestPlan.from_options(plan.options(), max_turns=1, seed=None) == RequestPlan(
        max_turns=1, mode="last", converge_k=3, stop=("x",), seed=1
    )
    # What sessions stored before the plan existed.
    legacy = {
        "mode": "oracle",
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 16,
        "seed": None,
        "stop": [],
        "stop_on_convergence": True,
        "context_window": None,
    }
    old = RequestPlan.from_options(legacy)
    assert old.mode == "oracle" and old.stop_on_correct and old.converge_k == 2
    assert (old.temperature, old.max_tokens) == (0.0, 16)
    assert not RequestPlan.from_options({**legacy, "mode": "vote"}).stop_on_correct


def test_sampling_carries_every_field() -> None:
    plan = RequestPlan(
        max_turns=4,
        mode="oracle",
        stop_on_correct=True,
        converge_k=2,
        token_budget=99,
        context_window=1,
        temperature=0.5,
        top_p=0.9,
        max_tokens=32,
        seed=7,
        stop=("\n",),
    )
    sampling = SamplingConfig(temperature=0.5, top_p=0.9, max_tokens=32, seed=7, stop=("\n",))
    assert plan.sampling() == sampling
