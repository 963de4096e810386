"""Generated arithmetic word problems, the test bed of the RISE study (docs/EXPERIMENTS.md): one
template family to train on, a second family (other sentence templates, names and objects) held
out entirely, and the one-shot demonstration the study prompts with. The output-quality test of
the default model (tests/e2e) samples from the same problems.

Why generated: GSM8K is out of reach for a 135M model (about 0/64 greedy), and the RISE test bed
needs base accuracy around 10-40% with pass@8 well above it (docs/EXPERIMENTS.md). One- and
two-step problems with small numbers qualify, and a wrong attempt says something about the next.

The out-of-template family shares the four operations (+, -, x, /) and the number ranges but no
sentence, name or object with the training family, so a "correction" learned on one template's
wording shows up (or does not) on text the model never trained on.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rise_train.datasets import Problem

NAMES = ["Tom", "Ana", "Sam", "Mia", "Leo", "Ivy", "Ben", "Zoe", "Max", "Eva", "Raj", "Lin"]
THINGS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]
# Out of template: none of these names or objects appear in the training family.
OOT_NAMES = ["Priya", "Omar", "Hana", "Carlos", "Greta", "Kofi", "Yuki", "Nadia", "Pablo", "Elif"]
OOT_THINGS = ["muffins", "balloons", "coins", "tickets", "candles", "bottles", "buttons", "cards"]

# A maker draws one problem: (question, answer, worked solution). The solution is built from the
# same draw, so adding it changed no problem (the study's problem hashes leave it out).
Drawn = tuple[str, int, str]
Maker = Callable[[random.Random, str, str, str], Drawn]

# The one-shot demonstration: a short chain of thought and a fixed answer line. Its names and
# objects belong to neither problem family.
DEMONSTRATION = (
    "Lia has 9 shells and finds 4 more. How many shells does Lia have now?",
    "Lia starts with 9 shells and finds 4 more, so she has 9 + 4 = 13 shells.\n"
    "The answer is \\boxed{13}.",
)


def _solved(question: str, answer: int, *steps: str) -> Drawn:
    """The problem with its worked solution in the demonstration's form (steps, answer line)."""
    return question, answer, "\n".join([*steps, f"The answer is \\boxed{{{answer}}}."])


def _one_step(r: random.Random, name: str, friend: str, things: str) -> Drawn:
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(2, 30)
        return _solved(
            f"{name} has {a} {things} and buys {b} more. How many {things} does {name} have now?",
            a + b,
            f"{name} has {a} {things} and buys {b} more, so {name} has {a} + {b} = {a + b} "
            f"{things}.",
        )
    if kind == 1:
        a = r.randint(8, 40)
        b = r.randint(2, a - 2)
        return _solved(
            f"{name} has {a} {things} and gives {b} of them to {friend}. "
            f"How many {things} does {name} have left?",
            a - b,
            f"{name} gives away {b} of {a} {things}, so {name} has {a} - {b} = {a - b} left.",
        )
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        return _solved(
            f"{name} buys {a} bags with {b} {things} in each bag. "
            f"How many {things} does {name} buy in total?",
            a * b,
            f"{a} bags with {b} {things} each make {a} x {b} = {a * b} {things}.",
        )
    a, b = r.randint(2, 9), r.randint(2, 6)
    return _solved(
        f"{name} shares {a * b} {things} equally among {b} friends. "
        f"How many {things} does each friend get?",
        a,
        f"{a * b} {things} shared among {b} friends is {a * b} / {b} = {a} each.",
    )


def _two_step(r: random.Random, name: str, friend: str, things: str) -> Drawn:
    kind = r.randrange(3)
    if kind == 0:
        a, b = r.randint(5, 25), r.randint(2, 15)
        c = r.randint(1, a + b - 1)
        return _solved(
            f"{name} has {a} {things}. {name} buys {b} more and then gives {c} to {friend}. "
            f"How many {things} does {name} have now?",
            a + b - c,
            f"After buying, {name} has {a} + {b} = {a + b} {things}.",
            f"After giving {c} away, {name} has {a + b} - {c} = {a + b - c} {things}.",
        )
    if kind == 1:
        a, b = r.randint(2, 6), r.randint(3, 8)
        c = r.randint(1, a * b - 1)
        return _solved(
            f"{name} buys {a} boxes with {b} {things} in each box and loses {c} of them. "
            f"How many {things} does {name} have left?",
            a * b - c,
            f"{a} boxes with {b} {things} each make {a} x {b} = {a * b} {things}.",
            f"After losing {c}, {name} has {a * b} - {c} = {a * b - c} {things} left.",
        )
    a, b = r.randint(3, 20), r.randint(2, 10)
    return _solved(
        f"{name} has {a} {things}. {friend} has {b} more {things} than {name}. "
        f"How many {things} do they have together?",
        a + (a + b),
        f"{friend} has {a} + {b} = {a + b} {things}.",
        f"Together they have {a} + {a + b} = {a + (a + b)} {things}.",
    )


def _oot_one_step(r: random.Random, name: str, friend: str, things: str) -> Drawn:
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(2, 30)
        return _solved(
            f"In the morning {name} collected {a} {things}. In the afternoon {name} collected "
            f"another {b}. What is the total number of {things} {name} collected?",
            a + b,
            f"{name} collected {a} + {b} = {a + b} {things} in all.",
        )
    if kind == 1:
        a = r.randint(8, 40)
        b = r.randint(2, a - 2)
        return _solved(
            f"A shop had {a} {things} on the shelf and {b} were sold today. "
            f"How many {things} are still on the shelf?",
            a - b,
            f"{a} - {b} = {a - b} {things} are still on the shelf.",
        )
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        return _solved(
            f"There are {a} tables and every table holds {b} {things}. "
            f"What is the number of {things} on all the tables?",
            a * b,
            f"{a} tables with {b} {things} each hold {a} x {b} = {a * b} {things}.",
        )
    a, b = r.randint(2, 9), r.randint(2, 6)
    return _solved(
        f"{name} and {friend} pack {a * b} {things} into {b} boxes with the same number in "
        f"every box. How many {things} go into one box?",
        a,
        f"{a * b} {things} in {b} boxes is {a * b} / {b} = {a} per box.",
    )


def _oot_two_step(r: random.Random, name: str, friend: str, things: str) -> Drawn:
    kind = r.randrange(2)
    if kind == 0:
        a, b = r.randint(5, 25), r.randint(2, 15)
        c = r.randint(1, a + b - 1)
        return _solved(
            f"A box holds {a} {things}. {name} puts in {b} more, then {friend} takes out {c}. "
            f"What number of {things} is in the box now?",
            a + b - c,
            f"After {name} puts some in, the box holds {a} + {b} = {a + b} {things}.",
            f"After {friend} takes {c} out, it holds {a + b} - {c} = {a + b - c} {things}.",
        )
    a, b = r.randint(2, 6), r.randint(3, 8)
    c = r.randint(1, a * b - 1)
    return _solved(
        f"{name} orders {a} packs of {things}, {b} per pack, and {c} arrive broken. "
        f"How many unbroken {things} does {name} get?",
        a * b - c,
        f"{a} packs of {b} make {a} x {b} = {a * b} {things}.",
        f"Without the {c} broken ones, {name} gets {a * b} - {c} = {a * b - c} {things}.",
    )


FAMILIES: dict[str, tuple[list[str], list[str], Maker, Maker]] = {
    "arith": (NAMES, THINGS, _one_step, _two_step),
    "oot": (OOT_NAMES, OOT_THINGS, _oot_one_step, _oot_two_step),
}


def make_problems(
    n: int,
    seed: int,
    split: str,
    two_step: float,
    avoid: set[str],
    family: str = "arith",
) -> list[Problem]:
    """``n`` distinct problems (none of whose questions is in ``avoid``), deterministic in seed."""
    names, things_list, one, two = FAMILIES[family]
    r = random.Random(f"{split}-{seed}" if family == "arith" else f"{family}-{split}-{seed}")
    out: list[Problem] = []
    seen = set(avoid)
    while len(out) < n:
        name, friend = r.sample(names, 2)
        things = r.choice(things_list)
        maker = two if r.random() < two_step else one
        question, answer, solution = maker(r, name, friend, things)
        if question in seen:
            continue
        seen.add(question)
        pid = f"{family}-{split}-{len(out)}"
        out.append(Problem(pid, question, str(answer), family, "gsm8k", solution=solution))
    return out
