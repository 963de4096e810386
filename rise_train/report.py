"""An evaluation's files, figures and text: everything a person reads of a report.

Apart from the metrics so that reports already on disk can be read, plotted and compared
without an engine or the episodes, and so that old reports (before a metric existed) still
print: every formatter skips what a report does not hold.

Files in an evaluation folder: ``report.json`` (see :mod:`rise_train.metrics` for the keys),
``episodes.jsonl`` (every turn of every episode with its parallel samples, for audit) and, with
the context ablation, ``ablation.jsonl`` (one row per wrong first turn, its three turn-2s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rise_train.metrics import headline

if TYPE_CHECKING:
    from rise_train.evaluate import Evaluation

Reports = Sequence[tuple[str, dict[str, Any]]]

# -- files ----------------------------------------------------------------------------------------


def _without_prompt(turn: Any) -> dict[str, Any]:
    return {k: v for k, v in turn.to_dict().items() if k != "prompt_ids"}


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """``report.json``, ``episodes.jsonl`` and (ablation) ``ablation.jsonl`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "episodes.jsonl").open("w", encoding="utf-8") as f:
        for episode, extra in zip(evaluation.episodes, evaluation.parallel, strict=False):
            row = episode.to_dict()
            row["parallel"] = [_without_prompt(t) for t in extra]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if evaluation.ablation:
        with (out / "ablation.jsonl").open("w", encoding="utf-8") as f:
            for case in evaluation.ablation:
                f.write(json.dumps(case.to_dict(), ensure_ascii=False) + "\n")
    path = out / "report.json"
    path.write_text(json.dumps(evaluation.report, indent=1))
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    report: dict[str, Any] = json.loads(path.read_text())
    return report


# -- figures --------------------------------------------------------------------------------------


def error_bars(proportions: Sequence[dict[str, Any]]) -> list[list[float]]:
    """matplotlib's ``yerr`` (below, above) from Wilson intervals, never negative.

    At 0/n and n/n the bound equals the value only up to rounding (-1e-17), which matplotlib
    rejects.
    """
    below = [max(0.0, m["value"] - m["ci95"][0]) for m in proportions]
    above = [max(0.0, m["ci95"][1] - m["value"]) for m in proportions]
    return [below, above]


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_by_turn(reports: Reports, path: str | Path) -> Path:
    """One figure: per model, acc@tk with 95% CI bars, the running vote, and mP@t1 as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (label, report) in enumerate(reports):
        color = f"C{i}"
        rows = report["per_turn"]
        shift = 0.06 * (i - (len(reports) - 1) / 2)  # side by side, so the CI bars stay readable
        x = [r["turn"] + shift for r in rows]
        acc = [r["accuracy"]["value"] for r in rows]
        err = error_bars([r["accuracy"] for r in rows])
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
    return _save(fig, path)


def plot_copy_by_turn(reports: Reports, path: str | Path) -> Path | None:
    """Per model and turn k >= 2: P(same answer as turn k-1) given it was right (solid) or
    wrong (dashed), with 95% CI bars. None when no report has copy selectivity."""
    reports = [(n, r) for n, r in reports if any("copy_selectivity" in t for t in r["per_turn"])]
    if not reports:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, report) in enumerate(reports):
        rows = [r for r in report["per_turn"] if "copy_selectivity" in r]
        shift = 0.06 * (i - (len(reports) - 1) / 2)
        for given, style, marker in (("right", "-", "o"), ("wrong", "--", "s")):
            # a turn with no pair of that kind has no rate: left out, not drawn as 0
            points = [
                (r["turn"] + shift, r["copy_selectivity"][f"same_answer_given_{given}"])
                for r in rows
                if r["copy_selectivity"][f"same_answer_given_{given}"]["n"]
            ]
            if not points:
                continue
            m = [p for _, p in points]
            ax.errorbar(
                [x for x, _ in points], [p["value"] for p in m], yerr=error_bars(m),
                marker=marker, capsize=3, linestyle=style, color=f"C{i}",
                label=f"{label} | previous {given}",
            )  # fmt: skip
    ax.set_xticks(range(2, max(len(r["per_turn"]) for _, r in reports) + 1))
    ax.set_xlabel("turn k")
    ax.set_ylabel("same answer as turn k-1 (95% Wilson CI)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("copy selectivity: keep right answers, change wrong ones")
    return _save(fig, path)


# -- text -----------------------------------------------------------------------------------------


def _cell(m: dict[str, Any]) -> str:
    low, high = m["ci95"]
    return f"{m['value']:.3f} [{low:.2f},{high:.2f}] {m['count']}/{m['n']}"


def _short(m: dict[str, Any]) -> str:
    value = f"{m['value']:.2f}" if m["n"] else "-"
    return f"{value} ({m['count']}/{m['n']})"


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    )


def format_table(reports: Reports, data: Sequence[str] | None = None) -> str:
    """A plain-text table of the headline metrics, one row per model (and dataset: ``data``
    names each report's held-out set, in a column after the model)."""
    names = list(dict.fromkeys(n for _, r in reports for n in headline(r)))
    lines = [["model", *(["data"] if data is not None else []), *names]]
    for i, (label, report) in enumerate(reports):
        cells = [label, *([data[i]] if data is not None else [])]
        for name in names:
            m = report["metrics"].get(name)
            cells.append("-" if m is None else _cell(m))
        lines.append(cells)
    return _columns(lines)


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
    n = len(report["per_turn"])
    gain = report.get("sequential_gain")
    if gain:
        lines.append(format_paired(f"m1@t{n} - m1@t1", gain))
    matched = report.get("sequential_vs_parallel")
    parallel = [k for k in report.get("metrics", {}) if k.endswith("@t1") and k != "m1@t1"]
    if matched and parallel:
        lines.append(format_paired(f"m1@t{n} - {parallel[0]}", matched))
    return "\n".join(lines)


def format_paired(name: str, m: dict[str, Any]) -> str:
    """``name  +0.047 [-0.02,+0.11]  (5 better, 2 worse of 64)``."""
    low, high = m["ci95"]
    return (
        f"{name:<26} {m['value']:+.3f} [{low:+.2f},{high:+.2f}]  "
        f"({m['better']} better, {m['worse']} worse of {m['n']})"
    )


def format_comparison(name: str, other_name: str, paired: dict[str, Any]) -> str:
    """The lines of a :func:`~rise_train.metrics.paired_comparison` of ``name`` vs another."""
    lines = [f"{name} minus {other_name}, paired over {paired['problems']} problems:"]
    lines += ["  " + format_paired(k, v) for k, v in paired.items() if k != "problems"]
    return "\n".join(lines)


def format_copy_selectivity(report: dict[str, Any]) -> str:
    """Per turn k >= 2 and pooled: identical / same-answer rates given the previous turn right or
    wrong, and the edit ratio to the previous turn (mean, quartiles)."""
    if "copy_selectivity" not in report:
        return ""
    rows = [(str(r["turn"]), r["copy_selectivity"]) for r in report["per_turn"][1:]]
    rows.append(("2..N", report["copy_selectivity"]))
    lines = [["turn", "same text|right", "same text|wrong", "same answer|right",
              "same answer|wrong", "edit ratio mean [q1,med,q3]"]]  # fmt: skip
    for turn, c in rows:
        ratio = c["edit_ratio"]
        quartiles = ratio["quartiles"]
        spread = (
            "-"
            if quartiles is None
            else f"{ratio['mean']:.2f} [{', '.join(f'{q:.2f}' for q in quartiles)}]"
        )
        lines.append(
            [
                turn,
                _short(c["identical_given_right"]),
                _short(c["identical_given_wrong"]),
                _short(c["same_answer_given_right"]),
                _short(c["same_answer_given_wrong"]),
                spread,
            ]
        )
    histogram = report["copy_selectivity"]["edit_ratio"]["histogram"]["counts"]
    hist = " ".join(str(c) for c in histogram)
    return (
        "copy selectivity:\n" + _columns(lines) + f"\nedit ratio histogram (0..1, 10 bins): {hist}"
    )


def format_flips(report: dict[str, Any]) -> str:
    """Pooled flips: ``wrong->right 12, right->wrong 5 (2.40 : 1) over 256 transitions``."""
    flips = report.get("flips")
    if not flips:
        return ""
    ratio = "no right->wrong" if flips["ratio"] is None else f"{flips['ratio']:.2f} : 1"
    return (
        f"flips over turns 2..N: wrong->right {flips['wrong_to_right']}, right->wrong "
        f"{flips['right_to_wrong']} ({ratio}) of {flips['transitions']} transitions"
    )


def format_exploration(report: dict[str, Any]) -> str:
    """Sequential oracle vs parallel pass@P; distinct answers per episode, turns vs samples."""
    exploration = report.get("exploration")
    if not exploration:
        return ""
    passes = [f"{k} {_short(v)}" for k, v in exploration.items() if k != "distinct_answers"]
    distinct = exploration["distinct_answers"]
    text = (
        f"distinct answers per episode: {distinct['sequential']:.2f} over {distinct['turns']} turns"
    )
    if "parallel" in distinct:
        text += f", {distinct['parallel']:.2f} over {distinct['samples']} parallel samples"
    return "exploration: " + ", ".join(passes) + "\n" + text


def format_anchoring(report: dict[str, Any]) -> str:
    """Turn 2 against the independent first-turn samples, by turn 1's grade: keeping turn 1's
    answer, and being right."""
    anchoring = report.get("anchoring")
    if not anchoring:
        return ""

    def excess(m: dict[str, Any]) -> str:
        low, high = m["ci95"]
        return f"{100 * m['value']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points"

    lines = ["turn 2 vs the independent first-turn samples of the same problems:"]
    for given in ("wrong", "right"):
        row = anchoring[f"given_{given}"]
        line = (
            f"  after a {given} turn 1: keeps its answer {_short(row['turn2'])} vs samples "
            f"give it {_short(row['samples'])} (excess {excess(row['excess'])})"
        )
        if "turn2_correct" in row:
            line += (
                f"; right {_short(row['turn2_correct'])} vs samples "
                f"{_short(row['samples_correct'])} ({excess(row['correct_excess'])})"
            )
        lines.append(line)
    return "\n".join(lines)


def format_feedback(report: dict[str, Any]) -> str:
    """What the feedback providers said, and what the next turns did with the named slips."""
    feedback = report.get("feedback")
    if not feedback:
        return ""
    verdicts = "; ".join(
        f"{provider}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
        for provider, counts in feedback["verdicts"].items()
    )
    lines = [f"feedback verdicts: {verdicts}"]
    if feedback["slips_named"]:
        lines.append(
            f"named slips followed by a turn: {feedback['slips_named']} — fixed "
            f"{_short(feedback['slips_fixed'])}, repeated {_short(feedback['slips_repeated'])}, "
            f"dropped {_short(feedback['slips_dropped'])}; that next turn right "
            f"{_short(feedback['next_turn_right_after_slip'])}"
        )
    pooled = report.get("copy_selectivity", {})
    if "wrong_after_right" in pooled:
        lines.append(
            f"turns 2..N: right after a wrong turn {_short(pooled['right_after_wrong'])}, "
            f"wrong after a right turn {_short(pooled['wrong_after_right'])}"
        )
    return "\n".join(lines)


def format_ablation(report: dict[str, Any]) -> str:
    """Turn 2 after the own wrong attempt, a foreign attempt, or none; own-minus-other contrasts."""
    ablation = report.get("ablation")
    if not ablation:
        return ""
    lines = [["context", "n", "accuracy", "same as own attempt", "changed"]]
    for name in ("own", "foreign", "none"):
        c = ablation[name]
        lines.append(
            [name, str(c["n"]), _short(c["accuracy"]), _short(c["same_as_own_attempt"]),
             _short(c["changed"])]
        )  # fmt: skip
    width = max(map(len, ablation["paired"]), default=0)
    paired = [format_paired(k.ljust(width), v) for k, v in ablation["paired"].items()]
    header = f"turn-2 context ablation ({ablation['cases']} wrong first turns):"
    return "\n".join([header, _columns(lines), *paired])


def format_evidence(report: dict[str, Any]) -> str:
    """Every reviewer-facing section a report holds: copy selectivity, flips, exploration and
    the context ablation (empty for reports written before they existed)."""
    parts = [
        format_copy_selectivity(report),
        format_anchoring(report),
        format_feedback(report),
        format_flips(report),
        format_exploration(report),
        format_ablation(report),
    ]
    return "\n\n".join(p for p in parts if p)
