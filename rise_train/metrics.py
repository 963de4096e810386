"""What the evaluation measures, as pure functions of finished episodes (docs/RISE.md §6).

Kept apart from the runner so every number is unit-tested on hand-made episodes with exact
counts, and so reports can be recomputed from ``episodes.jsonl`` without an engine. N is
``max_turns``, P the number of parallel first-turn samples. An episode is one sample of one
problem; with several evaluation seeds (``repeats``) a problem has several episodes.

Proportions (Wilson 95% intervals, :mod:`rise_train.stats`) count episodes, i.e. problem×repeat
samples:

- ``m1@t1``: the first turn is correct. ``mP@t1``: the majority vote over the P parallel
  first-turn answers is correct (compute-matched with m1@tN when P = N).
- ``m1@tN``: the majority vote over the N sequential turns is correct (no oracle; ties go to the
  latest turn, as :func:`rise.voting.majority_vote` does). ``p1@tN``: any of the N turns is.
  ``sequential_vs_parallel``: m1@tN − mP@t1 paired over problems (bootstrap), the
  compute-matched comparison: do N turns beat N independent samples?
- ``acc@tk``: turn k alone is correct; per turn also the vote and oracle over turns 1..k and the
  flips from turn k-1 (wrong→right, right→wrong; pooled totals and their ratio in ``flips``).
- Copy selectivity (``copy_selectivity``, per turn k >= 2 and pooled over turns 2..N, counted
  over consecutive turn pairs): P(token-identical to the previous turn | previous right / wrong),
  P(same final answer as the previous turn | previous right / wrong), and the distribution of
  the edit-distance ratio between consecutive turns (:func:`rise_train.similarity.edit_ratio`
  on output ids). Copying the last attempt is RISE's known failure: genuine correction keeps
  right answers and changes wrong ones.
- Exploration (``exploration``): ``pP@t1``, any of the P parallel samples correct, beside
  ``p1@tN``; and the mean number of distinct answers per episode over the N sequential turns vs
  over the P parallel samples. Answers are grouped by the grader's ``equivalent`` (greedily, in
  order: an answer joins the first group whose first answer it equals); a missing answer
  (None) is one answer of its own, "no answer", so an episode that never answers has one.
- Anchoring (``anchoring``, :func:`anchoring`): how often turn 2 keeps turn 1's answer, against
  how often the P − 1 independent first-turn samples of the same problem land on that answer,
  given turn 1 was wrong / right. A model that re-solves the restated question from scratch
  keeps a wrong answer about as often as its independent samples agree with it (a sharp model
  agrees with itself often); the excess is what seeing the attempt adds. The same for being
  right: after a wrong turn 1, is turn 2 right more often than a fresh sample of the same
  problem? That is correction, as against re-sampling. The turn-2 context ablation measures
  both with a fresh turn-2 sample; this comes free with every evaluation.
- The turn-2 context ablation (``ablation``, :func:`ablation_metrics`).

Paired differences (the sequential gain, tuned vs base, ablation contrasts) are over problems:
each problem's flags are first averaged over its repeats, then a percentile bootstrap resamples
problems. ``per_problem`` holds those per-problem means.

An episode cut short (its prompt outgrew the context window) keeps its last answer for the
turns it could not take, for accuracy, votes and flips: that is the answer such a run would have
returned. Copy selectivity counts only turns actually taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

from rise.answers import get_grader
from rise.episode import Episode, Outcome, Turn
from rise.voting import majority_vote
from rise_train.similarity import edit_ratio
from rise_train.stats import Proportion, cluster_bootstrap, paired_bootstrap

Equivalent = Callable[[str, str], bool]
HISTOGRAM_BINS = 10


# -- grading --------------------------------------------------------------------------------------


def is_correct(episode: Episode, answer: str | None) -> bool:
    """Whether ``answer`` matches the episode's reference under its grader."""
    if episode.reference is None:
        raise ValueError(f"episode {episode.id} has no reference to evaluate against")
    grader = get_grader(episode.grader)
    return grader.grade(answer, episode.reference) is Outcome.CORRECT


def turn_is_correct(episode: Episode, turn: Turn) -> bool:
    return (
        turn.outcome is Outcome.CORRECT
        if turn.outcome is not None
        else is_correct(episode, turn.answer)
    )


def vote_is_correct(episode: Episode, answers: Sequence[str | None]) -> bool:
    """Majority vote over ``answers`` with the episode grader's equivalence, then graded."""
    vote = majority_vote(answers, get_grader(episode.grader).equivalent)
    return vote.winner is not None and is_correct(episode, vote.winner)


def same_answer(a: str | None, b: str | None, equivalent: Equivalent) -> bool:
    """``a`` and ``b`` are one answer: equivalent, or both missing ("no answer" is an answer)."""
    if a is None or b is None:
        return a is None and b is None
    return equivalent(a, b)


def distinct_answers(answers: Sequence[str | None], equivalent: Equivalent) -> int:
    """How many answers ``answers`` holds, grouped greedily by ``equivalent`` (None: its own)."""
    groups: list[str | None] = []
    for answer in answers:
        if not any(same_answer(g, answer, equivalent) for g in groups):
            groups.append(answer)
    return len(groups)


def problem_id(episode: Episode) -> str:
    return str(episode.metadata.get("problem_id", episode.id))


# -- small summaries ------------------------------------------------------------------------------


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """Mean, quartiles and a 10-bin histogram on [0, 1] (the last bin holds 1.0)."""
    import numpy as np

    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    if not values:
        return {"n": 0, "mean": None, "quartiles": None, "histogram": {"edges": edges,
                "counts": [0] * HISTOGRAM_BINS}}  # fmt: skip
    array = np.asarray(values, dtype=float)
    counts, _ = np.histogram(array, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return {
        "n": len(values),
        "mean": float(array.mean()),
        "quartiles": [float(q) for q in np.percentile(array, [25, 50, 75])],
        "histogram": {"edges": edges, "counts": [int(c) for c in counts]},
    }


def _share(flags: Sequence[bool]) -> dict[str, Any]:
    return Proportion(sum(1 for f in flags if f), len(flags)).to_dict()


def per_problem_means(ids: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """The mean of ``values`` per problem id, in first-appearance order."""
    groups: dict[str, list[float]] = {}
    for i, value in zip(ids, values, strict=True):
        groups.setdefault(i, []).append(float(value))
    return {i: sum(v) / len(v) for i, v in groups.items()}


# -- copy selectivity -----------------------------------------------------------------------------


class TurnPair(NamedTuple):
    """Turn k (k >= 2) against turn k-1 of one episode."""

    problem: str  # the episode's problem (rise_train.metrics.problem_id)
    turn: int  # k, 1-based
    previous_right: bool
    right: bool
    identical: bool  # the same output ids (and text, for turns recorded without ids)
    same_answer: bool
    edit_ratio: float


def turn_pairs(episode: Episode, max_turns: int) -> list[TurnPair]:
    """Every pair of consecutive turns actually taken, up to ``max_turns``."""
    equivalent = get_grader(episode.grader).equivalent
    turns = episode.turns[:max_turns]
    problem = problem_id(episode)
    return [
        TurnPair(
            problem=problem,
            turn=k + 1,
            previous_right=turn_is_correct(episode, prev),
            right=turn_is_correct(episode, cur),
            identical=cur.output_ids == prev.output_ids and cur.text == prev.text,
            same_answer=same_answer(prev.answer, cur.answer, equivalent),
            edit_ratio=edit_ratio(prev.output_ids, cur.output_ids),
        )
        for k, (prev, cur) in enumerate(pairwise(turns), start=1)
    ]


def copy_selectivity(pairs: Sequence[TurnPair]) -> dict[str, Any]:
    """Identical-text and same-answer rates given the previous turn right / wrong; edit ratios.

    A rate counts turn pairs, several per episode and not independent: its interval is a
    bootstrap over problems (:func:`rise_train.stats.cluster_bootstrap`), not a Wilson
    interval over pairs."""
    right = [p for p in pairs if p.previous_right]
    wrong = [p for p in pairs if not p.previous_right]
    return {
        "pairs": len(pairs),
        "identical_given_right": _clustered(right, lambda p: p.identical),
        "identical_given_wrong": _clustered(wrong, lambda p: p.identical),
        "same_answer_given_right": _clustered(right, lambda p: p.same_answer),
        "same_answer_given_wrong": _clustered(wrong, lambda p: p.same_answer),
        "right_after_wrong": _clustered(wrong, lambda p: p.right),
        "wrong_after_right": _clustered(right, lambda p: not p.right),
        "edit_ratio": distribution([p.edit_ratio for p in pairs]),
    }


FOLLOW_UPS = ("fixed", "repeated", "dropped")


def feedback_effects(episodes: Sequence[Episode], max_turns: int) -> dict[str, Any] | None:
    """What the feedback said and what the next turn did with it (issue 31), or None when no
    turn carries feedback: verdicts per provider, and for every slip the calculator named
    after a turn that has a next turn, whether that next turn ``fixed`` it (the same
    computation with the right result), ``repeated`` it or ``dropped`` it, and whether the next
    turn was right. Shares are bootstrapped over problems (a problem's slips together)."""
    from rise.feedback.calculator import slip_followed_up

    verdicts: dict[str, dict[str, int]] = {}
    follow: dict[str, list[tuple[str, str]]] = {}  # problem -> (follow-up, next right?)
    any_feedback = False
    for episode in episodes:
        turns = episode.turns[:max_turns]
        for k, turn in enumerate(turns):
            if turn.feedback is None:
                continue
            any_feedback = True
            counts = verdicts.setdefault(turn.feedback.provider, {})
            counts[turn.feedback.verdict.value] = counts.get(turn.feedback.verdict.value, 0) + 1
            if k + 1 >= len(turns):
                continue
            after = turns[k + 1]
            for slip in turn.feedback.slips:
                outcome = slip_followed_up(slip, after.text)
                right = "right" if turn_is_correct(episode, after) else "wrong"
                follow.setdefault(problem_id(episode), []).append((outcome, right))
    if not any_feedback:
        return None
    groups = list(follow.values())
    report: dict[str, Any] = {"verdicts": verdicts, "slips_named": sum(map(len, groups))}
    for outcome in FOLLOW_UPS:
        report[f"slips_{outcome}"] = cluster_bootstrap(
            [(sum(o == outcome for o, _ in g), len(g)) for g in groups]
        )
    report["next_turn_right_after_slip"] = cluster_bootstrap(
        [(sum(r == "right" for _, r in g), len(g)) for g in groups]
    )
    return report


def _clustered(pairs: Sequence[TurnPair], hit: Callable[[TurnPair], bool]) -> dict[str, Any]:
    groups: dict[str, list[int]] = {}
    for pair in pairs:
        counts = groups.setdefault(pair.problem, [0, 0])
        counts[0] += int(hit(pair))
        counts[1] += 1
    return cluster_bootstrap([(h, n) for h, n in groups.values()])


# -- the report -----------------------------------------------------------------------------------


Flags = tuple[list[bool], list[bool], list[str | None]]


def _turn_flags(episode: Episode, max_turns: int) -> Flags:
    """Per turn 1..N: correct, vote over 1..k correct, and the answers (cut runs carried on)."""
    turns = episode.turns[:max_turns]
    correct = [turn_is_correct(episode, t) for t in turns]
    correct += [correct[-1] if correct else False] * (max_turns - len(correct))
    answers = [t.answer for t in turns]
    answers += [answers[-1] if answers else None] * (max_turns - len(answers))
    vote = [vote_is_correct(episode, answers[: k + 1]) for k in range(max_turns)]
    return correct, vote, answers


def compute_metrics(
    episodes: Sequence[Episode],
    max_turns: int,
    parallel_answers: Sequence[Sequence[str | None]] | None = None,
    ablation: Sequence[AblationCase] | None = None,
) -> dict[str, Any]:
    """Every metric of the module docstring, as a report dict (see :mod:`rise_train.report`).

    ``parallel_answers[i]`` holds the P first-turn answers for ``episodes[i]`` (sample order);
    without it ``mP@t1``, ``pP@t1`` and the parallel distinct answers are left out. Episodes
    of one problem share ``metadata["problem_id"]`` (else each episode is its own problem).
    """
    n = len(episodes)
    if parallel_answers is not None and len(parallel_answers) != n:
        raise ValueError("parallel_answers needs one list per episode")
    flags = [_turn_flags(e, max_turns) for e in episodes]
    correct = [c for c, _, _ in flags]
    vote = [v for _, v, _ in flags]
    pairs = [turn_pairs(e, max_turns) for e in episodes]

    def count(pred: Callable[..., bool]) -> dict[str, Any]:
        return Proportion(sum(1 for i in range(n) if pred(i)), n).to_dict()

    per_turn = []
    for k in range(max_turns):
        row: dict[str, Any] = {
            "turn": k + 1,
            "accuracy": count(lambda i, k=k: correct[i][k]),
            "vote": count(lambda i, k=k: vote[i][k]),
            "oracle": count(lambda i, k=k: any(correct[i][: k + 1])),
        }
        if k > 0:
            row["wrong_to_right"] = count(lambda i, k=k: not correct[i][k - 1] and correct[i][k])
            row["right_to_wrong"] = count(lambda i, k=k: correct[i][k - 1] and not correct[i][k])
            row["identical_to_previous"] = count(
                lambda i, k=k: (
                    k < len(episodes[i].turns)
                    and episodes[i].turns[k].text == episodes[i].turns[k - 1].text
                )
            )
            row["copy_selectivity"] = copy_selectivity(
                [p for ps in pairs for p in ps if p.turn == k + 1]
            )
        per_turn.append(row)

    metrics: dict[str, Any] = {"m1@t1": per_turn[0]["accuracy"]}
    p = max((len(a) for a in parallel_answers or []), default=0)
    if parallel_answers is not None:
        metrics[f"m{p}@t1"] = count(lambda i: vote_is_correct(episodes[i], parallel_answers[i]))
    metrics[f"m1@t{max_turns}"] = per_turn[-1]["vote"]
    metrics[f"p1@t{max_turns}"] = per_turn[-1]["oracle"]
    for row in per_turn:
        metrics[f"acc@t{row['turn']}"] = row["accuracy"]

    ids = [problem_id(e) for e in episodes]
    first = per_problem_means(ids, [c[0] for c in correct])
    final = per_problem_means(ids, [v[-1] for v in vote])
    report: dict[str, Any] = {
        "metrics": metrics,
        "per_turn": per_turn,
        "sequential_gain": paired_bootstrap([final[i] - first[i] for i in first]),
        "flips": _pooled_flips(per_turn),
        "copy_selectivity": copy_selectivity([p for ps in pairs for p in ps]),
        "feedback": feedback_effects(episodes, max_turns),
        "exploration": _exploration(episodes, flags, parallel_answers, max_turns, p),
        "per_problem": {
            "ids": list(first),
            "first_turn": list(first.values()),
            "final_vote": list(final.values()),
            "repeats": _repeats(ids),
        },
    }
    if parallel_answers is not None:
        parallel_vote = per_problem_means(
            ids, [vote_is_correct(e, a) for e, a in zip(episodes, parallel_answers, strict=True)]
        )
        report["sequential_vs_parallel"] = paired_bootstrap(
            [final[i] - parallel_vote[i] for i in final]
        )
        report["anchoring"] = anchoring(episodes, parallel_answers)
    if ablation is not None:
        report["ablation"] = ablation_metrics(ablation)
    return report


def anchoring(
    episodes: Sequence[Episode], parallel_answers: Sequence[Sequence[str | None]]
) -> dict[str, Any]:
    """Turn 2 against the independent first-turn samples of the same problems, by turn 1
    right/wrong: does it keep turn 1's answer more often than they give it, and is it right
    more often than they are?

    ``parallel_answers[i]`` starts with turn 1's own answer (the episode's first turn is one
    of the P samples), so the other P − 1 are the independent ones. Per condition: ``turn2``
    (episodes keeping the answer at turn 2), ``samples`` (independent samples giving it,
    pooled) and ``excess`` (turn 2's rate minus its samples' share per episode, averaged per
    problem, bootstrapped over problems); the same for being right (``turn2_correct``,
    ``samples_correct``, ``correct_excess``) — after a wrong turn 1, a model that uses its
    attempt is right at turn 2 more often than a fresh sample. Episodes without a turn 2 or
    other samples are left out.
    """
    out: dict[str, Any] = {}
    for given in ("wrong", "right"):
        kept: list[bool] = []
        right: list[bool] = []
        agree = correct = total = 0
        ids: list[str] = []
        excess: list[float] = []
        correct_excess: list[float] = []
        for episode, answers in zip(episodes, parallel_answers, strict=True):
            others = list(answers[1:])
            if len(episode.turns) < 2 or not others:
                continue
            first, second = episode.turns[0], episode.turns[1]
            if turn_is_correct(episode, first) != (given == "right"):
                continue
            equivalent = get_grader(episode.grader).equivalent
            same = same_answer(first.answer, second.answer, equivalent)
            hits = sum(same_answer(first.answer, a, equivalent) for a in others)
            second_right = turn_is_correct(episode, second)
            rights = sum(is_correct(episode, a) for a in others)
            kept.append(same)
            right.append(second_right)
            agree, correct = agree + hits, correct + rights
            total += len(others)
            ids.append(problem_id(episode))
            excess.append(float(same) - hits / len(others))
            correct_excess.append(float(second_right) - rights / len(others))
        out[f"given_{given}"] = {
            "turn2": _share(kept),
            "samples": Proportion(agree, total).to_dict(),
            "excess": paired_bootstrap(list(per_problem_means(ids, excess).values())),
            "turn2_correct": _share(right),
            "samples_correct": Proportion(correct, total).to_dict(),
            "correct_excess": paired_bootstrap(
                list(per_problem_means(ids, correct_excess).values())
            ),
        }
    return out


def _repeats(ids: Sequence[str]) -> list[int]:
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return list(counts.values())


def _pooled_flips(per_turn: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flips summed over turns 2..N; ``ratio`` is wrong→right per right→wrong (None if 0)."""
    up = sum(r["wrong_to_right"]["count"] for r in per_turn[1:])
    down = sum(r["right_to_wrong"]["count"] for r in per_turn[1:])
    return {
        "wrong_to_right": up,
        "right_to_wrong": down,
        "ratio": up / down if down else None,
        "transitions": sum(r["wrong_to_right"]["n"] for r in per_turn[1:]),
    }


def _exploration(
    episodes: Sequence[Episode],
    flags: Sequence[Flags],
    parallel_answers: Sequence[Sequence[str | None]] | None,
    max_turns: int,
    p: int,
) -> dict[str, Any]:
    """Sequential oracle vs parallel pass@P; distinct answers per episode, turns vs samples."""
    n = len(episodes)
    equivalent = [get_grader(e.grader).equivalent for e in episodes]
    sequential = [distinct_answers(a, eq) for (_, _, a), eq in zip(flags, equivalent, strict=True)]
    out: dict[str, Any] = {
        f"p1@t{max_turns}": Proportion(sum(1 for c, _, _ in flags if any(c)), n).to_dict(),
    }
    distinct: dict[str, Any] = {
        "turns": max_turns,
        "sequential": sum(sequential) / n if n else 0.0,
        "none_answer": "counted as one answer of its own",
    }
    if parallel_answers is not None:
        passed = sum(
            1
            for e, answers in zip(episodes, parallel_answers, strict=True)
            if any(is_correct(e, a) for a in answers)
        )
        out[f"p{p}@t1"] = Proportion(passed, n).to_dict()
        per_episode = [
            distinct_answers(a, eq) for a, eq in zip(parallel_answers, equivalent, strict=True)
        ]
        distinct["samples"] = p
        distinct["parallel"] = sum(per_episode) / n if n else 0.0
    out["distinct_answers"] = distinct
    return out


def headline(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four headline metrics (m1@t1, mP@t1, m1@tN, p1@tN) of a report, in that order."""
    return {k: v for k, v in report["metrics"].items() if not k.startswith("acc@")}


def paired_comparison(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Tuned minus base on the problems both reports share, paired by problem id.

    ``m1@t1`` and ``m1@tN`` are per-problem differences of correctness (means over repeats);
    ``sequential_gain`` is the difference of the per-problem gains (m1@tN − m1@t1) — RISE's
    claim is that it is > 0. Intervals: paired bootstrap over the shared problems. Reports
    written before the per-problem flags existed give an empty dict.
    """
    if "per_problem" not in base or "per_problem" not in tuned:
        return {}

    def flags(report: dict[str, Any]) -> dict[str, tuple[float, float]]:
        rows = report["per_problem"]
        return {
            i: (float(a), float(b))
            for i, a, b in zip(rows["ids"], rows["first_turn"], rows["final_vote"], strict=True)
        }

    b, t = flags(base), flags(tuned)
    shared = [i for i in t if i in b]
    n_turns = len(tuned["per_turn"])
    return {
        "problems": len(shared),
        "m1@t1": paired_bootstrap([t[i][0] - b[i][0] for i in shared]),
        f"m1@t{n_turns}": paired_bootstrap([t[i][1] - b[i][1] for i in shared]),
        "sequential_gain": paired_bootstrap(
            [(t[i][1] - t[i][0]) - (b[i][1] - b[i][0]) for i in shared]
        ),
    }


# -- the turn-2 context ablation ------------------------------------------------------------------


@dataclass
class AblationCase:
    """A wrong first turn and turn 2 sampled in three contexts (docs/RISE.md §6, the ablation).

    - own: ``episode`` is the sequential episode; ``turns[0]`` is its wrong attempt and
      ``turns[1]`` the turn 2 it actually took.
    - foreign: ``foreign.turns[0]`` is another problem's wrong first attempt placed as the
      assistant's answer to this problem; ``foreign.turns[1]`` the turn 2 sampled after it
      (None when no other problem had a wrong first turn).
    - none: ``none`` is a fresh first-turn sample (the first user message only).
    """

    episode: Episode
    foreign: Episode | None
    none: Turn

    def to_dict(self) -> dict[str, Any]:
        def turn(t: Turn) -> dict[str, Any]:
            return {k: v for k, v in t.to_dict().items() if k != "prompt_ids"}

        foreign = self.foreign
        return {
            "problem_id": problem_id(self.episode),
            "repeat": self.episode.metadata.get("repeat", 0),
            "attempt": turn(self.episode.turns[0]),
            "own": turn(self.episode.turns[1]),
            "foreign_problem_id": foreign and foreign.metadata.get("foreign_problem_id"),
            "foreign_attempt": foreign and turn(foreign.turns[0]),
            "foreign": foreign and turn(foreign.turns[1]),
            "none": turn(self.none),
        }


class _Outcome(NamedTuple):
    problem: str
    correct: bool
    same_as_own: bool  # the answer equals the problem's own wrong first answer
    changed: bool  # the answer differs from the attempt in the context (own attempt for none)


def _ablation_outcomes(case: AblationCase) -> dict[str, _Outcome]:
    episode = case.episode
    equivalent = get_grader(episode.grader).equivalent
    own_answer = episode.turns[0].answer
    pid = problem_id(episode)

    def outcome(turn: Turn, shown: str | None) -> _Outcome:
        return _Outcome(
            pid,
            turn_is_correct(episode, turn),
            same_answer(own_answer, turn.answer, equivalent),
            not same_answer(shown, turn.answer, equivalent),
        )

    out = {"own": outcome(episode.turns[1], own_answer), "none": outcome(case.none, own_answer)}
    if case.foreign is not None:
        out["foreign"] = outcome(case.foreign.turns[1], case.foreign.turns[0].answer)
    return out


ABLATION_CONTRASTS = (
    ("changed", "own", "foreign"),
    ("same_as_own_attempt", "own", "foreign"),
    ("same_as_own_attempt", "own", "none"),
    ("accuracy", "own", "none"),
)


def ablation_metrics(cases: Sequence[AblationCase]) -> dict[str, Any]:
    """Per context (own / foreign / none): accuracy, P(answer = own wrong answer), P(changed).

    ``changed`` compares the turn-2 answer with the attempt in its context (for ``none``, with
    the problem's own attempt, the rate at which a fresh sample differs). Genuine correction
    changes the answer more after its own wrong attempt than after a foreign one, and rarely
    returns its own wrong answer. ``paired`` holds own-minus-other contrasts over problems
    (per-problem means over cases, paired bootstrap).
    """
    outcomes = [_ablation_outcomes(c) for c in cases]
    fields = {"accuracy": "correct", "same_as_own_attempt": "same_as_own", "changed": "changed"}
    conditions: dict[str, Any] = {}
    for name in ("own", "foreign", "none"):
        rows = [o[name] for o in outcomes if name in o]
        conditions[name] = {"n": len(rows)} | {
            key: _share([getattr(r, attr) for r in rows]) for key, attr in fields.items()
        }
    paired: dict[str, Any] = {}
    for key, a, b in ABLATION_CONTRASTS:
        both = [o for o in outcomes if a in o and b in o]
        attr = fields[key]
        means = per_problem_means(
            [o[a].problem for o in both],
            [float(getattr(o[a], attr)) - float(getattr(o[b], attr)) for o in both],
        )
        paired[f"{key}: {a} - {b}"] = paired_bootstrap(list(means.values()))
    return {"cases": len(cases), **conditions, "paired": paired}
