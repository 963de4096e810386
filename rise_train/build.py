"""Trajectories → weighted training examples (RISE.md §3–§4).

A trajectory (one JSON line written by ``collect.py``) holds, per turn, the exact prompt ids of
the state s_t, every scored candidate action and the index of the one kept as a_t. This module
turns them into supervised examples for ``train.py``::

    {"input_ids": prompt_ids + target_ids, "labels": [-100] * len(prompt_ids) + target_ids,
     "weight": w, "problem_id": ..., "turn": t, "reward": r, ...}

so the loss covers the target turn only, and the context is exactly the token sequence the
service would have sent (it came from ``rise.prompts``; trajectories stored as text only are
rendered here with the same :class:`~rise.prompts.ChatRenderer`).

Which actions become examples (``criteria``), for an action with reward r at turn t, where
r_0..r_{t-1} are the rewards of the trajectory's *chosen* actions at the earlier turns:

- ``all``: every action.
- ``better``: r > r_{t-1}. Turn 0 has no previous attempt; it is compared with the reward of a
  wrong answer (0), so with rewards in {-1, 0, 1} it is kept only when correct.
- ``best``: r >= max(r_0..r_{t-1}), i.e. not worse than any earlier attempt. Vacuously true at
  turn 0, so turn 0 is always kept (even when wrong).
- ``success``: r == 1.

Weights (``weighting``), with τ = ``tau``:

- ``rwr``: w = exp(r/τ) (τ = 0.4: correct ≈ 12.18, wrong = 1.0, unparseable ≈ 0.082).
- ``awr``: w = max(0, exp(r/τ) - mean exp(r'/τ)), the mean taken over every attempt at the same
  problem (all candidates of all turns of all its trajectories in the input). Clipping at 0
  keeps AWR's meaning — learn only from attempts better than the average attempt — and
  examples whose weight is 0 are dropped, since they would only dilute the batch mean. A
  problem whose attempts all share one reward therefore yields no examples.
- ``uniform``: w = 1.

Truncation to ``max_length`` (only when context + target is longer): tokens are removed from
the left of the context, the target is kept whole. When the target alone does not fit with at
least one context token before it (len(target) >= max_length) the example is dropped: a cut
response teaches a turn that neither follows its prompt nor ends. Examples with an empty
target are dropped too (nothing to learn, and a fully masked row wastes a batch slot).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rise.episode import Episode, Turn
from rise_train.datasets import jsonl_rows

IGNORE_INDEX = -100
CRITERIA = ("all", "better", "best", "success")
WEIGHTINGS = ("rwr", "awr", "uniform")
_OUTCOME_REWARD = {"correct": 1.0, "wrong": 0.0, "unparseable": -1.0}

Example = dict[str, Any]


@dataclass
class BuildConfig:
    """How trajectories become examples; every field is a CLI flag."""

    criteria: Literal["all", "better", "best", "success"] = field(
        default="all", metadata={"help": "Which actions to keep: all | better | best | success."}
    )
    weighting: Literal["rwr", "awr", "uniform"] = field(
        default="rwr", metadata={"help": "Example weight: rwr exp(r/tau) | awr | uniform."}
    )
    tau: float = field(default=0.4, metadata={"help": "Temperature of exp(r/tau)."})
    include_candidates: bool = field(
        default=False,
        metadata={"help": "Make an example of every scored candidate, not only the chosen one."},
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

    def __post_init__(self) -> None:
        if self.criteria not in CRITERIA:
            raise ValueError(f"criteria must be one of {CRITERIA}, got {self.criteria!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")


@dataclass
class BuildStats:
    """Counts of what happened to the input, for the CLI's summary."""

    trajectories: int = 0
    actions: int = 0  # actions considered (chosen ones, or all candidates)
    kept_by_criteria: int = 0
    duplicates: int = 0
    zero_weight: int = 0
    empty_target: int = 0
    too_long: int = 0
    truncated: int = 0
    examples: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the rules --------------------------------------------------------------------------------


def keeps(criteria: str, reward: float, earlier: list[float]) -> bool:
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


def make_example(
    prompt_ids: list[int], target_ids: list[int], weight: float, **meta: Any
) -> Example:
    """One training row: the loss mask covers ``target_ids`` only."""
    return {
        "input_ids": [*prompt_ids, *target_ids],
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
        "weight": weight,
        **meta,
    }


# -- trajectories → examples -------------------------------------------------------------------


def build_examples(
    trajectories: Iterable[dict[str, Any]], config: BuildConfig, renderer: Any = None
) -> tuple[list[Example], BuildStats]:
    """Examples from trajectory records, filtered, weighted, de-duplicated and shuffled.

    ``renderer`` (a :class:`rise.prompts.ChatRenderer`) is needed only for trajectories stored
    without token ids; when None and ``config.tokenizer`` is set, one is built on demand.
    """
    stats = BuildStats()
    records = list(trajectories)
    stats.trajectories = len(records)
    lazy = _LazyRenderer(renderer, config.tokenizer)

    # awr needs every attempt at a problem before any weight is known: first pass.
    baseline: dict[str, float] = {}
    if config.weighting == "awr":
        attempts: dict[str, list[float]] = defaultdict(list)
        for record in records:
            for turn in record.get("turns", []):
                for cand in turn.get("candidates", []):
                    attempts[_problem_id(record)].append(rwr_weight(_reward(cand), config.tau))
        baseline = {pid: sum(ws) / len(ws) for pid, ws in attempts.items()}

    examples: list[Example] = []
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for record in records:
        for action in _actions(record, config.include_candidates, lazy):
            stats.actions += 1
            if not keeps(config.criteria, action["reward"], action["earlier"]):
                continue
            stats.kept_by_criteria += 1
            weight = _weight(config, action["reward"], baseline.get(action["problem_id"], 0.0))
            if weight <= 0.0:
                stats.zero_weight += 1
                continue
            if not action["target_ids"]:
                stats.empty_target += 1
                continue
            key = (tuple(action["prompt_ids"]), tuple(action["target_ids"]))
            if config.dedup and key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            fitted = truncate_left(action["prompt_ids"], action["target_ids"], config.max_length)
            if fitted is None:
                stats.too_long += 1
                continue
            if len(fitted[0]) < len(action["prompt_ids"]):
                stats.truncated += 1
            examples.append(
                make_example(
                    *fitted,
                    weight,
                    problem_id=action["problem_id"],
                    turn=action["turn"],
                    reward=action["reward"],
                    outcome=action["outcome"],
                    source=action["source"],
                )
            )
            outcome = action["outcome"] or "unknown"
            stats.by_outcome[outcome] = stats.by_outcome.get(outcome, 0) + 1
    if config.shuffle:
        random.Random(config.seed).shuffle(examples)
    stats.examples = len(examples)
    return examples, stats


def _weight(config: BuildConfig, reward: float, baseline: float) -> float:
    if config.weighting == "uniform":
        return 1.0
    w = rwr_weight(reward, config.tau)
    if config.weighting == "awr":
        # Clip at 0 (see the module docstring); the tiny epsilon absorbs float noise when every
        # attempt has the same reward, so such a problem gives exactly 0, not 1e-16.
        w = w - baseline
        return w if w > 1e-9 * max(baseline, 1.0) else 0.0
    return w


def _actions(
    record: dict[str, Any], include_candidates: bool, lazy: _LazyRenderer
) -> Iterator[dict[str, Any]]:
    """The (prompt, target, reward) actions of one trajectory, in turn order."""
    problem_id = _problem_id(record)
    turns = record.get("turns")
    if not isinstance(turns, list):
        raise ValueError(f"trajectory {problem_id!r} has no 'turns' list")
    # The chosen actions so far: the state a turn stored without ids is rebuilt from.
    episode = Episode(question=record.get("question", ""), context=list(record.get("context", [])))
    rewards: list[float] = []  # of the chosen actions, turn by turn
    for t, turn in enumerate(turns):
        candidates = turn.get("candidates") or []
        chosen = turn.get("chosen", 0)
        if not candidates or not 0 <= chosen < len(candidates):
            raise ValueError(f"trajectory {problem_id!r} turn {t}: no candidate at 'chosen'")
        prompt_ids = turn.get("prompt_ids")
        if prompt_ids is None:
            # s_t token by token from the chosen earlier actions, exactly as the service does.
            prompt_ids = lazy.get(problem_id).next_prompt_ids(episode, turn["user_message"])
        earlier = list(rewards)
        picked = range(len(candidates)) if include_candidates else [chosen]
        for c in picked:
            cand = candidates[c]
            yield {
                "problem_id": problem_id,
                "turn": turn.get("index", t),
                "prompt_ids": list(prompt_ids),
                "target_ids": _target_ids(cand, lazy, problem_id)[0],
                "reward": _reward(cand),
                "outcome": cand.get("outcome"),
                "source": cand.get("source"),
                "earlier": earlier,
            }
        best = candidates[chosen]
        output_ids, eos = _target_ids(best, lazy, problem_id)
        episode.turns.append(
            Turn(
                index=t,
                user_message=turn.get("user_message", ""),
                prompt_ids=list(prompt_ids),
                output_ids=output_ids,
                text=best.get("text", ""),
                finish_reason="stop",
                ended_with_eos=eos,
            )
        )
        rewards.append(_reward(best))


def _target_ids(
    cand: dict[str, Any], lazy: _LazyRenderer, problem_id: str
) -> tuple[list[int], bool]:
    ids = cand.get("output_ids")
    if ids is not None:
        return list(ids), bool(cand.get("ended_with_eos", True))
    return lazy.get(problem_id).response_ids(cand.get("text", ""))


def _reward(cand: dict[str, Any]) -> float:
    if cand.get("reward") is not None:
        return float(cand["reward"])
    outcome = cand.get("outcome")
    if outcome in _OUTCOME_REWARD:
        return _OUTCOME_REWARD[outcome]
    raise ValueError(f"candidate has neither 'reward' nor a known 'outcome': {outcome!r}")


def _problem_id(record: dict[str, Any]) -> str:
    pid = record.get("problem_id")
    if pid is None:
        raise ValueError("trajectory has no 'problem_id'")
    return str(pid)


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


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a bad line raises ValueError naming the file and line."""
    for _, row in jsonl_rows(path):
        yield row


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSONL (parents created); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_trajectories(path: str | Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


def read_examples(path: str | Path) -> list[Example]:
    return list(read_jsonl(path))


def build(
    trajectories_path: str | Path | Iterable[str | Path],
    output_path: str | Path,
    config: BuildConfig | None = None,
) -> BuildStats:
    """Read trajectory file(s), build examples, write them to ``output_path``."""
    config = config or BuildConfig()
    paths = (
        [trajectories_path]
        if isinstance(trajectories_path, (str, Path))
        else list(trajectories_path)
    )
    records = [row for p in paths for row in read_jsonl(p)]
    examples, stats = build_examples(records, config)
    write_jsonl(examples, output_path)
    return stats
