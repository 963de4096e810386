"""The generated arithmetic problems: deterministic draws and worked solutions that are right."""

from __future__ import annotations

import hashlib
import json

import pytest

from rise.answers import get_grader
from rise.episode import Outcome
from rise.feedback.calculator import statements
from rise_train.arithmetic import make_problems
from rise_train.datasets import Problem, load_problems, write_problems
from rise_train.iterate import DataSet, data_entry


@pytest.mark.parametrize("family", ["arith", "oot"])
def test_every_worked_solution_is_right_and_checked_by_the_calculator(family: str) -> None:
    """The solution teacher's text: its answer line grades right, and every statement in it is
    one the calculator checks and finds right (one per step, so none is left unchecked)."""
    grader = get_grader("gsm8k")
    problems = make_problems(600, 0, "train", 0.3, set(), family=family)
    two_step = 0
    for p in problems:
        assert p.solution is not None
        assert grader.grade(grader.extract(p.solution), p.reference) is Outcome.CORRECT, p
        found = statements(p.solution)
        steps = p.solution.count("\n")  # one line per step, then the answer line
        assert len(found) == steps and all(s.right for s in found), p.solution
        two_step += steps == 2
    assert 0.2 < two_step / len(problems) < 0.4  # both makers ran


def test_solutions_leave_the_draw_and_its_hash_unchanged() -> None:
    """Adding the solution drew no extra random number: the study's recorded problem hash (the
    held-out set's, from runs before solutions existed) still matches."""
    train = make_problems(500, 0, "train", 0.3, set())
    held = make_problems(400, 0, "eval", 0.3, {p.question for p in train})
    recorded = "72890609c25c543d7056b97eb545552de8b9a12e211c29e3cb63623fb060b6d9"
    assert data_entry(DataSet(held, "held"))["problems_sha256"] == recorded
    identity = [{k: v for k, v in p.to_dict().items() if k != "solution"} for p in held]
    assert hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest() == recorded


def test_a_problem_file_keeps_its_solutions(tmp_path) -> None:
    problems = [*make_problems(3, 1, "train", 0.5, set()), Problem("x", "q?", "1", "s", "gsm8k")]
    write_problems(problems, tmp_path / "p.jsonl")
    assert load_problems(str(tmp_path / "p.jsonl")) == problems
    assert "solution" not in (tmp_path / "p.jsonl").read_text().splitlines()[-1]
