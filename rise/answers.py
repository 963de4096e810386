"""Final-answer extraction, mathematical equivalence and graders built on them (docs/RISE.md §7).

The public RISE code graded with `int()` on the last `\\boxed{}` (GSM8K) and a regex that broke
on nested braces (MATH), so `\\frac{\\sqrt{3}}{2}` and `\\frac{\\sqrt{3}}{4}` compared equal. Here
extraction matches braces, and equivalence goes through cheap exact paths first (normalised
strings, plain decimals) and only then through `math-verify`, the maintained symbolic checker.

math-verify 0.9 bounds its own time with `signal.alarm`, which raises `ValueError` off the main
thread. Its timeouts are therefore always disabled here, and the time is bounded instead by
refusing symbolic checks on long inputs or on expressions whose exact value would be huge (sympy
evaluates `9^{9^{9}}` exactly and never returns). Everything is safe in worker threads and inside
a running asyncio loop; rewards, voting and the evaluator all grade through this module.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from rise.episode import Outcome

__all__ = [
    "GRADER_NAMES",
    "Grader",
    "extract_boxed",
    "get_grader",
    "is_equivalent",
    "last_number",
    "normalize_answer",
    "parse_gsm8k_reference",
]

# ---- extraction -------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(boxed|fbox)(?![A-Za-z])")
# A number: optional sign (not when it is a binary minus, as in `5-3`), then either thousands
# groups `1,234,567` or plain digits, then an optional fraction; or a bare fraction `.5`.
_NUMBER_RE = re.compile(r"(?:(?<![\w)\]}])-)?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_GSM8K_REFERENCE_RE = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)")


def _balanced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at text[open_at], or None when it never closes."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":  # `\{`, `\}` and `\\` are escaped characters, not grouping braces
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nesting allowed), or None.

    `\\boxed 5` without braces yields its single token. An unclosed last box (a response cut off
    by the length limit) yields None rather than an earlier box: the model's last word is lost.
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    rest = text[start:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        content = _balanced(text, start + len(rest) - len(stripped))
    else:  # TeX's brace-less form `\boxed 5`: one token, up to a space or `$`
        token = re.match(r"[^\s${}]+", stripped)
        content = token.group(0).rstrip(".,;") if token else None
    if content is None or not content.strip():
        return None
    return content.strip()


def _canonical_number(number: str) -> str:
    """`1,234.50` → `1234.5`, `.5` → `0.5`, `-0` → `0`, `007` → `7`."""
    value = Decimal(number.replace(",", ""))
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def last_number(text: str) -> str | None:
    """The last number written in `text`, canonicalised (commas dropped), or None."""
    matches = _NUMBER_RE.findall(text)
    return _canonical_number(matches[-1]) if matches else None


def parse_gsm8k_reference(solution: str) -> str:
    """The reference answer after `####` in a GSM8K `answer` field, canonicalised."""
    match = _GSM8K_REFERENCE_RE.search(solution)
    if match is None:
        raise ValueError(f"no '#### <number>' reference in GSM8K solution: {solution[-80:]!r}")
    return _canonical_number(match.group(1))


# ---- normalisation ----------------------------------------------------------------------------


def normalize_answer(answer: str) -> str:
    """A canonical spelling: equal outputs mean equal answers (used as a voting/dict key)."""
    text = answer.strip().replace("$", "")
    for token in (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", "\\ "):
        text = text.replace(token, "")
    text = text.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    text = re.sub(r"\s+", "", text).rstrip(".")
    if _THOUSANDS_RE.fullmatch(text) or _PLAIN_NUMBER_RE.fullmatch(text):
        return _canonical_number(text)
    return text


def _strip_decorations(answer: str) -> str:
    """Drop what does not change a numeric value: `\\$`, units in `\\text{}`, `\\%`, degrees."""
    text = answer.strip().replace(r"\$", "").replace("$", "")
    unwrapped = re.fullmatch(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", text)
    if unwrapped:
        text = unwrapped.group(1)
    # units after a value: `18 \text{ dollars}`, `5\mbox{ cm}`
    text = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z ]*\}\s*$", "", text)
    text = re.sub(r"\^\s*\{?\\circ\}?|\\%|%|\\circ", "", text)
    return text.strip().rstrip(".").strip()


def _as_decimal(answer: str) -> Decimal | None:
    text = normalize_answer(_strip_decorations(answer))
    return Decimal(text) if _PLAIN_NUMBER_RE.fullmatch(text) else None


def _numbers_close(a: Decimal, b: Decimal) -> bool:
    """Integers compare exactly (GSM8K: 1000000 ≠ 1000001); decimals within 1e-6 relative."""
    if a == b:
        return True
    if a == a.to_integral_value() and b == b.to_integral_value():
        return False
    return abs(a - b) <= Decimal("1e-6") * max(abs(a), abs(b))


# ---- symbolic equivalence (math-verify) --------------------------------------------------------

_MAX_SYMBOLIC_CHARS = 300  # longer answers are compared as normalised strings only
_MAX_LOG10 = 1e5  # refuse expressions whose exact value could exceed ~100k digits
# sympy's caches and the ANTLR runtime behind math-verify's LaTeX parser are not documented as
# thread-safe; checks take milliseconds, so one lock costs little and removes the question.
_MATH_VERIFY_LOCK = threading.Lock()
_IMAGINARY_RE = re.compile(r"(?<=\d)i\b")


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeout is off; here that is deliberate (see docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    # Imported lazily: sympy + ANTLR take ~0.4 s, and most callers only extract answers.
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutWarning())
    return math_verify


def _log10_bound(expr: Any) -> float:
    """A cheap upper bound on log10 |value| of a parsed expression, without evaluating it."""
    import sympy

    if isinstance(expr, sympy.Rational):  # Integer included; math.log10 takes any big int
        return math.log10(abs(int(expr.p)) + 1)
    if isinstance(expr, sympy.Float):
        return math.log10(abs(float(expr)) + 1.0)
    if isinstance(expr, sympy.MatrixBase):  # not a Basic: its entries are not in .args
        return sum((_log10_bound(entry) for entry in expr), 1.0)
    if not isinstance(expr, sympy.Basic):
        return math.inf  # a result type this bound does not know: do not risk it
    if expr.is_Atom:
        return 1.0  # symbols, pi, E, I: ~10 in magnitude
    bounds = [_log10_bound(arg) for arg in expr.args]
    if isinstance(expr, sympy.Pow):
        return bounds[0] * 10.0 ** min(bounds[1], 20.0)
    if isinstance(expr, sympy.factorial | sympy.factorial2 | sympy.gamma | sympy.binomial):
        n = 10.0 ** min(bounds[0], 20.0)
        return n * math.log10(n + 1.0)
    if isinstance(expr, sympy.Sum | sympy.Product):
        return math.inf  # sympy may expand them term by term
    return sum(bounds) + 1.0


def _tame(parsed: list[Any]) -> bool:
    try:
        return all(_log10_bound(item) <= _MAX_LOG10 for item in parsed if not isinstance(item, str))
    except (OverflowError, ValueError, TypeError):
        return False


@lru_cache(maxsize=16384)
def _parse(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of a bare answer; it extracts from `\\boxed{}`, so box it first."""
    mv = _math_verify()
    # math-verify reads `i` as the imaginary unit only when it stands alone (`\bi\b`), so `6+9i`
    # and `9 i + 6` would get different symbols; spacing `9i` makes both complex.
    answer = _IMAGINARY_RE.sub(" i", answer)
    configs = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    for candidate in (f"\\boxed{{{answer}}}", f"${answer}$", answer):
        parsed = mv.parse(candidate, extraction_config=configs, parsing_timeout=None)
        if parsed:
            return tuple(parsed)
    return ()


def _symbolic_equal(reference: str, answer: str) -> bool:
    mv = _math_verify()
    with _MATH_VERIFY_LOCK:
        gold, pred = _parse(reference), _parse(answer)
        if not gold or not pred or not (_tame(list(gold)) and _tame(list(pred))):
            return False
        # The reference goes first: verify() is asymmetric (assignments, intervals).
        return bool(mv.verify(list(gold), list(pred), timeout_seconds=None))


@lru_cache(maxsize=65536)
def is_equivalent(reference: str, answer: str) -> bool:
    """Whether `answer` is mathematically the same as `reference` (`0.5` = `\\frac{1}{2}`)."""
    ref, ans = _strip_decorations(reference), _strip_decorations(answer)
    if not ref or not ans:
        return False
    if normalize_answer(ref) == normalize_answer(ans):
        return True
    ref_number, ans_number = _as_decimal(ref), _as_decimal(ans)
    if ref_number is not None and ans_number is not None:
        return _numbers_close(ref_number, ans_number)
    if max(len(reference), len(answer)) > _MAX_SYMBOLIC_CHARS:
        return False
    try:
        return _symbolic_equal(reference.strip(), answer.strip())
    except Exception:  # a checker crash on odd model output means "not shown equal"
        return False


# ---- graders ----------------------------------------------------------------------------------


def _exact_equal(reference: str, answer: str) -> bool:
    return " ".join(reference.split()).casefold() == " ".join(answer.split()).casefold()


def _extract_gsm8k(text: str) -> str | None:
    # Small instruct models often end with "The answer is 18." instead of a box.
    return extract_boxed(text) or last_number(text)


def _extract_exact(text: str) -> str | None:
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


@dataclass(frozen=True)
class Grader:
    """How one dataset's answers are read from a response and compared with its references."""

    name: str
    extract: Callable[[str], str | None]  # response text -> final answer, None when absent
    equivalent: Callable[[str, str], bool]  # (reference, answer) -> same answer?

    def grade(self, answer: str | None, reference: str) -> Outcome:
        """The outcome of an extracted answer (None: nothing parseable) against the reference."""
        if answer is None or not answer.strip():
            return Outcome.UNPARSEABLE
        return Outcome.CORRECT if self.equivalent(reference, answer) else Outcome.WRONG


_GRADERS = {
    "gsm8k": Grader("gsm8k", _extract_gsm8k, is_equivalent),
    "math": Grader("math", extract_boxed, is_equivalent),
    "exact": Grader("exact", _extract_exact, _exact_equal),
}
GRADER_NAMES: tuple[str, ...] = ("gsm8k", "math", "exact")


def get_grader(name: str) -> Grader:
    """The grader registered under `name`."""
    try:
        return _GRADERS[name]
    except KeyError:
        raise ValueError(
            f"unknown grader {name!r}; expected one of {', '.join(GRADER_NAMES)}"
        ) from None
