"""The calculator: every arithmetic statement an attempt writes, checked with exact arithmetic.

A *statement* is an expression of numbers and the four operations followed by ``=`` and a
number: ``12 x 6 = 62``, ``$9 + $4 = $13``, ``(5 + 3) \\times 2 = 16``, ``21 - 12 = 8 apples``,
``(12 bags) + 6 apples = 20`` (a number may carry one unit word).
Finding them is the only part written here (a regular expression over the attempt's text, what
no library does for free text); the arithmetic is SymPy's: the expression, reduced to digits,
``+ - * /``, points and parentheses (so nothing else can reach the parser), is parsed with the
``rationalize`` transformation and evaluated in exact rationals. A claimed value matches when it
equals the result, or is the result rounded to the decimals the claim writes (``10 / 3 = 3.33``).

A calculator cannot prove an answer right: statements that all check out say nothing about the
reasoning between them. It only ever finds *slips*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

# Every run of spaces below has exactly one quantifier that can take it (a space before a number
# belongs to "(" or "$" or the operator before it, never to two of them), and the left-hand side
# is atomic: an attempt that never writes "=" (a model looping "1 + 2 + 3 + ...") is rejected in
# linear time per start. The first version let two "\s*" share each gap, which is exponential
# in the number of operands (issue 31's solution-teacher run hung on one such attempt).
_NUMBER = r"(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_OPERATOR = r"(?:[-+*/x×X÷·−]|\\times|\\cdot|\\div|\btimes\b)"
# A number may carry one unit word ("12 bags + 6 apples"); never "x" or "times", the operators.
_UNIT = r"(?:\s+(?!(?:x|X|times)\b)[A-Za-z]+)?"
_OPERAND = rf"(?:\(\s*)*{_NUMBER}{_UNIT}(?:\s*\))*"
_EXPRESSION = rf"-?\s?{_OPERAND}(?:\s*{_OPERATOR}\s*{_OPERAND})+"
# lhs = rhs, where rhs is one number not continued by an operator (chains are checked link by
# link: "3 + 4 = 7 + 2 = 9" is "3 + 4 = 7" then "7 + 2 = 9")
_STATEMENT = re.compile(
    rf"(?<![\w.])(?P<lhs>(?>{_EXPRESSION}))\s*=\s*(?P<rhs>-?\s?{_NUMBER})"
    rf"(?![\d.]*\s*{_OPERATOR}\s*\(*\s*\$?\d)(?!\.?\d)"
)
_SYMBOLS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "·": "*", "÷": "/", "−": "-"}
_WORD_TIMES = re.compile(r"(?<![A-Za-z])(?:x|X|times)(?![A-Za-z])")  # "x" and "times", not "box"
_SAFE = re.compile(r"[\d.+\-*/() ]+")


@dataclass(frozen=True)
class Slip:
    """A statement whose written result is wrong: ``12 x 6 = 72, not 62``."""

    expression: str  # as the attempt wrote it, e.g. "12 x 6"
    written: str  # the result it claimed, e.g. "62"
    value: Fraction  # the right result

    def __str__(self) -> str:
        return f"{self.expression} = {format_number(self.value)}, not {self.written}"


def normalise(expression: str) -> str | None:
    """The expression as plain ``+ - * /`` arithmetic on digits, or None if it is not one."""
    text = expression.replace("$", "").replace(",", "")
    for symbol, operator in _SYMBOLS.items():  # the LaTeX commands before their letters go
        text = text.replace(symbol, operator)
    text = _WORD_TIMES.sub("*", text)
    text = re.sub(r"[A-Za-z]+", "", text)  # unit words ("12 bags")
    text = "".join(text.split())  # one spelling per computation: "12*6" for "12 x 6", "12x6"
    if not _SAFE.fullmatch(text) or text.count("(") != text.count(")"):
        return None
    return text


@cache
def _parser() -> tuple[Any, Any]:
    from sympy.parsing.sympy_parser import parse_expr, rationalize, standard_transformations

    return parse_expr, (*standard_transformations, rationalize)


def evaluate(expression: str) -> Fraction | None:
    """The exact value of a normalised expression (:func:`normalise`), None when it does not
    parse or divides by zero."""
    from sympy import Rational, zoo

    if not _SAFE.fullmatch(expression):
        raise ValueError(f"not a normalised expression: {expression!r}")
    parse_expr, transformations = _parser()
    try:
        value = parse_expr(expression, transformations=transformations)
    except Exception:  # any parse failure of the sanitised text: not a statement to check
        return None
    if value is zoo or not isinstance(value, Rational):
        return None
    return Fraction(int(value.p), int(value.q))


def _written_value(text: str) -> tuple[Fraction, int] | None:
    """A claimed result as an exact number and its written decimals."""
    number = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = Fraction(number)
    except ValueError:
        return None
    decimals = len(number.split(".", 1)[1]) if "." in number else 0
    return value, decimals


def _matches(value: Fraction, written: Fraction, decimals: int) -> bool:
    if value == written:
        return True
    if decimals == 0:
        return False  # 7 / 2 = 3 is a slip, not a rounding
    return abs(value - written) <= Fraction(1, 2 * 10**decimals)


@dataclass(frozen=True)
class Statement:
    """One checkable statement: ``expression = written`` and the expression's exact value."""

    expression: str  # as written, e.g. "12 x 6"
    normalised: str  # "12 * 6": two statements of the same computation compare equal here
    written: str  # the claimed result as written
    value: Fraction  # the right result

    @property
    def right(self) -> bool:
        claimed = _written_value(self.written)
        return claimed is not None and _matches(self.value, *claimed)


def statements(text: str) -> list[Statement]:
    """Every arithmetic statement of ``text`` the calculator can check, in order."""
    found = []
    for match in _STATEMENT.finditer(text):
        lhs, rhs = match.group("lhs").strip(), match.group("rhs").strip()
        normalised = normalise(lhs)
        if normalised is None or _written_value(rhs) is None:
            continue
        value = evaluate(normalised)
        if value is not None:
            found.append(Statement(" ".join(lhs.split()), normalised, rhs, value))
    return found


def find_slips(text: str) -> list[Slip]:
    """Every arithmetic statement of ``text`` whose written result is wrong, in order."""
    return [Slip(s.expression, s.written, s.value) for s in statements(text) if not s.right]


def slip_followed_up(slip_text: str, next_text: str) -> str:
    """What the turn after a named slip did with it: ``fixed`` (it writes the same computation
    with the right result), ``repeated`` (the same wrong result again), else ``dropped`` (the
    computation is gone). ``slip_text`` is a slip as named ("12 x 6 = 72, not 62")."""
    expression = slip_text.rsplit(" = ", 1)[0]
    normalised = normalise(expression)
    later = [s for s in statements(next_text) if s.normalised == normalised]
    if any(s.right for s in later):
        return "fixed"
    if later:
        return "repeated"
    return "dropped"


def format_number(value: Fraction) -> str:
    """An exact value as a person writes it: 72, 3.5, 0.125, else 7/3."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator == 1 and max(twos, fives) <= 6:
        places = max(twos, fives)
        return f"{float(value):.{places}f}"
    return f"{value.numerator}/{value.denominator}"
