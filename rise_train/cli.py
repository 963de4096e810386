"""``python -m rise_train``: prepare-model | collect | build | train | evaluate | iterate | report.

Commands are thin: read options (and a ``--config`` file, see :mod:`rise_train.config`), build
the library's config objects, make one call, print a summary. Heavy imports (torch, vLLM,
transformers) happen inside the commands so ``--help`` stays fast. Expected failures print one
``error:`` line and exit 2 (``RISE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import typer

from rise_train.config import friendly_errors, parse_assignments, resolve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train LLMs to correct their own answers over turns (RISE). "
    "Run `python -m rise_train COMMAND --help` for a command's options.",
)

SPEC_HELP = "Problems: gsm8k:<path> | math:<path> | jsonl:<path> | <path>.jsonl | hf:<name>."
Opt = typer.Option

# Shared options (Annotated aliases keep each command's signature readable).
Config = Annotated[Path | None, Opt(help="YAML/JSON file of option values (flags win).")]
Model = Annotated[
    str, Opt(help="Model folder, Hugging Face id, or 'default' (bundled SmolLM2-135M-Instruct).")
]
Seed = Annotated[int, Opt(help="Seed: problem shuffles, engine sampling, request seeds.")]
Limit = Annotated[int | None, Opt(help="Use at most this many problems.")]
Offset = Annotated[int, Opt(help="Skip this many problems first.")]
Shuffle = Annotated[bool, Opt(help="Shuffle the problems (seeded) before offset/limit.")]
Quiet = Annotated[bool, Opt("--quiet", help="No progress bars.")]
DataDir = Annotated[
    Path | None,
    Opt(help="Prepared models, engine caches [default: $RISE_DATA_DIR or ~/.cache/rise]."),
]
MaxModelLen = Annotated[int | None, Opt(help="Engine context window [default: 4096].")]
KvCache = Annotated[float | None, Opt(help="CPU KV cache in GiB [default: 1.0].")]
BlockSize = Annotated[int | None, Opt(help="KV block size, the prefix-cache unit.")]
MaxSeqs = Annotated[int | None, Opt(help="Sequences the engine batches at once [default: 64].")]
Turns = Annotated[int, Opt(help="Turns per trajectory (collection).")]
Samples = Annotated[
    str,
    Opt(help="Policy candidates per turn, comma-separated, the last repeats (RISE: 1,16)."),
]
Temperature = Annotated[float, Opt(help="Sampling temperature.")]
Temperatures = Annotated[
    str, Opt("--temperature", help="Collection temperature per turn, comma-separated.")
]
KeepGoing = Annotated[
    bool, Opt(help="Keep rolling out after a correct turn (the test-time condition).")
]
TopP = Annotated[float, Opt(help="Nucleus sampling top-p.")]
MaxTokens = Annotated[int, Opt(help="Max new tokens per turn.")]
WordRepeats = Annotated[int, Opt(help="Drop candidates repeating a word more often than this.")]
Concurrency = Annotated[int, Opt(help="Problems in flight at once.")]
Window = Annotated[int | None, Opt(help="Keep only the last k attempts in the prompt.")]
TeacherUrl = Annotated[str | None, Opt(help="OpenAI-compatible teacher base URL (…/v1).")]
TeacherModel = Annotated[str | None, Opt(help="Teacher model name.")]
TeacherSamples = Annotated[int, Opt(help="Teacher candidates per turn.")]
TeacherKey = Annotated[str | None, Opt(envvar="OPENAI_API_KEY", help="Teacher API key.")]
Criteria = Annotated[
    Literal["all", "better", "best", "success"], Opt(help="Which actions become examples.")
]
Weighting = Annotated[Literal["rwr", "awr", "uniform"], Opt(help="Example weights.")]
Tau = Annotated[float, Opt(help="Temperature of exp(r/tau).")]
Candidates = Annotated[bool, Opt(help="Train on every scored candidate, not only the chosen.")]
Target = Annotated[
    Literal["chosen", "dissimilar"],
    Opt(help="Correction target: the chosen action, or the correct one least like the attempt."),
]
FirstTurn = Annotated[
    Literal["full", "unit", "exclude"], Opt(help="Turn-1 targets: full weight | 1 | excluded.")
]
Bonus = Annotated[float, Opt(help="Progress bonus alpha: weight += alpha * (r_t - r_{t-1}).")]
Pairs = Annotated[
    Literal["none", "fix", "fix+keep"],
    Opt(help="Preference pairs against copying a wrong attempt (and for keeping a right one)."),
]
PairWeight = Annotated[float, Opt(help="Weight of each preference pair.")]
DedupTrajectory = Annotated[
    bool, Opt(help="Drop corrections repeating an earlier action or wrong answer.")
]
Lr = Annotated[float | None, Opt(help="Peak learning rate [default: 1e-5].")]
Epochs = Annotated[float | None, Opt(help="Epochs [default: 3].")]
MaxSteps = Annotated[int | None, Opt(help="Stop after this many optimizer steps.")]
Batch = Annotated[int | None, Opt(help="Rows per device per step [default: 4].")]
Accum = Annotated[int | None, Opt(help="Gradient accumulation steps [default: 4].")]
MaxLength = Annotated[int | None, Opt(help="Max tokens per example [default: 2048].")]
Lora = Annotated[bool | None, Opt(help="Train a LoRA adapter (merged on save).")]
TrainArgs = Annotated[
    list[str] | None,
    Opt("--train-arg", help="Any TrainConfig/TrainingArguments field as KEY=VALUE (repeat)."),
]


# -- option namespaces → library configs ----------------------------------------------------------


def _engine(o: SimpleNamespace) -> dict[str, Any]:
    keys = ("data_dir", "max_model_len", "kv_cache_gib", "block_size", "max_num_seqs")
    return {k: getattr(o, k) for k in keys if getattr(o, k, None) is not None}


def _settings(model: str, o: SimpleNamespace, seed: int = 0) -> Any:
    from rise.engine import EngineSettings

    return EngineSettings(model=model, seed=seed, **_engine(o))


def _problems(spec: str | None, flag: str, o: SimpleNamespace, limit: int | None) -> list:
    from rise_train.datasets import load_problems

    if not spec:
        raise typer.BadParameter(
            "is required (on the command line or in --config)", param_hint=flag
        )
    return load_problems(spec, limit=limit, offset=o.offset, shuffle=o.shuffle, seed=o.seed)


def _collect_config(o: SimpleNamespace, iteration: int = 0) -> Any:
    from rise_train.collect import CollectConfig, TeacherConfig

    teacher = None
    if o.teacher_url or o.teacher_model:
        if not (o.teacher_url and o.teacher_model):
            raise typer.BadParameter("a teacher needs both --teacher-url and --teacher-model")
        teacher = TeacherConfig(
            o.teacher_url, o.teacher_model, o.teacher_samples, o.teacher_api_key
        )
    from rise_train.collect import parse_schedule

    try:
        samples = parse_schedule(o.samples, int)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--samples") from None
    try:
        temperatures = parse_schedule(o.temperature, float)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--temperature") from None
    return CollectConfig(
        max_turns=o.turns, samples=samples, temperatures=temperatures, top_p=o.top_p,
        max_tokens=o.max_tokens, max_word_repeats=o.max_word_repeats, concurrency=o.concurrency,
        context_window=o.context_window, continue_after_correct=o.continue_after_correct,
        seed=o.seed, iteration=iteration, teacher=teacher,
    )  # fmt: skip


def _build_config(o: SimpleNamespace, **extra: Any) -> Any:
    from rise_train.build import BuildConfig

    return BuildConfig(
        criteria=o.criteria, weighting=o.weighting, tau=o.tau, target=o.target,
        first_turn=o.first_turn, progress_bonus=o.progress_bonus, pairs=o.pairs,
        pair_weight=o.pair_weight, include_candidates=o.include_candidates,
        dedup_trajectory=o.dedup_trajectory, seed=o.seed, **extra,
    )  # fmt: skip


def _train_overrides(o: SimpleNamespace) -> dict[str, Any]:
    flags = {
        "learning_rate": o.learning_rate, "num_train_epochs": o.epochs, "max_steps": o.max_steps,
        "per_device_train_batch_size": o.batch_size, "gradient_accumulation_steps": o.grad_accum,
        "max_length": o.max_length, "lora": o.lora,
    }  # fmt: skip
    return {**{k: v for k, v in flags.items() if v is not None}, **parse_assignments(o.train_args)}


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1, default=str))


# -- commands -------------------------------------------------------------------------------------


@app.command("prepare-model")
@friendly_errors
def prepare_model_cmd(model: Model = "default", data_dir: DataDir = None) -> None:
    """Make a local model folder (the bundled default is converted once) and print its path."""
    from rise.engine.models import prepare_model

    settings = _settings(model, SimpleNamespace(data_dir=data_dir))
    typer.echo(prepare_model(settings.model, settings.data_dir))


@app.command()
@friendly_errors
def collect(
    ctx: typer.Context,
    data: Annotated[str | None, Opt(help=SPEC_HELP)] = None,
    output: Annotated[Path, Opt(help="Trajectories JSONL (appended; resumable).")] = Path(
        "trajectories.jsonl"
    ),
    model: Model = "default",
    limit: Limit = None, offset: Offset = 0, shuffle: Shuffle = False, seed: Seed = 0,
    turns: Turns = 2, samples: Samples = "1,16", temperature: Temperatures = "1.0",
    top_p: TopP = 1.0, max_tokens: MaxTokens = 512, max_word_repeats: WordRepeats = 150,
    concurrency: Concurrency = 64, context_window: Window = None,
    continue_after_correct: KeepGoing = False,
    iteration: Annotated[int, Opt(help="Iteration number written into the records.")] = 0,
    teacher_url: TeacherUrl = None, teacher_model: TeacherModel = None,
    teacher_samples: TeacherSamples = 1, teacher_api_key: TeacherKey = None,
    data_dir: DataDir = None, max_model_len: MaxModelLen = None, kv_cache_gib: KvCache = None,
    block_size: BlockSize = None, max_num_seqs: MaxSeqs = None,
    config: Config = None, quiet: Quiet = False,
) -> None:  # fmt: skip
    """Roll out the model on problems, best-of-N (or teacher) per turn; write trajectories."""
    o = resolve(ctx)
    problems = _problems(o.data, "--data", o, o.limit)
    cfg = _collect_config(o, o.iteration)
    settings = _settings(o.model, o, o.seed)

    async def go() -> Any:
        from rise.engine import build_engine
        from rise_train.collect import collect as run_collect

        engine = build_engine(settings)
        try:
            return await run_collect(engine, problems, o.output, cfg, progress=not o.quiet)
        finally:
            await engine.close()

    _print_json(asyncio.run(go()).to_dict())


@app.command()
@friendly_errors
def build(
    ctx: typer.Context,
    trajectories: Annotated[list[Path] | None, Opt(help="Trajectory JSONL (repeat).")] = None,
    output: Annotated[Path, Opt(help="Examples JSONL.")] = Path("examples.jsonl"),
    criteria: Criteria = "all", weighting: Weighting = "rwr", tau: Tau = 0.4,
    target: Target = "chosen", first_turn: FirstTurn = "full", progress_bonus: Bonus = 0.0,
    pairs: Pairs = "none", pair_weight: PairWeight = 1.0, include_candidates: Candidates = False,
    dedup_trajectory: DedupTrajectory = True,
    dedup: Annotated[bool, Opt(help="Drop repeated (prompt, target) pairs.")] = True,
    shuffle: Annotated[bool, Opt(help="Shuffle the examples (seeded).")] = True,
    seed: Seed = 0, max_length: MaxLength = 2048,
    tokenizer: Annotated[str | None, Opt(help="Model folder for trajectories without ids.")] = None,
    config: Config = None,
) -> None:  # fmt: skip
    """Turn trajectories into reward-weighted training examples (and preference pairs)."""
    from rise_train.build import build as run_build

    o = resolve(ctx)
    if not o.trajectories:
        raise typer.BadParameter("give at least one file", param_hint="--trajectories")
    for path in o.trajectories:
        if not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="--trajectories")
    cfg = _build_config(
        o, dedup=o.dedup, shuffle=o.shuffle, max_length=o.max_length, tokenizer=o.tokenizer
    )
    stats = run_build(o.trajectories, o.output, cfg)
    _print_json(stats.to_dict())  # its "composition" is the data composition


@app.command()
@friendly_errors
def train(
    ctx: typer.Context,
    examples: Annotated[Path | None, Opt(help="Examples JSONL from `build`.")] = None,
    model: Model = "default",
    output_dir: Annotated[Path, Opt(help="Where the trained model is saved.")] = Path(
        "runs/rise-model"
    ),
    learning_rate: Lr = None, epochs: Epochs = None, max_steps: MaxSteps = None,
    batch_size: Batch = None, grad_accum: Accum = None, max_length: MaxLength = None,
    lora: Lora = None, seed: Seed = 0, train_args: TrainArgs = None,
    data_dir: DataDir = None, config: Config = None,
) -> None:  # fmt: skip
    """Reward-weighted SFT on built examples; saves a plain Hugging Face model folder."""
    o = resolve(ctx)
    if o.examples is None or not Path(o.examples).is_file():
        raise typer.BadParameter(f"no such examples file: {o.examples}", param_hint="--examples")
    overrides = {"seed": o.seed, **_train_overrides(o)}
    from rise.engine.models import prepare_model
    from rise_train.train import TrainConfig, fit

    settings = _settings(o.model, o)
    base = prepare_model(settings.model, settings.data_dir)
    cfg = TrainConfig(
        output_dir=str(o.output_dir), model_name_or_path=str(base), examples=str(o.examples),
        **overrides,
    )  # fmt: skip
    result = fit(cfg)
    _print_json({k: v for k, v in vars(result).items() if k != "log_history"})


GraderName = Literal["gsm8k", "math", "exact"]  # rise.answers.GRADER_NAMES


def _data_name(spec: str) -> str:
    """A held-out set's folder name: the file stem (``gsm8k:data/test.jsonl`` → ``test``)."""
    kind, sep, location = spec.partition(":")
    if sep and kind == "hf":
        return location.split(":")[0].rsplit("/", 1)[-1]
    return Path(location if sep and kind in ("gsm8k", "math", "jsonl") else spec).stem


def _eval_sets(o: SimpleNamespace) -> list[tuple[str, list]]:
    """(name, problems) per ``--data``, the grader override applied; fails before any engine."""
    from dataclasses import replace

    specs = [o.data] if isinstance(o.data, str) else list(o.data or [])
    if not specs:
        raise typer.BadParameter(
            "is required (on the command line or in --config)", param_hint="--data"
        )
    names = list(o.data_name or []) or [_data_name(s) for s in specs]
    if len(names) != len(specs):
        raise typer.BadParameter("give one name per --data", param_hint="--data-name")
    if len(set(names)) != len(names):
        raise typer.BadParameter(
            f"two held-out sets share a name: {names}", param_hint="--data-name"
        )
    sets = []
    for name, spec in zip(names, specs, strict=True):
        problems = _problems(spec, "--data", o, o.limit)
        if o.grader:
            problems = [replace(p, grader=o.grader) for p in problems]
        sets.append((name, problems))
    return sets


def _compare_reports(paths: list[Path] | None, data: str, several: bool) -> list[tuple[str, Any]]:
    """``--compare`` reports for one held-out set (with several: their ``<data>/`` subfolder)."""
    from rise_train.report import read_report

    out = []
    for path in paths or []:
        sub = Path(path) / data / "report.json"
        if several and not sub.is_file():
            continue
        out.append((Path(path).stem, read_report(sub if several else path)))
    return out


@app.command()
@friendly_errors
def evaluate(
    ctx: typer.Context,
    data: Annotated[
        list[str] | None, Opt(help=SPEC_HELP + " Repeat for several held-out sets.")
    ] = None,
    data_name: Annotated[
        list[str] | None, Opt(help="Name per --data (subfolder, table) [default: file stem].")
    ] = None,
    grader: Annotated[
        GraderName | None, Opt(help="Grade every problem with this grader [default: the data's].")
    ] = None,
    model: Model = "default",
    output_dir: Annotated[
        Path, Opt(help="report.json, episodes.jsonl, plots (one subfolder per --data if several).")
    ] = Path("runs/eval"),
    label: Annotated[str | None, Opt(help="Name in the report and plot.")] = None,
    compare: Annotated[
        list[Path] | None, Opt(help="Other evaluation folders/report.json to plot beside.")
    ] = None,
    limit: Limit = None, offset: Offset = 0, shuffle: Shuffle = False, seed: Seed = 0,
    turns: Annotated[int, Opt(help="Sequential turns N (m1@tN, p1@tN).")] = 5,
    parallel: Annotated[int, Opt(help="Parallel first-turn samples P (mP@t1).")] = 5,
    repeats: Annotated[int, Opt(help="Evaluation seeds: samples of every problem.")] = 1,
    ablation: Annotated[
        bool, Opt(help="Turn 2 after the own / a foreign / no wrong attempt.")
    ] = False,
    temperature: Temperature = 1.0, top_p: TopP = 1.0, max_tokens: MaxTokens = 512,
    context_window: Window = None, concurrency: Concurrency = 256,
    data_dir: DataDir = None, max_model_len: MaxModelLen = None, kv_cache_gib: KvCache = None,
    block_size: BlockSize = None, max_num_seqs: MaxSeqs = None,
    config: Config = None, quiet: Quiet = False,
) -> None:  # fmt: skip
    """m1@t1, m5@t1, m1@tN, p1@tN, flips, copy selectivity, exploration (95% CIs); JSON + plots."""
    from rise_train import report as rp
    from rise_train.evaluate import EvalConfig, run_evaluation
    from rise_train.metrics import paired_comparison

    o = resolve(ctx)
    sets = _eval_sets(o)
    several = len(sets) > 1
    cfg = EvalConfig(
        max_turns=o.turns, n_parallel=o.parallel, temperature=o.temperature, top_p=o.top_p,
        max_tokens=o.max_tokens, context_window=o.context_window, seed=o.seed,
        concurrency=o.concurrency, repeats=o.repeats, ablation=o.ablation,
    )  # fmt: skip
    settings = _settings(o.model, o, o.seed)
    name = o.label or Path(o.model).name
    others = {data: _compare_reports(o.compare, data, several) for data, _ in sets}

    table: list[tuple[str, Any]] = []
    table_data: list[str] = []

    def write(data: str, result: Any) -> None:
        """One held-out set's files and text, as soon as it is done."""
        out = Path(o.output_dir) / data if several else Path(o.output_dir)
        reports = [*others[data], (name, result.report)]
        report_path = rp.write_evaluation(result, out)
        plots = [
            rp.plot_accuracy_by_turn(reports, out / "accuracy_by_turn.png"),
            rp.plot_copy_by_turn(reports, out / "copy_by_turn.png"),
        ]
        table.extend(reports)
        table_data.extend([data] * len(reports))
        typer.echo((f"== {data} ==\n" if several else "") + rp.format_per_turn(result.report))
        typer.echo("\n" + rp.format_evidence(result.report) + "\n")
        for other_name, other in others[data]:
            paired = paired_comparison(other, result.report)
            if paired.get("problems"):
                typer.echo(rp.format_comparison(name, other_name, paired))
        typer.echo(f"report: {report_path}")
        typer.echo("\n".join(f"plot: {p}" for p in plots if p is not None) + "\n")

    async def go() -> None:
        from rise.engine import build_engine

        engine = build_engine(settings)
        try:
            for data, problems in sets:
                write(data, await run_evaluation(
                    engine, problems, cfg, label=name, progress=not o.quiet
                ))  # fmt: skip
        finally:
            await engine.close()

    asyncio.run(go())
    typer.echo(rp.format_table(table, table_data if several else None))


@app.command()
@friendly_errors
def iterate(
    ctx: typer.Context,
    train_data: Annotated[str | None, Opt(help="Training problems. " + SPEC_HELP)] = None,
    eval_data: Annotated[str | None, Opt(help="Held-out problems (else split from train).")] = None,
    heldout: Annotated[float, Opt(help="No --eval-data: held-out fraction (<1) or count.")] = 0.1,
    train_limit: Limit = None,
    eval_limit: Annotated[int | None, Opt(help="Use at most this many eval problems.")] = None,
    offset: Offset = 0, shuffle: Shuffle = False, seed: Seed = 0,
    iterations: Annotated[int, Opt(help="RISE iterations K.")] = 1,
    run_dir: Annotated[Path, Opt(help="Run directory (resumed if it exists).")] = Path("runs/rise"),
    model: Model = "default",
    turns: Turns = 2, samples: Samples = "1,16", temperature: Temperatures = "1.0",
    top_p: TopP = 1.0, max_tokens: MaxTokens = 512, max_word_repeats: WordRepeats = 150,
    concurrency: Concurrency = 64, context_window: Window = None,
    continue_after_correct: KeepGoing = False,
    teacher_url: TeacherUrl = None, teacher_model: TeacherModel = None,
    teacher_samples: TeacherSamples = 1, teacher_api_key: TeacherKey = None,
    criteria: Criteria = "all", weighting: Weighting = "rwr", tau: Tau = 0.4,
    target: Target = "chosen", first_turn: FirstTurn = "full", progress_bonus: Bonus = 0.0,
    pairs: Pairs = "none", pair_weight: PairWeight = 1.0, include_candidates: Candidates = False,
    dedup_trajectory: DedupTrajectory = True,
    learning_rate: Lr = None, epochs: Epochs = None, max_steps: MaxSteps = None,
    batch_size: Batch = None, grad_accum: Accum = None, max_length: MaxLength = None,
    lora: Lora = None, train_args: TrainArgs = None,
    eval_turns: Annotated[int, Opt(help="Evaluation turns N.")] = 5,
    eval_parallel: Annotated[int, Opt(help="Parallel first-turn samples P.")] = 5,
    eval_temperature: Annotated[float, Opt(help="Evaluation temperature.")] = 1.0,
    eval_base: Annotated[bool, Opt(help="Evaluate the base model too.")] = True,
    data_dir: DataDir = None, max_model_len: MaxModelLen = None, kv_cache_gib: KvCache = None,
    block_size: BlockSize = None, max_num_seqs: MaxSeqs = None,
    config: Config = None, quiet: Quiet = False,
) -> None:  # fmt: skip
    """Run K RISE iterations: collect → build → train → evaluate, with a manifest."""
    from rise_train.datasets import split_problems
    from rise_train.evaluate import EvalConfig
    from rise_train.iterate import DataSet, IterateConfig, format_run, run, spec_files

    o = resolve(ctx)
    train_problems = _problems(o.train_data, "--train-data", o, o.train_limit)
    if o.eval_data:
        eval_problems = _problems(o.eval_data, "--eval-data", o, o.eval_limit)
    else:
        count = o.heldout if o.heldout < 1 else int(o.heldout)
        train_problems, eval_problems = split_problems(train_problems, count, seed=o.seed)
        eval_problems = eval_problems[: o.eval_limit]
    cfg = IterateConfig(
        run_dir=str(o.run_dir), model=o.model, iterations=o.iterations, engine=_engine(o),
        collect=_collect_config(o), build=_build_config(o), train=_train_overrides(o),
        evaluate=EvalConfig(
            max_turns=o.eval_turns, n_parallel=o.eval_parallel, temperature=o.eval_temperature,
            top_p=o.top_p, max_tokens=o.max_tokens, context_window=o.context_window, seed=o.seed,
        ),
        evaluate_base=o.eval_base, progress=not o.quiet,
    )  # fmt: skip
    eval_spec = o.eval_data or f"{o.train_data} (held out)"
    manifest = run(
        cfg,
        DataSet(train_problems, o.train_data, spec_files(o.train_data)),
        DataSet(eval_problems, eval_spec, spec_files(o.eval_data or o.train_data)),
    )
    typer.echo(format_run(manifest))
    typer.echo(f"run: {o.run_dir}")


@app.command()
@friendly_errors
def report(
    path: Annotated[Path, typer.Argument(help="A run directory, or an evaluation report.json.")],
    as_json: Annotated[bool, Opt("--json", help="Print the raw manifest/report.")] = False,
) -> None:
    """Print a run's metrics table and stage times (or one evaluation report)."""
    from rise_train.iterate import MANIFEST, format_run, load_manifest
    from rise_train.report import format_per_turn, format_table, read_report

    if (path / MANIFEST).is_file():
        manifest = load_manifest(path)
        typer.echo(json.dumps(manifest, indent=1) if as_json else format_run(manifest))
        return
    if not (path.is_file() or (path / "report.json").is_file()):
        raise typer.BadParameter(
            f"{path} is neither a run directory nor a report", param_hint="PATH"
        )
    data = read_report(path)
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    typer.echo(format_table([(data["model"], data)]) + "\n\n" + format_per_turn(data))


def main() -> None:
    app()
