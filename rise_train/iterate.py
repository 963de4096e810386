"""RISE iterations (docs/RISE.md §4): collect → build → train → evaluate, K times, one run folder.

Iteration k collects with policy k (the base model for k = 0), builds weighted examples, and
fine-tunes policy k into model k, which is policy k+1. Every model is evaluated on the held-out
problems (the base once, then each trained model), all on one accuracy-by-turn figure.

The vLLM engine and the trainer do not share the machine well on CPU, so the engine lives only
for an "engine session" (evaluate the current policy, then collect with it) and is closed —
its engine-core process exits and frees its memory — before training; the next session starts a
fresh engine on the new weights. A run therefore costs K + 1 engine starts.

The run directory holds everything needed to audit or resume a run::

    manifest.json            config, data hashes, git commit, per-stage wall times, metrics
    problems/{train,eval}.jsonl   the exact problem subsets used
    eval/base/               report.json, episodes.jsonl
    iter-<k>/                trajectories.jsonl, examples.jsonl, model/, eval/
    accuracy_by_turn.png

The manifest is rewritten after every stage; rerunning the same command skips finished stages
(collection also resumes mid-way, training from its last checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rise.engine import DEFAULT_MODEL, EngineSettings
from rise.prompt_file import write_prompts
from rise.prompts import PromptConfig
from rise_train.build import BuildConfig
from rise_train.collect import CollectConfig
from rise_train.datasets import Problem, write_problems
from rise_train.evaluate import EvalConfig

MANIFEST = "manifest.json"
# Config keys a rerun may change without starting a new run.
_RESUMABLE_KEYS = ("iterations", "progress")


@dataclass
class DataSet:
    """Problems plus where they came from (for the manifest's hashes)."""

    problems: list[Problem]
    spec: str | None = None
    files: list[Path] = field(default_factory=list)
    name: str = "eval"  # extra held-out sets are reported under their name


@dataclass
class IterateConfig:
    """One RISE run: the model, K, and each stage's configuration."""

    run_dir: str = "runs/rise"
    model: str = DEFAULT_MODEL
    iterations: int = 1
    engine: dict[str, Any] = field(default_factory=dict)  # EngineSettings overrides
    collect: CollectConfig = field(default_factory=CollectConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    evaluate_base: bool = True
    progress: bool = True
    # The prompts of collection and evaluation (one renderer for both, as for serving).
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        # One run, one objective: the build's names the trainer's too (_train).
        if self.train.get("objective", self.build.objective) != self.build.objective:
            raise ValueError(
                f"the training objective {self.train['objective']!r} differs from the build's "
                f"{self.build.objective!r}: a run has one objective (--objective)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        teacher = data["collect"].get("teacher")
        if teacher:
            teacher["api_key"] = None  # never write a secret into the manifest
        data["engine"] = {k: str(v) if isinstance(v, Path) else v for k, v in self.engine.items()}
        # Through JSON, so tuples compare equal to the lists a resumed manifest holds.
        return json.loads(json.dumps(data, default=str))

    def engine_settings(self, model: str | Path) -> EngineSettings:
        return EngineSettings(model=str(model), seed=self.collect.seed, **self.engine)


# -- provenance ------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_files(spec: str) -> list[Path]:
    """The local file behind a problem spec (``gsm8k:path``, ``path.jsonl``), if any."""
    _, _, location = spec.partition(":")
    candidates = [Path(location), Path(spec)] if location else [Path(spec)]
    return [p for p in candidates if p.is_file()][:1]


def data_entry(data: DataSet) -> dict[str, Any]:
    subset = json.dumps([p.identity() for p in data.problems], sort_keys=True).encode()
    return {
        "spec": data.spec,
        "files": {str(p.resolve()): sha256_file(p) for p in data.files},
        "problems": len(data.problems),
        "problems_sha256": hashlib.sha256(subset).hexdigest(),
    }


def git_commit(repo: Path | None = None) -> dict[str, Any] | None:
    """HEAD and whether the tree is dirty, read-only (no index refresh); None outside git."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


# -- the manifest ----------------------------------------------------------------------------


def save_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(run_dir / MANIFEST)


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {run_dir}: not a run directory")
    return json.loads(path.read_text())


def open_manifest(
    run_dir: Path,
    config: IterateConfig,
    train: DataSet,
    evals: DataSet,
    extra_evals: Sequence[DataSet] = (),
) -> dict[str, Any]:
    """The run's manifest: a new one, or the existing one when config and data match."""
    fresh = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "config": config.to_dict(),
        "data": {
            "train": data_entry(train),
            "eval": data_entry(evals),
            **{f"eval:{d.name}": data_entry(d) for d in extra_evals},
        },
        "stages": [],
        "evaluations": {},
        "iterations": [],
    }
    path = run_dir / MANIFEST
    if not path.exists():
        return fresh
    old = json.loads(path.read_text())

    def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cfg.items() if k not in _RESUMABLE_KEYS}

    if comparable(old["config"]) != comparable(fresh["config"]) or old["data"] != fresh["data"]:
        raise ValueError(
            f"{run_dir} holds a run with a different configuration or data; "
            "pass a new --run-dir (or delete the old one)"
        )
    old["config"] = fresh["config"]
    return old


@contextlib.contextmanager
def stage(
    run_dir: Path, manifest: dict[str, Any], name: str, iteration: int | None
) -> Iterator[dict[str, Any]]:
    """Time a stage, record it, save the manifest; the yielded dict collects its outputs."""
    record: dict[str, Any] = {"stage": name, "iteration": iteration}
    start = time.perf_counter()
    yield record
    record["wall_s"] = round(time.perf_counter() - start, 3)
    manifest["stages"].append(record)
    if iteration is not None:
        manifest["iterations"][iteration].setdefault("wall_s", {})[name] = record["wall_s"]
    save_manifest(run_dir, manifest)


@contextlib.contextmanager
def counted(engine: Any, record: dict[str, Any]) -> Iterator[None]:
    """Record in a stage what the engine did during it: tokens generated and how much n-gram
    speculation drafted (``drafts``: request-steps that drafted; docs/VLLM_CPU.md)."""
    from rise.engine.base import engine_counters

    before = engine_counters(engine)
    yield
    after = engine_counters(engine)
    if after:
        record["engine"] = {k: after[k] - before.get(k, 0.0) for k in after}


# -- the stages ------------------------------------------------------------------------------


async def _engine_session(
    run_dir: Path,
    manifest: dict[str, Any],
    config: IterateConfig,
    policy: Path,
    evaluate_as: str | None,
    collect_iteration: int | None,
    train: DataSet,
    evals: Sequence[DataSet],
) -> None:
    """Start an engine on ``policy``; evaluate it and/or collect with it; close the engine.

    ``evals``: the main held-out set first, then the extra ones; each set this model has no
    report for yet is evaluated (a resumed run evaluates only what is missing).
    """
    from rise.engine import build_engine
    from rise.prompts import ChatRenderer
    from rise_train.collect import collect
    from rise_train.evaluate import run_evaluation
    from rise_train.report import write_evaluation

    with stage(run_dir, manifest, "engine_start", collect_iteration):
        engine = build_engine(config.engine_settings(policy))
    renderer = ChatRenderer(engine.tokenizer, config.prompts)
    try:
        for position, data in enumerate(evals if evaluate_as is not None else []):
            assert evaluate_as is not None
            main = position == 0
            done = evaluations(manifest, None if main else data.name)
            if evaluate_as in done:
                continue
            folder = "eval" if main else f"eval-{data.name}"
            out = run_dir / (
                f"{folder}/base" if evaluate_as == "base" else f"{evaluate_as}/{folder}"
            )
            name = f"evaluate:{evaluate_as}" + ("" if main else f":{data.name}")
            with stage(run_dir, manifest, name, None) as record, counted(engine, record):
                result = await run_evaluation(
                    engine, data.problems, config.evaluate, label=evaluate_as,
                    renderer=renderer, progress=config.progress,
                )  # fmt: skip
                report_path = write_evaluation(result, out)
                done[evaluate_as] = {
                    "model": str(policy),
                    "report": str(report_path.relative_to(run_dir)),
                    "metrics": result.report["metrics"],
                    "tokens": result.report["tokens"],
                }
                record["report"] = str(report_path.relative_to(run_dir))
        if collect_iteration is not None:
            k = collect_iteration
            path = run_dir / f"iter-{k}" / "trajectories.jsonl"
            cfg = replace(config.collect, iteration=k)  # the iteration salts request seeds
            with stage(run_dir, manifest, "collect", k) as record, counted(engine, record):
                stats = await collect(
                    engine, train.problems, path, cfg, renderer=renderer,
                    progress=config.progress,
                )  # fmt: skip
                entry = manifest["iterations"][k]
                entry["trajectories"] = str(path.relative_to(run_dir))
                entry["collect"] = stats.to_dict()
    finally:
        await engine.close()
        del engine
        gc.collect()


def _build(run_dir: Path, manifest: dict[str, Any], config: IterateConfig, k: int) -> None:
    from rise_train.build import build

    entry = manifest["iterations"][k]
    out = run_dir / f"iter-{k}" / "examples.jsonl"
    with stage(run_dir, manifest, "build", k):
        cfg = replace(config.build, seed=config.build.seed + k)
        stats = build(run_dir / entry["trajectories"], out, cfg)
        entry["examples"] = str(out.relative_to(run_dir))
        entry["build"] = stats.to_dict()


def _train(
    run_dir: Path, manifest: dict[str, Any], config: IterateConfig, k: int, policy: Path
) -> None:
    import torch

    from rise_train.train import TrainConfig, fit

    entry = manifest["iterations"][k]
    if not entry["build"]["examples"]:
        raise ValueError(
            f"iteration {k}: no training examples (build stats: {entry['build']}); "
            "collect more problems or relax --criteria"
        )
    out = run_dir / f"iter-{k}" / "model"
    # vLLM's client side may have cut torch's thread pool for serving; training wants every core.
    torch.set_num_threads(os.cpu_count() or 1)
    with stage(run_dir, manifest, "train", k):
        overrides: dict[str, Any] = {"seed": config.collect.seed + k}
        overrides["objective"] = config.build.objective
        overrides.update(config.train)
        overrides.setdefault("disable_tqdm", not config.progress)
        if overrides.get("anchor_kl_coef") and not overrides.get("anchor_model") and k > 0:
            overrides["anchor_model"] = manifest["base_model"]  # SCoRe: turn 1 stays the base's
        train_config = TrainConfig(
            output_dir=str(out),
            model_name_or_path=str(policy),
            examples=str(run_dir / entry["examples"]),
            resume_from_checkpoint="last",
            **overrides,
        )
        result = fit(train_config)
        # The checkpoint carries the prompts it was trained with, so serving it uses the same
        # ones unless an operator deliberately overrides them (train/serve parity).
        write_prompts(config.prompts, out)
        # Mid-training checkpoints (weights + optimiser state, ~3x the model) exist to resume a
        # crashed run; the stage is complete now, so they are only dead weight in the run dir.
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        entry["model"] = str(out.relative_to(run_dir))
        entry["train"] = {
            "global_step": result.global_step,
            "training_loss": result.training_loss,
            "losses": result.losses,
            "dropped_examples": result.dropped_examples,
        }
    del result
    gc.collect()


def plot_run(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    from rise_train.report import plot_accuracy_by_turn, read_report

    reports = [
        (label, read_report(run_dir / entry["report"]))
        for label, entry in manifest["evaluations"].items()
    ]
    if not reports:
        return None
    return plot_accuracy_by_turn(reports, run_dir / "accuracy_by_turn.png")


# -- the run ---------------------------------------------------------------------------------


def evaluations(manifest: dict[str, Any], extra: str | None = None) -> dict[str, Any]:
    """The manifest's reports by model label: the main held-out set's, or extra set ``extra``'s."""
    if extra is None:
        return manifest.setdefault("evaluations", {})  # type: ignore[no-any-return]
    return manifest.setdefault("extra_evaluations", {}).setdefault(extra, {})  # type: ignore[no-any-return]


def run(
    config: IterateConfig,
    train: DataSet,
    evals: DataSet,
    extra_evals: Sequence[DataSet] = (),
) -> dict[str, Any]:
    """Run (or resume) ``config.iterations`` RISE iterations; returns the manifest.

    Every model is evaluated on ``evals`` and on each of ``extra_evals`` (named held-out sets,
    e.g. out-of-template problems), each reported separately.
    """
    from rise.engine.models import prepare_model

    if not train.problems:
        raise ValueError("no training problems")
    if not evals.problems:
        raise ValueError("no evaluation problems")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [d.name for d in extra_evals]
    if len(set(names)) != len(names) or "eval" in names:
        raise ValueError(f"extra evaluation sets need distinct names other than 'eval': {names}")
    manifest = open_manifest(run_dir, config, train, evals, extra_evals)
    write_problems(train.problems, run_dir / "problems" / "train.jsonl")
    write_problems(evals.problems, run_dir / "problems" / "eval.jsonl")
    for data in extra_evals:
        write_problems(data.problems, run_dir / "problems" / f"eval-{data.name}.jsonl")
    all_evals = [evals, *extra_evals]

    def missing(label: str) -> bool:
        return any(
            label not in evaluations(manifest, None if i == 0 else d.name)
            for i, d in enumerate(all_evals)
        )

    start = time.perf_counter()
    settings = config.engine_settings(config.model)
    with stage(run_dir, manifest, "prepare_model", None):
        base = prepare_model(settings.model, settings.data_dir)
        manifest["base_model"] = str(base)

    policy = base
    for k in range(config.iterations):
        while len(manifest["iterations"]) <= k:
            manifest["iterations"].append({"iteration": len(manifest["iterations"])})
        entry = manifest["iterations"][k]
        entry["policy"] = str(policy)
        label = "base" if k == 0 else f"iter-{k - 1}"
        wants_eval = (k > 0 or config.evaluate_base) and missing(label)
        evaluate_as = label if wants_eval else None
        collect_k = None if "collect" in entry else k
        if evaluate_as is not None or collect_k is not None:
            session = _engine_session(
                run_dir, manifest, config, policy, evaluate_as, collect_k, train, all_evals
            )
            asyncio.run(session)
            plot_run(run_dir, manifest)
        if "build" not in entry:
            _build(run_dir, manifest, config, k)
        if "train" not in entry:
            _train(run_dir, manifest, config, k, policy)
        policy = run_dir / entry["model"]

    final = f"iter-{config.iterations - 1}"
    if missing(final):
        session = _engine_session(run_dir, manifest, config, policy, final, None, train, all_evals)
        asyncio.run(session)
    plot_run(run_dir, manifest)
    manifest["final_model"] = str(policy)
    manifest["wall_s_last_invocation"] = round(time.perf_counter() - start, 3)
    save_manifest(run_dir, manifest)
    return manifest


# -- reading a run ---------------------------------------------------------------------------


def format_run(manifest: dict[str, Any]) -> str:
    """The run's metrics table, then per-iteration data and stage wall times."""
    from rise_train.report import format_table

    reports = [(label, {"metrics": e["metrics"]}) for label, e in manifest["evaluations"].items()]
    lines = []
    if reports:
        lines += ["metrics (value [95% Wilson CI] count/n):", format_table(reports), ""]
    rows: list[Sequence[str]] = [("iter", "trajectories", "solved", "examples", "steps", "loss")]
    for entry in manifest["iterations"]:
        collect, build, train = (entry.get(k, {}) for k in ("collect", "build", "train"))
        losses = train.get("losses") or []
        rows.append(
            (
                str(entry["iteration"]),
                str(collect.get("problems", "-")),
                str(collect.get("solved", "-")),
                str(build.get("examples", "-")),
                str(train.get("global_step", "-")),
                f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += ["", "wall time per stage (s):"]
    lines += [
        f"  {s['stage']:<22} iter {s['iteration'] if s['iteration'] is not None else '-':<3} "
        f"{s['wall_s']:>9.1f}"
        for s in manifest["stages"]
    ]
    return "\n".join(lines)
