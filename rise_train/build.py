"""Trajectories → weighted training examples and preference pairs (docs/RISE.md §3–§4).

A trajectory (:class:`~rise_train.records.Trajectory`, written by ``collect``) holds, per turn,
the exact prompt ids of the state s_t, every scored candidate and the index of the one kept as
a_t. This module turns the kept actions into :class:`~rise_train.records.Example` rows — the
state's ids are context (no loss), the action's ids the target, so the model trains on exactly
the token sequence the service would have sent — weighted for the run's objective
(:mod:`rise_train.objectives`), and, for objective ``preference``, adds
:class:`~rise_train.records.PreferencePair` rows. :class:`BuildConfig` says which actions
(``criteria``), which target, how they are weighted and de-duplicated; docs/RISE.md §3 states
every rule, and :class:`BuildStats` reports what each rule did and the data's composition.

RISE's own options come first in :class:`BuildConfig`; the study's additions (docs/EXPERIMENTS.md,
"How the training options came to be") after them.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rise.answers import get_grader
from rise.episode import Episode, Turn
from rise_train.objectives import ObjectiveName, check_objective
from rise_train.records import (
    IGNORE_INDEX,
    TRANSITIONS,
    Candidate,
    Example,
    PreferencePair,
    TrainingRow,
    Trajectory,
    read_trajectories,
    transition,
    write_jsonl,
)
from rise_train.similarity import edit_ratio

__all__ = [
    "IGNORE_INDEX",
    "BuildConfig",
    "BuildStats",
    "build",
    "build_examples",
    "fit_pair",
    "truncate_left",
]

CRITERIA = ("all", "better", "best", "success")
TARGETS = ("chosen", "dissimilar")
FIRST_TURN = ("full", "unit", "exclude")
PAIRS = ("none", "fix", "fix+keep")


@dataclass
class BuildConfig:
    """How trajectories become examples; every field is a CLI flag."""

    objective: ObjectiveName = field(
        default="rwr",
        metadata={
            "help": "The training objective, which sets the example weights (docs/RISE.md §4): "
            "rwr exp(r/tau) (RISE) | awr | sft (weight 1) | advantage (signed) | preference "
            "(rwr + --pairs)."
        },
    )
    criteria: Literal["all", "better", "best", "success"] = field(
        default="all", metadata={"help": "Which actions to keep: all | better | best | success."}
    )
    tau: float = field(default=0.4, metadata={"help": "Temperature of exp(r/tau)."})
    include_candidates: bool = field(
        default=False,
        metadata={"help": "Make an example of every scored candidate, not only the target."},
    )
    dedup_trajectory: bool = field(
        default=True,
        metadata={"help": "Drop a correction that repeats an earlier action or wrong answer."},
    )
    dedup: bool = field(
        default=True, metadata={"help": "Drop repeated (prompt ids, target ids) pairs."}
    )
    shuffle: bool = field(default=True, metadata={"help": "Shuffle the examples (seeded)."})
    seed: int = field(default=0, metadata={"help": "Seed of the shuffle."})
    max_length: int | None = field(
        default=2048, metadata={"help": "Max tokens per example; the context is cut from the left."}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (model folder) to render trajectories stored without ids."},
    )

    # The study's additions (docs/EXPERIMENTS.md), against copying and for signed advantages.
    target: Literal["chosen", "dissimilar"] = field(
        default="chosen",
        metadata={"help": "Correction target: chosen | dissimilar (least like the attempt)."},
    )
    first_turn: Literal["full", "unit", "exclude"] = field(
        default="full", metadata={"help": "Turn-1 targets: full weight | unit weight | exclude."}
    )
    progress_bonus: float = field(
        default=0.0, metadata={"help": "alpha of the weight bonus alpha*(r_t - r_{t-1})."}
    )
    pairs: Literal["none", "fix", "fix+keep"] = field(
        default="none",
        metadata={"help": "Objective preference: its pairs, fix | fix+keep (none otherwise)."},
    )
    negative_scale: float = field(
        default=1.0,
        metadata={"help": "Objective advantage: multiplier of negative weights (0 drops them)."},
    )
    mask_negative_stop: bool = field(
        default=False,
        metadata={
            "help": "Objective advantage: leave a negative example's final end-of-sequence "
            "token out of its loss."
        },
    )
    copy_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Objective advantage: a correction repeating an earlier wrong attempt "
            "(tokens or answer) counts as reward r - c (0: off)."
        },
    )
    max_corrections: int | None = field(
        default=None,
        metadata={
            "help": "Keep at most N correction examples (turn >= 2), drawn uniformly (seeded)."
        },
    )

    def __post_init__(self) -> None:
        check_objective(self.objective)
        for name, allowed in (
            ("criteria", CRITERIA), ("target", TARGETS), ("first_turn", FIRST_TURN),
            ("pairs", PAIRS),
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.progress_bonus < 0:
            raise ValueError("progress_bonus must be >= 0")
        if self.objective == "preference" and self.pairs == "none":
            raise ValueError("objective 'preference' needs pairs: fix | fix+keep")
        if self.objective != "preference" and self.pairs != "none":
            raise ValueError("pairs apply to objective 'preference' only")
        if not 0.0 <= self.negative_scale <= 1.0:
            raise ValueError(f"negative_scale must be in [0, 1], got {self.negative_scale}")
        if self.negative_scale != 1.0 and not self.signed:
            raise ValueError("negative_scale applies to objective 'advantage' only")
        if self.mask_negative_stop and not self.signed:
            raise ValueError("mask_negative_stop applies to objective 'advantage' only")
        if self.copy_penalty < 0:
            raise ValueError(f"copy_penalty must be >= 0, got {self.copy_penalty}")
        if self.copy_penalty and not self.signed:
            raise ValueError("copy_penalty applies to objective 'advantage' only")
        if self.max_corrections is not None and self.max_corrections < 0:
            raise ValueError(f"max_corrections must be >= 0, got {self.max_corrections}")
        if self.signed and self.criteria != "all":
            raise ValueError("objective 'advantage' needs criteria 'all' (the baseline needs them)")

    @property
    def signed(self) -> bool:
        """Weights are advantages: negative ones allowed, every candidate an example."""
        return self.objective == "advantage"


@dataclass
class BuildStats:
    """What happened to the input, and the composition of what came out."""

    trajectories: int = 0
    actions: int = 0  # actions considered (targets, or all candidates)
    kept_by_criteria: int = 0
    first_turn_excluded: int = 0
    repeats_earlier_action: int = 0  # within-trajectory de-duplication
    repeats_wrong_answer: int = 0  # ... extended to a wrong answer given before
    duplicates: int = 0
    zero_weight: int = 0
    empty_target: int = 0
    too_long: int = 0
    truncated: int = 0
    # The counters above and stops_masked describe everything built, before max_corrections'
    # draw; examples, composition, weight_total and target_edit_ratio what is written.
    stops_masked: int = 0  # negative examples whose final stop token is left out of the loss
    copies_penalised: int = 0  # candidates whose reward copy_penalty lowered
    over_budget: int = 0  # correction examples left out by max_corrections
    examples: int = 0
    pairs: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    # count and weight share of each transition (first, wrong_to_right, ...) among examples
    composition: dict[str, dict[str, float]] = field(default_factory=dict)
    pairs_by_type: dict[str, int] = field(default_factory=dict)
    target_edit_ratio: dict[str, float] = field(default_factory=dict)  # vs previous attempt
    weight_total: dict[str, float] = field(default_factory=dict)  # positive and negative sums

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the rules --------------------------------------------------------------------------------


def keeps(criteria: str, reward: float, earlier: Sequence[float]) -> bool:
    """Whether an action with ``reward`` is kept, given the chosen rewards of earlier turns."""
    if criteria == "all":
        return True
    if criteria == "better":
        return reward > (earlier[-1] if earlier else 0.0)
    if criteria == "best":
        return all(reward >= r for r in earlier)
    if criteria == "success":
        return reward >= 1.0
    raise ValueError(f"unknown criteria {criteria!r}")


def rwr_weight(reward: float, tau: float = 0.4) -> float:
    """Reward-weighted regression weight exp(r / tau)."""
    return math.exp(reward / tau)


def example_weight(
    config: BuildConfig, reward: float, previous: float | None, baseline: float = 0.0
) -> float:
    """The weight of a target with ``reward`` after an attempt with reward ``previous``.

    ``previous`` is None at turn 1; ``baseline`` is awr's per-problem mean or advantage's
    state baseline. 0 means "drop".
    """
    if config.signed:
        w = reward - baseline
        if previous is None:
            w = math.copysign(1.0, w) if config.first_turn == "unit" and w else w
        else:
            w = w + config.progress_bonus * (reward - previous)
        return w * config.negative_scale if w < 0 else w
    if config.objective == "sft":
        w = 1.0
    else:  # rwr, and preference's examples
        w = rwr_weight(reward, config.tau)
        if config.objective == "awr":
            # The tiny epsilon absorbs float noise when every attempt has the same reward.
            w = w - baseline
            w = w if w > 1e-9 * max(baseline, 1.0) else 0.0
    if previous is None:
        return 1.0 if config.first_turn == "unit" and w > 0 else w
    return max(0.0, w + config.progress_bonus * (reward - previous))


def least_similar(
    candidates: Sequence[Candidate], ids: Sequence[Sequence[int]], previous_ids: Sequence[int]
) -> int | None:
    """Index of the correct candidate whose ``ids`` are least like ``previous_ids`` (first on
    ties); None when no candidate is correct. ``ids`` are the candidates' token ids, rendered
    for those stored as text only."""
    best: tuple[float, int] | None = None
    for i, (cand, cand_ids) in enumerate(zip(candidates, ids, strict=True)):
        if not cand.correct:
            continue
        ratio = edit_ratio(cand_ids, previous_ids)
        if best is None or ratio < best[0]:
            best = (ratio, i)
    return None if best is None else best[1]


def truncate_left(
    prompt_ids: list[int], target_ids: list[int], max_length: int | None
) -> tuple[list[int], list[int]] | None:
    """Fit ``prompt + target`` into ``max_length`` by cutting the context's left end.

    Returns None when the target cannot be kept whole after at least one context token.
    """
    if max_length is None or len(prompt_ids) + len(target_ids) <= max_length:
        return prompt_ids, target_ids
    room = max_length - len(target_ids)
    if room < 1:
        return None
    return prompt_ids[-room:], target_ids


def fit_pair(pair: PreferencePair, max_length: int | None) -> PreferencePair | None:
    """The pair with its prompt cut from the left so that prompt + the longer response fits
    ``max_length`` (:func:`truncate_left`'s rule); None when it cannot."""
    longest = max(len(pair.chosen_ids), len(pair.rejected_ids))
    fitted = truncate_left(pair.prompt_ids, [0] * longest, max_length)
    if fitted is None:
        return None
    return replace(pair, prompt_ids=fitted[0])


# -- trajectories → actions --------------------------------------------------------------------


@dataclass
class _Action:
    """One candidate target in its state, with what the rules need to know about the past."""

    problem_id: str
    turn: int
    prompt_ids: list[int]
    target_ids: list[int]
    candidate: Candidate
    earlier_rewards: list[float]
    earlier_ids: list[list[int]]  # the chosen actions before this turn
    earlier_wrong_answers: list[str | None]
    grader: str
    is_target: bool  # the turn's target (chosen or dissimilar), not just another candidate
    turn_candidates: list[Candidate]
    turn_candidate_ids: list[list[int]]
    index: int  # of ``candidate`` in ``turn_candidates``
    turn_rewards: list[float]  # the candidates' rewards as the weights see them (copy_penalty)
    feedback: str | None = None  # "provider:verdict" of the feedback this state answers

    @property
    def previous_reward(self) -> float | None:
        return self.earlier_rewards[-1] if self.earlier_rewards else None

    @property
    def reward(self) -> float:
        """The candidate's reward as the weights see it (its own, less any copy penalty)."""
        return self.turn_rewards[self.index]


def _actions(record: Trajectory, config: BuildConfig, lazy: _LazyRenderer) -> Iterator[_Action]:
    """The (state, target) actions of one trajectory, in turn order."""
    pid = record.problem_id
    # The chosen actions so far: the state of a turn stored without ids is rebuilt from them.
    episode = Episode(question=record.question, context=list(record.context))
    rewards: list[float] = []
    chosen_ids: list[list[int]] = []
    wrong_answers: list[str | None] = []
    wrong_ids: list[list[int]] = []
    for t, turn in enumerate(record.turns):
        prompt_ids = turn.prompt_ids
        if prompt_ids is None:
            prompt_ids = lazy.get(pid).next_prompt_ids(episode, turn.user_message)
        ids = [_target_ids(c, lazy, pid)[0] for c in turn.candidates]
        target = turn.chosen
        if config.target == "dissimilar" and chosen_ids:
            dissimilar = least_similar(turn.candidates, ids, chosen_ids[-1])
            target = target if dissimilar is None else dissimilar
        every = config.include_candidates or config.signed
        picked = range(len(turn.candidates)) if every else [target]
        turn_rewards = [
            cand.reward - config.copy_penalty
            if config.copy_penalty
            and _repeats_wrong(cand, ids[i], wrong_ids, wrong_answers, record.grader)
            else cand.reward
            for i, cand in enumerate(turn.candidates)
        ]
        given = record.turns[t - 1].feedback if t else None
        feedback = f"{given['provider']}:{given['verdict']}" if given else None
        for c in picked:
            yield _Action(
                problem_id=pid,
                turn=turn.index,
                prompt_ids=list(prompt_ids),
                target_ids=ids[c],
                candidate=turn.candidates[c],
                earlier_rewards=list(rewards),
                earlier_ids=list(chosen_ids),
                earlier_wrong_answers=list(wrong_answers),
                grader=record.grader,
                is_target=c == target,
                turn_candidates=turn.candidates,
                turn_candidate_ids=ids,
                index=c,
                turn_rewards=turn_rewards,
                feedback=feedback,
            )
        action = turn.action
        output_ids, eos = _target_ids(action, lazy, pid)
        episode.turns.append(
            Turn(
                index=t, user_message=turn.user_message, prompt_ids=list(prompt_ids),
                output_ids=output_ids, text=action.text, finish_reason="stop", ended_with_eos=eos,
            )
        )  # fmt: skip
        rewards.append(action.reward)
        chosen_ids.append(output_ids)
        if not action.correct:
            wrong_answers.append(action.answer)
            wrong_ids.append(output_ids)


def _repeat_of(
    ids: Sequence[int],
    answer: str | None,
    earlier_ids: Sequence[Sequence[int]],
    wrong_answers: Sequence[str | None],
    grader: str,
) -> str | None:
    """The de-duplication rule, once: ``"action"`` when ``ids`` repeat one of ``earlier_ids``,
    ``"wrong_answer"`` when ``answer`` is one of the earlier ``wrong_answers``, else None."""
    if any(ids == earlier for earlier in earlier_ids):
        return "action"
    if answer is not None and wrong_answers:
        equivalent = get_grader(grader).equivalent
        if any(w is not None and equivalent(answer, w) for w in wrong_answers):
            return "wrong_answer"
    return None


def _repeats_wrong(
    candidate: Candidate,
    ids: Sequence[int],
    wrong_ids: Sequence[Sequence[int]],
    wrong_answers: Sequence[str | None],
    grader: str,
) -> bool:
    """Whether a wrong candidate repeats an earlier wrong attempt: its tokens, or its answer."""
    if candidate.correct:
        return False
    return _repeat_of(ids, candidate.answer, wrong_ids, wrong_answers, grader) is not None


def _repeats(action: _Action) -> str | None:
    """Why a correction target repeats the trajectory's past (None: it does not)."""
    if not action.earlier_ids:
        return None
    return _repeat_of(
        action.target_ids,
        action.candidate.answer,
        action.earlier_ids,
        action.earlier_wrong_answers,
        action.grader,
    )


def _pairs(action: _Action, config: BuildConfig) -> Iterator[PreferencePair]:
    """The preference pairs of a target's state (docs/RISE.md §3): ``fix`` — after a wrong
    attempt, a correct target over the attempt repeated verbatim; ``keep`` (``fix+keep``) — after
    a right attempt, the attempt repeated over a wrong candidate of the state."""
    if config.pairs == "none" or not action.is_target or not action.earlier_ids:
        return
    previous_ids = action.earlier_ids[-1]
    previous_right = (action.previous_reward or 0.0) >= 1.0

    def pair(chosen: list[int], rejected: list[int], pair_type: str) -> PreferencePair:
        return PreferencePair(
            action.prompt_ids, chosen, rejected, problem_id=action.problem_id, turn=action.turn,
            pair_type=pair_type,
        )  # fmt: skip

    if not previous_right and action.candidate.correct and action.target_ids != previous_ids:
        yield pair(action.target_ids, previous_ids, "fix")
    if previous_right and config.pairs == "fix+keep":
        wrong = next(
            (
                ids
                for c, ids in zip(action.turn_candidates, action.turn_candidate_ids, strict=True)
                if not c.correct and ids and ids != previous_ids
            ),
            None,
        )
        if wrong is not None:
            yield pair(previous_ids, wrong, "keep")


# -- the builder -------------------------------------------------------------------------------


def build_examples(
    trajectories: Iterable[Trajectory | dict[str, Any]],
    config: BuildConfig,
    renderer: Any = None,
) -> tuple[list[TrainingRow], BuildStats]:
    """Examples (and pairs) from trajectories, filtered, weighted, de-duplicated and shuffled.

    ``renderer`` (a :class:`rise.prompts.ChatRenderer`) is needed only for trajectories stored
    without token ids; when None and ``config.tokenizer`` is set, one is built on demand.
    """
    stats = BuildStats()
    records = [r if isinstance(r, Trajectory) else Trajectory.from_dict(r) for r in trajectories]
    stats.trajectories = len(records)
    lazy = _LazyRenderer(renderer, config.tokenizer)

    baseline: dict[str, float] = {}  # awr needs every attempt at a problem first
    if config.objective == "awr":
        attempts: dict[str, list[float]] = defaultdict(list)
        for record in records:
            for turn in record.turns:
                for cand in turn.candidates:
                    attempts[record.problem_id].append(rwr_weight(cand.reward, config.tau))
        baseline = {pid: sum(ws) / len(ws) for pid, ws in attempts.items()}

    actions = [a for record in records for a in _actions(record, config, lazy)]
    turn_means: dict[int, float] = {}  # advantage's baseline for one-candidate states
    if config.signed:  # every candidate is an action: the means are over all of them
        by_turn: dict[int, list[float]] = defaultdict(list)
        for action in actions:
            by_turn[action.turn].append(action.reward)
        turn_means = {t: sum(rs) / len(rs) for t, rs in by_turn.items()}
        stats.copies_penalised = sum(a.reward != a.candidate.reward for a in actions)

    rows: list[TrainingRow] = []
    examples: list[Example] = []
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    ratios: list[tuple[Example, float]] = []
    for action in actions:
        for pair in _pairs(action, config):
            fitted_pair = fit_pair(pair, config.max_length)
            if fitted_pair is not None:
                rows.append(fitted_pair)
                stats.pairs_by_type[pair.pair_type] = stats.pairs_by_type.get(pair.pair_type, 0) + 1
        base = (
            _state_baseline(action, turn_means)
            if config.signed
            else baseline.get(action.problem_id, 0.0)
        )
        example = _example(action, config, base, seen, stats)
        if example is not None:
            examples.append(example)
            if action.earlier_ids:
                ratios.append((example, edit_ratio(action.target_ids, action.earlier_ids[-1])))
    if config.max_corrections is not None:
        examples, stats.over_budget = _draw_corrections(
            examples, config.max_corrections, config.seed
        )
    kept = {id(ex) for ex in examples}
    n_pairs = len(rows)
    rows.extend(examples)
    if config.shuffle:
        random.Random(config.seed).shuffle(rows)
    stats.examples = len(examples)
    stats.pairs = n_pairs
    stats.composition = composition(examples)
    stats.target_edit_ratio = _summary([r for ex, r in ratios if id(ex) in kept])
    stats.weight_total = {
        "positive": sum(ex.weight for ex in examples if ex.weight > 0),
        "negative": sum(ex.weight for ex in examples if ex.weight < 0),
    }
    return rows, stats


def _draw_corrections(examples: list[Example], budget: int, seed: int) -> tuple[list[Example], int]:
    """At most ``budget`` correction examples drawn uniformly, first answers all kept, input
    order kept; returns the examples and how many corrections were left out."""
    corrections = [i for i, ex in enumerate(examples) if (ex.transition or "first") != "first"]
    if len(corrections) <= budget:
        return examples, 0
    dropped = set(corrections) - set(random.Random(seed).sample(corrections, budget))
    return [ex for i, ex in enumerate(examples) if i not in dropped], len(dropped)


def _state_baseline(action: _Action, turn_means: dict[int, float]) -> float:
    """Advantage's baseline: the other candidates' mean reward in the action's state, or the
    turn's mean over the input when the state has one candidate."""
    others = [r for i, r in enumerate(action.turn_rewards) if i != action.index]
    if others:
        return sum(others) / len(others)
    return turn_means.get(action.turn, 0.0)


def _example(
    action: _Action,
    config: BuildConfig,
    baseline: float,
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]],
    stats: BuildStats,
) -> Example | None:
    """The action's example, or None with the reason counted in ``stats``."""
    stats.actions += 1
    reward = action.candidate.reward
    if not keeps(config.criteria, reward, action.earlier_rewards):
        return None
    stats.kept_by_criteria += 1
    if action.previous_reward is None and config.first_turn == "exclude":
        stats.first_turn_excluded += 1
        return None
    weight = example_weight(config, action.reward, action.previous_reward, baseline)
    if (
        config.dedup_trajectory
        and (weight > 0.0 or not config.signed)  # a negative repeat is the one to push down
        and (why := _repeats(action)) is not None
    ):
        if why == "action":
            stats.repeats_earlier_action += 1
        else:
            stats.repeats_wrong_answer += 1
        return None
    if weight == 0.0 or (weight < 0.0 and not config.signed):
        stats.zero_weight += 1
        return None
    mask_stop = config.mask_negative_stop and weight < 0.0 and action.candidate.ended_with_eos
    if not action.target_ids or (mask_stop and len(action.target_ids) == 1):
        stats.empty_target += 1  # no target, or the stop alone: nothing left to push down
        return None
    key = (tuple(action.prompt_ids), tuple(action.target_ids))
    if config.dedup and not config.signed and key in seen:  # two on-policy samples are two
        stats.duplicates += 1
        return None
    seen.add(key)
    fitted = truncate_left(action.prompt_ids, action.target_ids, config.max_length)
    if fitted is None:
        stats.too_long += 1
        return None
    if len(fitted[0]) < len(action.prompt_ids):
        stats.truncated += 1
    outcome = action.candidate.outcome or "unknown"
    stats.by_outcome[outcome] = stats.by_outcome.get(outcome, 0) + 1
    example = Example.from_ids(
        *fitted,
        weight,
        problem_id=action.problem_id,
        turn=action.turn,
        reward=reward,
        outcome=action.candidate.outcome,
        source=action.candidate.source,
        transition=transition(action.previous_reward, reward),
        feedback=action.feedback,
    )
    if mask_stop:
        # A wrong answer pushed down whole also pushes down the stop after its answer line, the
        # token every right answer ends with too: the positive examples alone teach the stop.
        example.labels[-1] = IGNORE_INDEX
        stats.stops_masked += 1
    return example


def composition(examples: Sequence[Example]) -> dict[str, dict[str, float]]:
    """Count and weight share of each transition among ``examples`` (every key present)."""
    counts: Counter[str] = Counter()
    weights: defaultdict[str, float] = defaultdict(float)
    for ex in examples:
        key = ex.transition or "first"
        counts[key] += 1
        weights[key] += abs(ex.weight)  # advantages are signed: the share is of |weight|
    total_n, total_w = sum(counts.values()), sum(weights.values())
    return {
        key: {
            "count": counts[key],
            "share": counts[key] / total_n if total_n else 0.0,
            "weight_share": weights[key] / total_w if total_w else 0.0,
        }
        for key in TRANSITIONS
    }


def format_composition(stats: BuildStats | dict[str, Any]) -> str:
    """The composition as lines: ``wrong_to_right  120 (35.0% of examples, 61.2% of weight)``."""
    data = stats.to_dict() if isinstance(stats, BuildStats) else stats
    lines = ["data composition (target after previous attempt):"]
    for key, row in data["composition"].items():
        lines.append(
            f"  {key:<15} {int(row['count']):>6}  ({row['share']:6.1%} of examples, "
            f"{row['weight_share']:6.1%} of weight)"
        )
    pairs = data.get("pairs_by_type") or {}
    lines.append(f"  preference pairs: {data.get('pairs', 0)} {dict(pairs) if pairs else ''}")
    totals = data.get("weight_total") or {}
    if totals:
        lines.append(
            f"  weights: {totals['positive']:+.1f} positive, {totals['negative']:+.1f} negative"
        )
    if data.get("copies_penalised"):
        lines.append(
            f"  candidates repeating a wrong attempt (copy_penalty): {data['copies_penalised']}"
        )
    if data.get("over_budget"):
        lines.append(f"  corrections left out by max_corrections: {data['over_budget']}")
    ratio = data.get("target_edit_ratio") or {}
    if ratio.get("n"):
        lines.append(
            f"  correction targets vs previous attempt: edit ratio mean {ratio['mean']:.2f}, "
            f"{ratio['identical']:.0f} identical of {ratio['n']:.0f}"
        )
    return "\n".join(lines)


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": sum(values) / len(values),
        "identical": sum(1 for v in values if v >= 1.0),
    }


def _target_ids(cand: Candidate, lazy: _LazyRenderer, problem_id: str) -> tuple[list[int], bool]:
    if cand.output_ids is not None:
        return list(cand.output_ids), cand.ended_with_eos
    return lazy.get(problem_id).response_ids(cand.text)


class _LazyRenderer:
    """Builds the ChatRenderer only if a trajectory without ids turns up."""

    def __init__(self, renderer: Any, tokenizer: str | None) -> None:
        self._renderer = renderer
        self._tokenizer = tokenizer

    def get(self, problem_id: str) -> Any:
        if self._renderer is None:
            if self._tokenizer is None:
                raise ValueError(
                    f"trajectory {problem_id!r} is stored without token ids; "
                    "set BuildConfig.tokenizer (the model folder) to render it"
                )
            from transformers import AutoTokenizer

            from rise.prompts import ChatRenderer

            self._renderer = ChatRenderer(AutoTokenizer.from_pretrained(self._tokenizer))
        return self._renderer


# -- files ---------------------------------------------------------------------------------------


def build(
    trajectories_path: str | Path | Iterable[str | Path],
    output_path: str | Path,
    config: BuildConfig | None = None,
) -> BuildStats:
    """Read trajectory file(s), build examples and pairs, write them to ``output_path``."""
    config = config or BuildConfig()
    paths = (
        [trajectories_path]
        if isinstance(trajectories_path, (str, Path))
        else list(trajectories_path)
    )
    records = [t for p in paths for t in read_trajectories(p)]
    rows, stats = build_examples(records, config)
    write_jsonl(rows, output_path)
    return stats
