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

Maker = Callable[[random.Random, str, str, str], tuple[str, int]]

# The one-shot demonstration: a short chain of thought and a fixed answer line. Its names and
# objects belong to neither problem family.
DEMONSTRATION = (
    "Lia has 9 shells and finds 4 more. How many shells does Lia have now?",
    "Lia starts with 9 shells and finds 4 more, so she has 9 + 4 = 13 shells.\n"
    "The answer is \\boxed{13}.",
)


def _one_step(r: random.Random, name: str, friend: str, things: str) -> tuple[str, int]:
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(2, 30)
        return (
            f"{name} has {a} {things} and buys {b} more. How many {things} does {name} have now?",
            a + b,
        )
    if kind == 1:
        a = r.randint(8, 40)
        b = r.randint(2, a - 2)
        return (
            f"{name} has {a} {things} and gives {b} of them to {friend}. "
            f"How many {things} does {name} have left?",
            a - b,
        )
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        return (
            f"{name} buys {a} bags with {b} {things} in each bag. "
            f"How many {things} does {name} buy in total?",
            a * b,
        )
    a, b = r.randint(2, 9), r.randint(2, 6)
    return (
        f"{name} shares {a * b} {things} equally among {b} friends. "
        f"How many {things} does each friend get?",
        a,
    )


def _two_step(r: random.Random, name: str, friend: str, things: str) -> tuple[str, int]:
    kind = r.randrange(3)
    if kind == 0:
        a, b = r.randint(5, 25), r.randint(2, 15)
        c = r.randint(1, a + b - 1)
        return (
            f"{name} has {a} {things}. {name} buys {b} more and then gives {c} to {friend}. "
            f"How many {things} does {name} have now?",
            a + b - c,
        )
    if kind == 1:
        a, b = r.randint(2, 6), r.randint(3, 8)
        c = r.randint(1, a * b - 1)
        return (
            f"{name} buys {a} boxes with {b} {things} in each box and loses {c} of them. "
            f"How many {things} does {name} have left?",
            a * b - c,
        )
    a, b = r.randint(3, 20), r.randint(2, 10)
    return (
        f"{name} has {a} {things}. {friend} has {b} more {things} than {name}. "
        f"How many {things} do they have together?",
        a + (a + b),
    )


def _oot_one_step(r: random.Random, name: str, friend: str, things: str) -> tuple[str, int]:
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(2, 30), r.randint(2, 30)
        return (
            f"In the morning {name} collected {a} {things}. In the afternoon {name} collected "
            f"another {b}. What is the total number of {things} {name} collected?",
            a + b,
        )
    if kind == 1:
        a = r.randint(8, 40)
        b = r.randint(2, a - 2)
        return (
            f"A shop had {a} {things} on the shelf and {b} were sold today. "
            f"How many {things} are still on the shelf?",
            a - b,
        )
    if kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        return (
            f"There are {a} tables and every table holds {b} {things}. "
            f"What is the number of {things} on all the tables?",
            a * b,
        )
    a, b = r.randint(2, 9), r.randint(2, 6)
    return (
        f"{name} and {friend} pack {a * b} {things} into {b} boxes with the same number in "
        f"every box. How many {things} go into one box?",
        a,
    )


def _oot_two_step(r: random.Random, name: str, friend: str, things: str) -> tuple[str, int]:
    kind = r.randrange(2)
    if kind == 0:
        a, b = r.randint(5, 25), r.randint(2, 15)
        c = r.randint(1, a + b - 1)
        return (
            f"A box holds {a} {things}. {name} puts in {b} more, then {friend} takes out {c}. "
            f"What number of {things} is in the box now?",
            a + b - c,
        )
    a, b = r.randint(2, 6), r.randint(3, 8)
    c = r.randint(1, a * b - 1)
    return (
        f"{name} orders {a} packs of {things}, {b} per pack, and {c} arrive broken. "
        f"How many unbroken {things} does {name} get?",
        a * b - c,
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
        question, answer = maker(r, name, friend, things)
        if question in seen:
            continue
        seen.add(question)
        out.append(Problem(f"{family}-{split}-{len(out)}", question, str(answer), family, "gsm8k"))
    return out
