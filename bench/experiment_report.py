"""Tables of RISE experiment runs, read from their run directories (no engine).

For every run directory given: each evaluated model on each held-out set (the main one and
the extra ones, e.g. out-of-template) with the headline metrics, the sequential gain
m1@tN − m1@t1 with its paired interval, copy selectivity and flips; every tuned model's
difference from the base paired over problems; each iteration's data composition and training
loss. Also written to ``results.json`` in each run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rise.episode import Episode
from rise_train.build import format_composition
from rise_train.metrics import compute_metrics, paired_comparison
from rise_train.report import format_paired, read_report
from rise_train.stats import Proportion, paired_bootstrap

HEADLINE = ("m1@t1", "m5@t1", "m1@t5", "p1@t5", "p5@t1")  # p5@t1: any of 5 parallel right


def _reports(run_dir: Path, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{eval set: {model label: report}} for every report the manifest lists.

    Metrics are recomputed from the stored episodes with the current code, so a report written
    before a diagnostic existed (copy selectivity, pooled flips, bootstrap intervals, anchoring)
    has it.
    """
    sets = {"eval": manifest.get("evaluations", {}), **manifest.get("extra_evaluations", {})}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entries in sets.items():
        out[name] = {}
        for label, entry in entries.items():
            path = run_dir / entry["report"]
            if path.exists():
                out[name][label] = _recomputed(read_report(path), path.parent)
    return out


# "... = 16 ..." in a turn's working: a number after an equals sign (what the test bed's
# demonstration teaches the model to write before its answer line).
_RESULT = re.compile(r"=\s*\$?(-?\d+(?:\.\d+)?)")


def answer_follows_work(episodes: list[Episode]) -> dict[str, dict[str, Any]]:
    """Whether a turn's final answer is the result of its own last computation, turn 1 and
    later turns apart: the share of turns with an answer and a ``= N`` before the answer line
    whose answer equals that last N.

    Written for the arithmetic test bed (rise_train/arithmetic.py), whose demonstration ends its
    working with ``= N`` and then states the answer; it catches a model that learned to change
    the answer line without changing the work (E5, docs/EXPERIMENTS.md). Not a general grader.
    """
    counts = {"first": [0, 0], "later": [0, 0]}
    for episode in episodes:
        for turn in episode.turns:
            if turn.answer is None:
                continue
            work = turn.text.split("The answer is")[0].rsplit("\\boxed", 1)[0]
            results = _RESULT.findall(work)
            if not results:
                continue
            key = "first" if turn.index == 0 else "later"
            counts[key][1] += 1
            # an answer that is not a plain number does not follow "= N"
            counts[key][0] += _number(results[-1]) == _number(turn.answer)
    return {k: Proportion(c, n).to_dict() for k, (c, n) in counts.items()}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _episodes(folder: Path) -> tuple[list[Episode], list[list[str | None]]] | None:
    """The evaluation's episodes and, per episode, its P first-turn answers (turn 1 first)."""
    episodes_file = folder / "episodes.jsonl"
    if not episodes_file.exists():
        return None
    episodes, parallel = [], []
    for line in episodes_file.read_text().splitlines():
        row = json.loads(line)
        episode = Episode.from_dict(row)
        episodes.append(episode)
        first = episode.turns[0].answer if episode.turns else None
        parallel.append([first, *(t.get("answer") for t in row.get("parallel", []))])
    return episodes, parallel


def _recomputed(report: dict[str, Any], folder: Path) -> dict[str, Any]:
    stored = _episodes(folder)
    if stored is None:
        return report
    episodes, parallel = stored
    report = {**report, "answer_follows_work": answer_follows_work(episodes)}
    newest = (report.get("anchoring") or {}).get("given_wrong", {})  # the latest diagnostic
    current = "copy_selectivity" in report and (
        "turn2_correct" in newest or report.get("n_parallel", 1) < 2
    )
    if current:
        return report
    p = report.get("n_parallel", 1)
    fresh = compute_metrics(episodes, report["max_turns"], parallel if p > 1 else None)
    return {**report, **fresh}


def _metric(report: dict[str, Any], name: str) -> str:
    m = report.get("metrics", {}).get(name) or report.get("exploration", {}).get(name)
    if m is None:
        return "-"
    low, high = m["ci95"]
    return f"{100 * m['value']:.1f} [{100 * low:.0f},{100 * high:.0f}]"


def _paired(m: dict[str, Any] | None) -> str:
    """A paired difference in points with its interval: ``+1.0 [-2,+4]``."""
    if not m:
        return "-"
    low, high = m["ci95"]
    return f"{100 * m['value']:+.1f} [{100 * low:+.0f},{100 * high:+.0f}]"


def _selectivity(report: dict[str, Any]) -> str:
    sel = report.get("copy_selectivity")
    if not sel:
        return "-"
    wrong = sel.get("same_answer_given_wrong", {})
    right = sel.get("same_answer_given_right", {})
    return f"{100 * wrong.get('value', 0):.0f}% / {100 * right.get('value', 0):.0f}%"


def _anchoring(report: dict[str, Any], what: str = "") -> str:
    """After a wrong turn 1: turn 2 keeps its answer / the independent samples give it (or,
    with ``what="_correct"``, turn 2 is right / the samples are)."""
    row = (report.get("anchoring") or {}).get("given_wrong")
    if not row or f"turn2{what}" not in row:
        return "-"
    return (
        f"{100 * row[f'turn2{what}']['value']:.0f}% / {100 * row[f'samples{what}']['value']:.0f}%"
    )


def _follows(report: dict[str, Any]) -> str:
    """Answers equal to the turn's own last result: turn 1 / later turns."""
    row = report.get("answer_follows_work")
    if not row:
        return "-"
    return " / ".join(f"{100 * row[k]['value']:.0f}%" if row[k]["n"] else "-" for k in row)


def _flips(report: dict[str, Any]) -> str:
    flips = report.get("flips", {})
    if not flips:
        return "-"
    return f"{flips.get('wrong_to_right', 0)}:{flips.get('right_to_wrong', 0)}"


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """A run's manifest; for a folder ``--evaluate-model`` wrote (no manifest), one listing its
    evaluations (``eval`` and ``eval-<set>``) under the model label ``model``."""
    path = run_dir / "manifest.json"
    if path.exists():
        return json.loads(path.read_text())
    sets = sorted(p.parent.name for p in run_dir.glob("eval*/report.json"))
    if not sets:
        raise SystemExit(
            f"{run_dir}: neither a run directory (manifest.json) nor an evaluation folder "
            "(eval/report.json)"
        )
    entry = {s: {"model": {"report": f"{s}/report.json"}} for s in sets}
    return {
        "evaluations": entry.pop("eval", {}),
        "extra_evaluations": {s.removeprefix("eval-"): e for s, e in entry.items()},
    }


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """The results of one run directory (what results.json holds)."""
    manifest = read_manifest(run_dir)
    reports = _reports(run_dir, manifest)
    out: dict[str, Any] = {"run": str(run_dir), "sets": {}, "iterations": []}
    for name, by_label in reports.items():
        rows = {}
        for label, report in by_label.items():
            rows[label] = {
                "metrics": {
                    k: report["metrics"].get(k) or report.get("exploration", {}).get(k)
                    for k in HEADLINE
                },
                "sequential_gain": report.get("sequential_gain"),
                "sequential_vs_parallel": report.get("sequential_vs_parallel"),
                "copy_selectivity": report.get("copy_selectivity"),
                "anchoring": report.get("anchoring"),
                "answer_follows_work": report.get("answer_follows_work"),
                "flips": report.get("flips"),
                "distinct_answers": report.get("distinct_answers"),
                "ablation": report.get("ablation"),
            }
            if label != "base" and "base" in by_label:
                rows[label]["minus_base"] = paired_comparison(by_label["base"], report)
        out["sets"][name] = rows
    for entry in manifest.get("iterations", []):
        out["iterations"].append(
            {
                "iteration": entry["iteration"],
                "collect": entry.get("collect"),
                "build": entry.get("build"),
                "train": entry.get("train"),
            }
        )
    out["stages"] = manifest.get("stages", [])
    (run_dir / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def print_summary(run_dirs: list[Path]) -> None:
    """Print every run's tables (and write each run's results.json)."""
    header = ["run", "model", "set", *HEADLINE, "gain tN-t1", "tN vote - P samples",
              "same|wrong / same|right",
              "t1 wrong: t2 keeps / samples give", "t1 wrong: t2 right / samples right",
              "answer = own result t1 / later",
              "w>r:r>w"]  # fmt: skip
    rows = [header]
    details: list[str] = []
    for run_dir in run_dirs:
        result = summarize_run(run_dir)
        manifest = read_manifest(run_dir)
        reports = _reports(run_dir, manifest)
        for name, by_label in reports.items():
            for label, report in by_label.items():
                rows.append(
                    [run_dir.name, label, name, *(_metric(report, k) for k in HEADLINE),
                     _paired(report.get("sequential_gain")),
                     _paired(report.get("sequential_vs_parallel")), _selectivity(report),
                     _anchoring(report), _anchoring(report, "_correct"), _follows(report),
                     _flips(report)]
                )  # fmt: skip
        for name, by_label in result["sets"].items():
            for label, row in by_label.items():
                for key, paired in (row.get("minus_base") or {}).items():
                    if key != "problems":
                        details.append(
                            format_paired(f"{run_dir.name} {label}-base {name} {key}", paired)
                        )
        for it in result["iterations"]:
            build = it.get("build")
            if build and "composition" in build:
                details.append(
                    f"{run_dir.name} iteration {it['iteration']} " + format_composition(build)
                )
            train = it.get("train") or {}
            if train.get("losses"):
                losses = train["losses"]
                details.append(
                    f"{run_dir.name} iteration {it['iteration']} train: "
                    f"{train['global_step']} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print()
    print("\n".join(details))


def seed_mean(base: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Several training seeds of one recipe against a base, averaged per problem first: the
    seeds' mean m1@t1, m1@tN and sequential gain, each minus the base's, and the gain itself;
    paired percentile bootstraps over the problems all reports share (their ``per_problem``)."""

    def per_problem(report: dict[str, Any]) -> dict[str, tuple[float, float]]:
        rows = report["per_problem"]
        return dict(zip(rows["ids"], zip(rows["first_turn"], rows["final_vote"], strict=True),
                        strict=True))  # fmt: skip

    b, seeds = per_problem(base), [per_problem(r) for r in runs]
    ids = sorted(set(b).intersection(*seeds))

    def mean(i: str, k: int) -> float:
        return sum(s[i][k] for s in seeds) / len(seeds)

    gain = [mean(i, 1) - mean(i, 0) for i in ids]
    return {
        "gain": paired_bootstrap(gain),
        "gain_minus_base_gain": paired_bootstrap(
            [g - (b[i][1] - b[i][0]) for g, i in zip(gain, ids, strict=True)]
        ),
        "m1@t1_minus_base": paired_bootstrap([mean(i, 0) - b[i][0] for i in ids]),
        "m1@tN_minus_base": paired_bootstrap([mean(i, 1) - b[i][1] for i in ids]),
    }


def print_seed_mean(base: Path, runs: list[Path]) -> None:
    """``rise_experiment.py --seed-mean BASE REPORT...``: :func:`seed_mean` of report files."""
    result = seed_mean(read_report(base), [read_report(r) for r in runs])
    print(f"{len(runs)} seeds against {base}:")
    for name, paired in result.items():
        print(format_paired(f"  {name}", paired))
