"""Problem sets for collection and evaluation: GSM8K, MATH, any JSONL, Hugging Face datasets.

Everything becomes a :class:`Problem` (id, question, reference answer, source, grader) through
one entry point, :func:`load_problems`, whose ``spec`` names the format and location:

- ``gsm8k:<path>``  rows ``{"question", "answer"}``; the reference is the number after ``####``.
- ``math:<path>``   rows ``{"problem", "answer"}``; without ``answer``, the last ``\\boxed{}``
  of ``solution``.
- ``jsonl:<path>``  any JSONL; field names and the reference parser are arguments.
- ``<path>.jsonl``  the format sniffed from the first row's fields (GSM8K, MATH, a run's own
  ``problems/*.jsonl`` as :func:`write_problems` wrote it, else generic).
- ``hf:<name>[:<config>]``  ``datasets.load_dataset(name, config, split=split)``, rows read as
  above (needs a reachable hub or a populated local cache).

Ids are stable across subsets and shuffles: ``<source>-<id field>`` when a row has an id field,
else ``<source>-<file stem or split>-<0-based line>`` (e.g. ``gsm8k-test-17``). Subsets are
deterministic: the optional seeded shuffle comes first, then ``offset``, then ``limit``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rise.answers import extract_boxed, parse_gsm8k_reference

ReferenceParser = Literal["gsm8k", "boxed", "plain"]
_ID_FIELDS = ("id", "unique_id", "problem_id")  # looked for when no id_field is given


@dataclass(frozen=True)
class Problem:
    """One single-turn problem: the RISE episode starts from its question."""

    id: str
    question: str
    reference: str
    source: str
    grader: str = "math"  # a name for rise.answers.get_grader
    # A worked solution ending in the answer line, where the source knows one (the generated
    # problems do): the solution teacher's text (rise_train.collect).
    solution: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def identity(self) -> dict[str, str]:
        """What makes the problem this problem (provenance hashes): every field but the
        solution, which adds nothing its draw did not decide, so hashes from before solutions
        existed still compare."""
        return {k: v for k, v in self.to_dict().items() if k != "solution"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        solution = data.get("solution")
        return cls(
            **{k: str(data[k]) for k in ("id", "question", "reference", "source")},
            grader=str(data.get("grader", "math")),
            solution=None if solution is None else str(solution),
        )


@dataclass(frozen=True)
class RowFormat:
    """How a row's fields map to a Problem."""

    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = None
    reference_parser: ReferenceParser = "plain"
    solution_field: str | None = None  # where to find \boxed{} when answer_field is absent
    grader: str = "math"


GSM8K = RowFormat("question", "answer", reference_parser="gsm8k", grader="gsm8k")
MATH = RowFormat("problem", "answer", solution_field="solution", grader="math")


# -- the entry point ------------------------------------------------------------------------------


def load_problems(
    spec: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    seed: int | None = None,
    shuffle: bool = False,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    reference_parser: ReferenceParser | None = None,
    source: str | None = None,
    grader: str | None = None,
) -> list[Problem]:
    """Problems named by ``spec`` (see the module docstring), subset deterministically.

    ``split`` applies to ``hf:`` specs only (default ``train``); a file is its own split.
    ``shuffle`` uses ``seed`` (0 when None). The field arguments override the format's
    defaults; naming the question or answer field for a bare ``.jsonl`` path skips the sniffing.
    """
    kind, location = _parse_spec(spec)
    overrides = {
        k: v
        for k, v in dict(
            question_field=question_field,
            answer_field=answer_field,
            id_field=id_field,
            reference_parser=reference_parser,
            grader=grader,
        ).items()
        if v is not None
    }
    if kind == "hf":
        name, _, config = location.partition(":")
        split = split or "train"
        rows = list(_hf_rows(name, config or None, split))
        where, stem = f"{name}[{split}]", split
        default_source = name.rsplit("/", 1)[-1].lower()
    else:
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"no such problem file: {path}")
        rows = list(jsonl_rows(path))
        where, stem = str(path), path.stem
        default_source = kind if kind in ("gsm8k", "math") else path.stem
    problems: list[Problem] | None = None
    if kind in ("gsm8k", "math"):
        base = GSM8K if kind == "gsm8k" else MATH
    elif kind == "jsonl" or question_field or answer_field or not rows:
        base = RowFormat()  # named fields: nothing to sniff
    elif not overrides and not source and set(rows[0][1]) >= _WRITTEN:
        # A run directory's own problem file: read it back as written (ids, graders kept).
        problems = [_written(row, f"{path}:{line + 1}") for line, row in rows]
    else:  # a bare path or hf: sniff the format from the first row
        base = sniff_format(rows[0][1])
        if kind != "hf" and (base is GSM8K or base is MATH):
            default_source = "gsm8k" if base is GSM8K else "math"
    if problems is None:
        if grader is None and reference_parser == "gsm8k":
            overrides["grader"] = "gsm8k"  # GSM8K-style references are graded as GSM8K answers
        fmt = RowFormat(**{**asdict(base), **overrides})
        src = source or default_source
        problems = [_to_problem(row, fmt, src, stem, where, line) for line, row in rows]
    seen: dict[str, int] = {}
    for (line, _), problem in zip(rows, problems, strict=True):
        if problem.id in seen:  # ids key trajectories and AWR's per-problem mean
            raise ValueError(
                f"{where}:{line + 1}: duplicate problem id {problem.id!r} (first at line "
                f"{seen[problem.id] + 1}); pass id_field= a unique field"
            )
        seen[problem.id] = line
    return subset(problems, limit=limit, offset=offset, seed=seed, shuffle=shuffle)


_WRITTEN = {"id", "question", "reference", "source", "grader"}  # write_problems' fields


def _written(row: dict[str, Any], at: str) -> Problem:
    if not set(row) >= _WRITTEN:
        raise ValueError(f"{at}: a problem file row needs {sorted(_WRITTEN)} (has {sorted(row)})")
    return Problem.from_dict(row)


def sniff_format(row: dict[str, Any]) -> RowFormat:
    """GSM8K, MATH or the generic format, from one row's fields."""
    answer = row.get("answer")
    if "question" in row and isinstance(answer, str) and "####" in answer:
        return GSM8K
    if "problem" in row and ("answer" in row or "solution" in row):
        return MATH
    if "question" in row and "answer" in row:
        return RowFormat()
    raise ValueError(
        f"cannot tell the format from the fields {sorted(row)}; use 'jsonl:<path>' with "
        "question_field / answer_field"
    )


def subset(
    problems: list[Problem],
    *,
    limit: int | None = None,
    offset: int = 0,
    seed: int | None = None,
    shuffle: bool = False,
) -> list[Problem]:
    """Seeded shuffle (optional), then skip ``offset``, then keep ``limit``."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("offset and limit must be non-negative")
    out = list(problems)
    if shuffle:
        random.Random(0 if seed is None else seed).shuffle(out)
    out = out[offset:]
    return out if limit is None else out[:limit]


def split_problems(
    problems: list[Problem], heldout: float | int, *, seed: int = 0
) -> tuple[list[Problem], list[Problem]]:
    """(train, heldout): ``heldout`` is a fraction in (0, 1) or a count; order is preserved.

    The same problems, heldout size and seed always give the same split.
    """
    n = len(problems)
    if isinstance(heldout, float) and not isinstance(heldout, bool):
        if not 0.0 < heldout < 1.0:
            raise ValueError(f"a heldout fraction must be in (0, 1), got {heldout}")
        count = round(heldout * n)
    else:
        count = int(heldout)
    if not 0 <= count <= n:
        raise ValueError(f"heldout count {count} is outside 0..{n}")
    picked = set(random.Random(seed).sample(range(n), count))
    train = [p for i, p in enumerate(problems) if i not in picked]
    held = [p for i, p in enumerate(problems) if i in picked]
    return train, held


def write_problems(problems: Iterable[Problem], path: str | Path) -> None:
    """Problems as JSONL (``id``, ``question``, ``reference``, ``source``, ``grader`` and, where
    known, ``solution``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")


# -- rows -----------------------------------------------------------------------------------------


def _parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("gsm8k", "math", "jsonl", "hf"):
        if not rest:
            raise ValueError(f"empty location in problem spec {spec!r}")
        return kind, rest
    if spec.endswith(".jsonl"):
        return "auto", spec
    raise ValueError(
        f"unknown problem spec {spec!r}; expected gsm8k:<path>, math:<path>, jsonl:<path>, "
        "<path>.jsonl or hf:<name>[:<config>]"
    )


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(0-based line, row) pairs; blank lines skipped, bad lines name file and line.

    The project's one JSONL reader (datasets, trajectories, examples)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{index + 1}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{index + 1}: expected a JSON object, got {row!r:.40}")
            yield index, row


def _hf_rows(name: str, config: str | None, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as exc:  # the train extra
        raise RuntimeError("hf: problem specs need the 'datasets' package") from exc
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise RuntimeError(
            f"could not load the Hugging Face dataset {name!r} (config {config!r}, split "
            f"{split!r}): {exc}. Is the hub reachable (HF_HUB_OFFLINE, network) or the dataset "
            "cached? Offline, pass a local JSONL instead (gsm8k:/path/test.jsonl)."
        ) from exc
    yield from enumerate(dict(row) for row in data)


def _to_problem(
    row: dict[str, Any], fmt: RowFormat, source: str, stem: str, where: str, index: int
) -> Problem:
    at = f"{where}:{index + 1}"
    question = row.get(fmt.question_field)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(
            f"{at}: missing or empty field {fmt.question_field!r} (fields: {sorted(row)})"
        )
    reference = _reference(row, fmt, at)
    id_field = fmt.id_field or next((f for f in _ID_FIELDS if row.get(f) is not None), None)
    if id_field is not None:
        if row.get(id_field) is None:
            raise ValueError(f"{at}: missing id field {id_field!r}")
        pid = f"{source}-{row[id_field]}"
    else:
        pid = f"{source}-{index}" if stem == source else f"{source}-{stem}-{index}"
    return Problem(id=pid, question=question, reference=reference, source=source, grader=fmt.grader)


def _reference(row: dict[str, Any], fmt: RowFormat, at: str) -> str:
    value = row.get(fmt.answer_field)
    if value is None and fmt.solution_field and isinstance(row.get(fmt.solution_field), str):
        boxed = extract_boxed(row[fmt.solution_field])
        if boxed is None:
            raise ValueError(f"{at}: no {fmt.answer_field!r} and no \\boxed{{}} in the solution")
        return boxed
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{at}: missing or non-scalar field {fmt.answer_field!r} (fields: {sorted(row)})"
        )
    text = str(value)
    try:
        if fmt.reference_parser == "gsm8k":
            return parse_gsm8k_reference(text)
        if fmt.reference_parser == "boxed":
            boxed = extract_boxed(text)
            if boxed is None:
                raise ValueError(f"no \\boxed{{}} in {text[-80:]!r}")
            return boxed
    except ValueError as exc:
        raise ValueError(f"{at}: {exc}") from exc
    if not text.strip():
        raise ValueError(f"{at}: empty field {fmt.answer_field!r}")
    return text.strip()
