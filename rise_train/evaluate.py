"""The paper's evaluation (RISE.md §6): per-turn accuracy, voting, oracle, flips — with CIs.

Two layers. The metrics are pure functions of finished episodes (:func:`compute_metrics`), so
they are unit-tested on hand-made episodes. The runner (:func:`run_evaluation`) produces those
episodes on an engine: for each problem one sequential episode of ``max_turns`` turns with the
introspection prompt after every turn and no oracle (so it never stops early), plus
``n_parallel - 1`` extra independent first-turn samples; the sequential episode's first turn is
the n-th parallel sample, so m5@t1 and m1@t5 both use 5 samples per problem (compute-matched).

Metrics (N = max_turns, P = n_parallel); every one is a proportion of problems, reported with a
95% Wilson score interval (it stays inside [0, 1] and behaves at 0/n and n/n, unlike the
normal approximation):

- ``m1@t1``: the first turn is correct.
- ``mP@t1``: the majority vote over P parallel first-turn answers is correct.
- ``m1@tN``: the majority vote over the N sequential turns' answers is correct (no oracle; ties
  go to the latest turn, as :func:`rise.voting.majority_vote` does).
- ``p1@tN``: any of the N turns is correct (oracle).
- ``acc@tk``: turn k alone is correct, k = 1..N; plus per turn the vote and the oracle over
  turns 1..k, the flips from turn k-1 to k (wrong→right, right→wrong), and how many turns
  repeat the previous turn's text verbatim (a small model tuned on its own rollouts can learn
  to copy its last attempt, which freezes the vote: worth seeing next to the flips).
- ``sequential_gain``: m1@tN − m1@t1, as the mean of the per-problem differences with a paired
  95% interval (normal approximation on the differences; both metrics come from the same
  episodes, so an unpaired comparison of the two Wilson intervals would be far too wide).

An episode cut short (its prompt outgrew the context window) keeps its last answer for the
turns it could not take: that is the answer such a run would have returned.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rise.answers import get_grader
from rise.engine.base import Engine, SamplingConfig, derive_seed
from rise.episode import Episode, Outcome, Turn
from rise.loop import LoopConfig, LoopEvent, TurnEvent, TurnLoop, new_episode
from rise.prompts import ChatRenderer, PromptConfig
from rise.voting import majority_vote
from rise_train.datasets import Problem

Z95 = 1.959963984540054
CI_METHOD = "Wilson score interval, 95% (z = 1.96), per proportion of problems"

# -- statistics -----------------------------------------------------------------------------------


def wilson_interval(count: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``count`` successes out of ``n`` ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = count / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    count: int
    n: int

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.count, self.n)
        return {"value": self.value, "count": self.count, "n": self.n, "ci95": [low, high]}


def paired_mean(differences: Sequence[float], z: float = Z95) -> dict[str, Any]:
    """Mean of per-problem differences with a normal-approximation 95% interval.

    For paired comparisons on the same problems (turn N's vote vs turn 1, tuned vs base).
    ``better``/``worse`` count the problems whose difference is positive/negative.
    """
    n = len(differences)
    if n == 0:
        return {"value": 0.0, "n": 0, "better": 0, "worse": 0, "ci95": [0.0, 0.0]}
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / n  # of the differences themselves
    half = z * math.sqrt(variance / n)
    return {
        "value": mean,
        "n": n,
        "better": sum(1 for d in differences if d > 0),
        "worse": sum(1 for d in differences if d < 0),
        "ci95": [mean - half, mean + half],
    }


def paired_comparison(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Tuned minus base on the problems both reports share, paired by problem id.

    ``m1@t1`` and ``m1@tN`` are per-problem differences of correctness; ``sequential_gain`` is
    the difference of the per-problem gains (m1@tN − m1@t1) — RISE's claim is that it is > 0.
    Reports written before the per-problem flags existed give an empty dict.
    """
    if "per_problem" not in base or "per_problem" not in tuned:
        return {}

    def flags(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
        rows = report["per_problem"]
        return {
            i: (int(a), int(b))
            for i, a, b in zip(rows["ids"], rows["first_turn"], rows["final_vote"], strict=True)
        }

    b, t = flags(base), flags(tuned)
    shared = [i for i in t if i in b]
    n_turns = len(tuned["per_turn"])
    return {
        "problems": len(shared),
        "m1@t1": paired_mean([t[i][0] - b[i][0] for i in shared]),
        f"m1@t{n_turns}": paired_mean([t[i][1] - b[i][1] for i in shared]),
        "sequential_gain": paired_mean([(t[i][1] - t[i][0]) - (b[i][1] - b[i][0]) for i in shared]),
    }


def format_comparison(name: str, other_name: str, paired: dict[str, Any]) -> str:
    """The lines of a :func:`paired_comparison` of ``name`` against ``other_name``."""
    lines = [f"{name} minus {other_name}, paired over {paired['problems']} problems:"]
    lines += ["  " + format_paired(k, v) for k, v in paired.items() if k != "problems"]
    return "\n".join(lines)


def format_paired(name: str, m: dict[str, Any]) -> str:
    """``name  +0.047 [-0.02,+0.11]  (5 better, 2 worse of 64)``."""
    low, high = m["ci95"]
    return (
        f"{name:<26} {m['value']:+.3f} [{low:+.2f},{high:+.2f}]  "
        f"({m['better']} better, {m['worse']} worse of {m['n']})"
    )


# -- metrics from episodes ------------------------------------------------------------------------


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


def compute_metrics(
    episodes: Sequence[Episode],
    max_turns: int,
    parallel_answers: Sequence[Sequence[str | None]] | None = None,
) -> dict[str, Any]:
    """Every metric of the module docstring, as ``{"metrics": {...}, "per_turn": [...]}``.

    ``parallel_answers[i]`` holds the P first-turn answers for ``episodes[i]`` (sample order);
    without it the ``mP@t1`` metric is left out.
    """
    n = len(episodes)
    if parallel_answers is not None and len(parallel_answers) != n:
        raise ValueError("parallel_answers needs one list per episode")
    # correct[i][k]: turn k+1 of episode i (the last answer carried forward when cut short)
    correct: list[list[bool]] = []
    vote: list[list[bool]] = []
    for episode in episodes:
        turns = episode.turns[:max_turns]
        flags = [turn_is_correct(episode, t) for t in turns]
        flags += [flags[-1] if flags else False] * (max_turns - len(flags))
        correct.append(flags)
        answers = [t.answer for t in turns]
        answers += [answers[-1] if answers else None] * (max_turns - len(answers))
        vote.append([vote_is_correct(episode, answers[: k + 1]) for k in range(max_turns)])

    def count(pred: Any) -> Proportion:
        return Proportion(sum(1 for i in range(n) if pred(i)), n)

    per_turn = []
    for k in range(max_turns):
        row: dict[str, Any] = {
            "turn": k + 1,
            "accuracy": count(lambda i, k=k: correct[i][k]).to_dict(),
            "vote": count(lambda i, k=k: vote[i][k]).to_dict(),
            "oracle": count(lambda i, k=k: any(correct[i][: k + 1])).to_dict(),
        }
        if k > 0:
            row["wrong_to_right"] = count(
                lambda i, k=k: not correct[i][k - 1] and correct[i][k]
            ).to_dict()
            row["right_to_wrong"] = count(
                lambda i, k=k: correct[i][k - 1] and not correct[i][k]
            ).to_dict()
            row["identical_to_previous"] = count(
                lambda i, k=k: (
                    k < len(episodes[i].turns)
                    and episodes[i].turns[k].text == episodes[i].turns[k - 1].text
                )
            ).to_dict()
        per_turn.append(row)

    metrics: dict[str, Any] = {"m1@t1": per_turn[0]["accuracy"]}
    if parallel_answers is not None:
        p = max((len(a) for a in parallel_answers), default=0)
        metrics[f"m{p}@t1"] = count(
            lambda i: vote_is_correct(episodes[i], parallel_answers[i])
        ).to_dict()
    metrics[f"m1@t{max_turns}"] = per_turn[-1]["vote"]
    metrics[f"p1@t{max_turns}"] = per_turn[-1]["oracle"]
    for row in per_turn:
        metrics[f"acc@t{row['turn']}"] = row["accuracy"]
    first = [c[0] for c in correct]
    final_vote = [v[-1] for v in vote]
    gains = [int(b) - int(a) for a, b in zip(first, final_vote, strict=True)]
    return {
        "metrics": metrics,
        "per_turn": per_turn,
        "sequential_gain": paired_mean(gains),
        "per_problem": {
            "ids": [str(e.metadata.get("problem_id", e.id)) for e in episodes],
            "first_turn": first,
            "final_vote": final_vote,
        },
    }


def headline(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four headline metrics (m1@t1, mP@t1, m1@tN, p1@tN) of a report, in that order."""
    return {k: v for k, v in report["metrics"].items() if not k.startswith("acc@")}


# -- running an evaluation -------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """How the evaluation samples (RISE.md §5–§6)."""

    max_turns: int = 5
    n_parallel: int = 5  # first-turn samples for the mP@t1 baseline (1 = leave it out)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    context_window: int | None = None  # the paper's sliding window (k = 2) is an option
    seed: int = 0
    concurrency: int = 256  # problems in flight

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.n_parallel < 1 or self.concurrency < 1:
            raise ValueError("max_turns, n_parallel and concurrency must be >= 1")


@dataclass
class Evaluation:
    report: dict[str, Any]
    episodes: list[Episode]
    parallel: list[list[Turn]] = field(default_factory=list)  # extra first-turn samples


async def run_evaluation(
    engine: Engine,
    problems: Sequence[Problem],
    config: EvalConfig,
    *,
    label: str | None = None,
    renderer: ChatRenderer | None = None,
    progress: bool = True,
) -> Evaluation:
    """Sample every problem as the module docstring says and compute the report."""
    from tqdm.auto import tqdm

    renderer = renderer or ChatRenderer(engine.tokenizer, PromptConfig())
    loop = TurnLoop(engine, renderer)
    gate = asyncio.Semaphore(config.concurrency)
    total = len(problems) * (config.max_turns + config.n_parallel - 1)
    bar = tqdm(
        total=total, desc=f"evaluate {label or ''}".strip(), unit="turn", disable=not progress
    )
    start = time.perf_counter()

    def sampling(problem: Problem, turn: int, sample: int) -> SamplingConfig:
        seed = derive_seed(config.seed, "eval", problem.id, turn, sample)
        return SamplingConfig(config.temperature, config.top_p, config.max_tokens, seed=seed)

    def fresh(problem: Problem) -> Episode:
        return new_episode(
            problem.question,
            reference=problem.reference,
            grader=problem.grader,
            context=renderer.prompts.context(),
        )

    def count_turns(event: LoopEvent) -> None:
        if isinstance(event, TurnEvent):
            bar.update(1)

    async def sequential(problem: Problem) -> Episode:
        # The service's loop with no oracle and no early stop: N turns, or fewer when the
        # prompt outgrows the context; seeds derive from the problem's (seed, turn).
        episode = fresh(problem)
        episode.metadata["problem_id"] = problem.id
        turns = LoopConfig(
            max_turns=config.max_turns,
            context_window=config.context_window,
            sampling=sampling(problem, 0, 0),
            stream_tokens=False,
        )
        await loop.run_episode(episode, turns, count_turns)
        bar.update(config.max_turns - len(episode.turns))  # the turns a full context cut off
        return episode

    async def parallel(problem: Problem, sample: int) -> Turn:
        turn = await loop.take_turn(fresh(problem), sampling(problem, 0, sample))
        bar.update(1)
        return turn

    async def one(problem: Problem) -> tuple[Episode, list[Turn]]:
        async with gate:
            extra = [parallel(problem, j) for j in range(1, config.n_parallel)]
            episode, *turns = await asyncio.gather(sequential(problem), *extra)
            return episode, list(turns)  # type: ignore[arg-type]

    try:
        results = await asyncio.gather(*(one(p) for p in problems))
    finally:
        bar.close()
    wall = time.perf_counter() - start
    episodes = [e for e, _ in results]
    extras = [t for _, t in results]
    parallel_answers = (
        [[e.turns[0].answer if e.turns else None] + [t.answer for t in ts] for e, ts in results]
        if config.n_parallel > 1
        else None
    )
    report = compute_metrics(episodes, config.max_turns, parallel_answers)
    turns = [t for e in episodes for t in e.turns] + [t for ts in extras for t in ts]
    output_tokens = sum(t.output_tokens for t in turns)
    report = {
        "model": label or engine.model_name,
        "problems": len(problems),
        "max_turns": config.max_turns,
        "n_parallel": config.n_parallel,
        "ci": CI_METHOD,
        **report,
        "config": asdict(config),
        "tokens": {
            "output": output_tokens,
            "prompt": sum(t.prompt_tokens for t in turns),
            "cached": sum(t.cached_tokens for t in turns),
            "output_per_s": output_tokens / wall if wall > 0 else 0.0,
        },
        "wall_s": wall,
    }
    return Evaluation(report, episodes, extras)


# -- files ----------------------------------------------------------------------------------------


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """``report.json`` and ``episodes.jsonl`` (every turn, for audit) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "episodes.jsonl").open("w", encoding="utf-8") as f:
        for episode, extra in zip(evaluation.episodes, evaluation.parallel, strict=False):
            row = episode.to_dict()
            row["parallel"] = [
                {k: v for k, v in t.to_dict().items() if k != "prompt_ids"} for t in extra
            ]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    path = out / "report.json"
    path.write_text(json.dumps(evaluation.report, indent=1))
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    return json.loads(path.read_text())


def plot_accuracy_by_turn(reports: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """One figure: per model, acc@tk with 95% CI bars, the running vote, and mP@t1 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, report) in enumerate(reports):
        color = f"C{i}"
        rows = report["per_turn"]
        shift = 0.06 * (i - (len(reports) - 1) / 2)  # side by side, so the CI bars stay readable
        x = [r["turn"] + shift for r in rows]
        acc = [r["accuracy"]["value"] for r in rows]
        err = [
            [a - r["accuracy"]["ci95"][0] for a, r in zip(acc, rows, strict=True)],
            [r["accuracy"]["ci95"][1] - a for a, r in zip(acc, rows, strict=True)],
        ]
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, color=color, label=f"{label} acc@tk")
        vote = [r["vote"]["value"] for r in rows]
        ax.plot(x, vote, linestyle="--", marker="s", color=color, label=f"{label} vote over 1..k")
        for name, value in report["metrics"].items():
            if name.startswith("m") and name.endswith("@t1") and name != "m1@t1":
                ax.axhline(value["value"], linestyle=":", color=color, label=f"{label} {name}")
    ax.set_xlabel("turn k")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_xticks(range(1, max(len(r["per_turn"]) for _, r in reports) + 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("RISE: accuracy by turn")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cell(m: dict[str, Any]) -> str:
    low, high = m["ci95"]
    return f"{m['value']:.3f} [{low:.2f},{high:.2f}] {m['count']}/{m['n']}"


def format_table(reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A plain-text table of the headline metrics, one row per model."""
    names = list(dict.fromkeys(n for _, r in reports for n in headline(r)))
    header = ["model", *names]
    lines = [header]
    for label, report in reports:
        cells = [label]
        for name in names:
            m = report["metrics"].get(name)
            cells.append("-" if m is None else _cell(m))
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines
    )


def format_per_turn(report: dict[str, Any]) -> str:
    """Per turn: accuracy, the running vote and oracle, and the flips from the previous turn."""
    lines = ["turn  acc@tk  vote@1..k  oracle@1..k  wrong->right  right->wrong  same text"]
    keys = ("wrong_to_right", "right_to_wrong", "identical_to_previous")
    for row in report["per_turn"]:
        flips = [row[k]["count"] if k in row else "-" for k in keys]
        lines.append(
            f"{row['turn']:<5} {row['accuracy']['value']:<7.3f} {row['vote']['value']:<10.3f} "
            f"{row['oracle']['value']:<12.3f} {flips[0]!s:<13} {flips[1]!s:<13} {flips[2]!s}"
        )
    gain = report.get("sequential_gain")
    if gain:
        lines.append(format_paired(f"m1@t{len(report['per_turn'])} - m1@t1", gain))
    return "\n".join(lines)
