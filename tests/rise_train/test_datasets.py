"""Problem loaders: the shared GSM8K / MATH files, custom JSONL, errors, deterministic subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rise_train.datasets import Problem, load_problems, split_problems, subset
from tests.shared_data import shared_file


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_problems_gsm8k_test_references() -> None:
    problems = load_problems(f"gsm8k:{shared_file('gsm8k', 'test.jsonl')}")
    assert len(problems) == 1319
    first = problems[0]
    assert first.reference == "18"
    assert first.id == "gsm8k-test-0"
    assert first.source == "gsm8k"
    assert first.grader == "gsm8k"
    assert first.question.startswith("Janet")
    assert problems[17].id == "gsm8k-test-17"
    assert all(p.reference and "####" not in p.reference for p in problems)


def test_load_problems_bare_path_sniffs_gsm8k() -> None:
    sniffed = load_problems(str(shared_file("gsm8k", "train.jsonl")), limit=5)
    explicit = load_problems(f"gsm8k:{shared_file('gsm8k', 'train.jsonl')}", limit=5)
    assert sniffed == explicit
    assert sniffed[0].id == "gsm8k-train-0"


def test_load_problems_math_answer_field() -> None:
    problems = load_problems(f"math:{shared_file('math', 'test.jsonl')}")
    assert len(problems) == 5000
    assert problems[0].reference == "2"  # vertical asymptotes of 2/(x^2+x-6)
    assert problems[0].grader == "math"
    assert problems[0].question.startswith("How many vertical asymptotes")


def test_load_problems_math500_sniffed_with_unique_ids() -> None:
    problems = load_problems(str(shared_file("math", "math500_test.jsonl")))
    assert len(problems) == 500
    assert problems[0].source == "math"
    assert problems[0].id == "math-test/precalculus/807.json"
    assert problems[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert len({p.id for p in problems}) == 500


def test_load_problems_math_boxed_solution_fallback(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.jsonl",
        [{"problem": "p", "solution": "So $x=\\boxed{\\frac{\\sqrt{3}}{2}}$."}],
    )
    (problem,) = load_problems(f"math:{path}")
    assert problem.reference == "\\frac{\\sqrt{3}}{2}"


def test_load_problems_custom_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "custom.jsonl",
        [
            {"uid": "a1", "prompt": "What is 2+2?", "target": 4},
            {"uid": "a2", "prompt": "What is 3+3?", "target": " 6 "},
        ],
    )
    problems = load_problems(
        f"jsonl:{path}", question_field="prompt", answer_field="target", id_field="uid"
    )
    assert problems == [
        Problem("custom-a1", "What is 2+2?", "4", "custom", "math"),
        Problem("custom-a2", "What is 3+3?", "6", "custom", "math"),
    ]


def test_load_problems_custom_reference_parsers(tmp_path: Path) -> None:
    fields = {"question_field": "prompt", "answer_field": "target"}
    worked = _write(tmp_path / "worked.jsonl", [{"prompt": "3+3?", "target": "So 6.\n#### 6"}])
    parsed = load_problems(f"jsonl:{worked}", **fields, reference_parser="gsm8k", source="mine")
    assert parsed == [Problem("mine-worked-0", "3+3?", "6", "mine", "gsm8k")]
    boxed = _write(
        tmp_path / "boxed.jsonl", [{"prompt": "1/2?", "target": "$\\boxed{\\frac{1}{2}}$"}]
    )
    (problem,) = load_problems(f"jsonl:{boxed}", **fields, reference_parser="boxed")
    assert problem.reference == "\\frac{1}{2}"
    assert problem.id == "boxed-0"


def test_load_problems_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        load_problems(f"jsonl:{path}")


def test_load_problems_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 3"}, {"question": "q"}])
    with pytest.raises(ValueError, match=r"g\.jsonl:2: missing .*'answer'"):
        load_problems(f"gsm8k:{path}")


def test_load_problems_gsm8k_without_marker_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(ValueError, match=r"g\.jsonl:1: .*####"):
        load_problems(f"gsm8k:{path}")


def test_load_problems_duplicate_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [{"id": 1, "question": "a", "answer": "1"}] * 2)
    with pytest.raises(ValueError, match=r"d\.jsonl:2: duplicate problem id 'd-1'"):
        load_problems(str(path))


def test_load_problems_unknown_spec_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown problem spec"):
        load_problems("csv:/x.csv")
    with pytest.raises(FileNotFoundError):
        load_problems(f"gsm8k:{tmp_path / 'absent.jsonl'}")


def test_load_problems_unsniffable_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", [{"q": "?", "a": "1"}])
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_problems(str(path))


def test_load_problems_hf_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen = {}

    def fake_load(name: str, config: str | None, split: str) -> list[dict[str, str]]:
        seen.update(name=name, config=config, split=split)
        return [{"question": "q0", "answer": "x\n#### 1,234"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    (problem,) = load_problems("hf:openai/gsm8k:main", split="test")
    assert seen == {"name": "openai/gsm8k", "config": "main", "split": "test"}
    assert problem == Problem("gsm8k-test-0", "q0", "1234", "gsm8k", "gsm8k")


def test_load_problems_hf_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"could not load the Hugging Face dataset 'x/y'.*local"):
        load_problems("hf:x/y")


def test_load_problems_subsets_are_deterministic() -> None:
    spec = f"gsm8k:{shared_file('gsm8k', 'test.jsonl')}"
    window = load_problems(spec, offset=10, limit=5)
    assert [p.id for p in window] == [f"gsm8k-test-{i}" for i in range(10, 15)]
    a = load_problems(spec, shuffle=True, seed=3, limit=20)
    b = load_problems(spec, shuffle=True, seed=3, limit=20)
    c = load_problems(spec, shuffle=True, seed=4, limit=20)
    assert a == b
    assert a != c
    assert len({p.id for p in a}) == 20


def test_subset_rejects_negative_values() -> None:
    with pytest.raises(ValueError):
        subset([], offset=-1)


def test_split_problems_fraction_and_count() -> None:
    problems = [Problem(f"p-{i}", f"q{i}", str(i), "t") for i in range(50)]
    train, held = split_problems(problems, 0.2, seed=1)
    assert len(held) == 10 and len(train) == 40
    assert {p.id for p in train}.isdisjoint({p.id for p in held})
    assert train == sorted(train, key=lambda p: int(p.reference))  # order preserved
    assert split_problems(problems, 0.2, seed=1) == (train, held)
    assert split_problems(problems, 0.2, seed=2) != (train, held)
    train7, held7 = split_problems(problems, 7, seed=1)
    assert len(held7) == 7 and len(train7) == 43
    with pytest.raises(ValueError):
        split_problems(problems, 1.5)
    with pytest.raises(ValueError):
        split_problems(problems, 51)


def test_a_runs_problem_file_reads_back_as_written(tmp_path) -> None:
    """``problems/*.jsonl`` of a run directory is a valid spec: ids and graders kept."""
    from rise_train.datasets import Problem, load_problems, write_problems

    problems = [
        Problem(
            id="arith-eval-0", question="2 + 2?", reference="4", source="arith", grader="gsm8k"
        ),
        Problem(
            id="x-7", question="Simplify.", reference="\\frac{1}{2}", source="x", grader="math"
        ),
    ]
    path = tmp_path / "eval.jsonl"
    write_problems(problems, path)
    assert load_problems(str(path)) == problems
    assert load_problems(str(path), limit=1, offset=1) == problems[1:]
