"""``python -m rise_train``: the commands of a RISE training run (see ``--help``).

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

from rise.cli import PromptsOption, PromptsOverrideOption
from rise.engine.config import EngineSettings
from rise_train.build import BuildConfig
from rise_train.collect import CollectConfig, TeacherConfig
from rise_train.config import friendly_errors, parse_assignments, resolve
from rise_train.evaluate import EvalConfig
from rise_train.options import Options, with_options
from rise_train.train_options import TrainOptions

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
TrainArgs = Annotated[
    list[str] | None,
    Opt("--train-arg", help="Any TrainConfig/TrainingArguments field as KEY=VALUE (repeat)."),
]


# -- options generated from the library's configs (rise_train/options.py) ------------------------

# Options the study added and kept only because docs/EXPERIMENTS.md runs them (its section "How
# the training options came to be" says which run needs which); none is part of RISE's recipe.
EXPERIMENTAL = "Experimental (docs/EXPERIMENTS.md)"

ENGINE = Options(
    EngineSettings,
    ("data_dir", "max_model_len", "kv_cache_gib", "block_size", "max_num_seqs"),
    optional=True,
    panel="Engine",
)
COLLECT = Options(
    CollectConfig,
    ("max_turns:turns", "samples", "temperatures:temperature", "top_p", "max_tokens",
     "max_word_repeats", "concurrency", "context_window", "continue_after_correct", "feedback",
     "solution_teacher"),
    panel="Collection",
)  # fmt: skip
TEACHER = Options(
    TeacherConfig,
    ("base_url:teacher_url", "model:teacher_model", "samples:teacher_samples",
     "api_key:teacher_api_key"),
    optional=True,
    envvars={"teacher_api_key": "OPENAI_API_KEY"},
    panel="Collection",
)  # fmt: skip
BUILD = Options(
    BuildConfig,
    ("objective", "criteria", "tau", "include_candidates", "dedup_trajectory"),
    panel="Examples",
)
BUILD_EXPERIMENTAL = Options(
    BuildConfig,
    ("target", "first_turn", "progress_bonus", "pairs", "negative_scale", "mask_negative_stop",
     "copy_penalty", "max_corrections"),
    panel=EXPERIMENTAL,
)  # fmt: skip
BUILD_FILES = Options(
    BuildConfig, ("dedup", "shuffle", "max_length", "tokenizer"), panel="Examples"
)
TRAIN = Options(
    TrainOptions,
    ("learning_rate", "num_train_epochs:epochs", "max_steps",
     "per_device_train_batch_size:batch_size", "gradient_accumulation_steps:grad_accum",
     "max_length", "lora"),
    optional=True,  # given flags only: the rest stay TrainConfig's (or --train-arg's)
    panel="Training",
)  # fmt: skip
TRAIN_EXPERIMENTAL = Options(
    TrainOptions,
    ("policy_clip", "anchor_kl_coef:anchor_kl", "anchor_turns"),
    optional=True,
    panel=EXPERIMENTAL,
)
# `train` alone names its objective and anchor; `iterate` trains for --objective (the build's)
# and anchors to the base model (iterate.py).
TRAIN_ONLY = Options(TrainOptions, ("objective",), optional=True, panel="Training")
TRAIN_ANCHOR = Options(TrainOptions, ("anchor_model",), optional=True, panel=EXPERIMENTAL)
EVALUATE = Options(
    EvalConfig,
    ("max_turns:turns", "n_parallel:parallel", "repeats", "ablation", "temperature", "top_p",
     "max_tokens", "context_window", "feedback", "concurrency"),
    panel="Evaluation",
)  # fmt: skip
ITERATE_EVALUATE = Options(
    EvalConfig,
    ("max_turns:eval_turns", "n_parallel:eval_parallel", "temperature:eval_temperature",
     "repeats:eval_repeats", "ablation:eval_ablation", "top_p", "max_tokens", "context_window",
     "feedback"),
    panel="Evaluation",
)  # fmt: skip


# -- option namespaces → library configs ----------------------------------------------------------


def _settings(model: str, o: SimpleNamespace, seed: int = 0, options: Options = ENGINE) -> Any:
    return EngineSettings(model=model, seed=seed, **options.values(o))


def _prompts(o: SimpleNamespace, settings: Any) -> Any:
    """The prompts to run the model with: ``--prompts``, else the checkpoint's, else the paper's.

    A checkpoint trained by ``rise_train`` carries its prompt file; collecting from or
    evaluating it with other prompts needs ``--prompts-override`` (train/serve parity).
    """
    from rise.prompt_file import local_model_dir, resolve_prompts

    try:
        active = resolve_prompts(
            o.prompts,
            local_model_dir(str(settings.model), settings.data_dir),
            override=o.prompts_override,
        )
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--prompts") from None
    typer.echo(active.describe(), err=True)
    return active.prompts


def _problems(spec: str | None, flag: str, o: SimpleNamespace, limit: int | None) -> list:
    from rise_train.datasets import load_problems

    if not spec:
        raise typer.BadParameter(
            "is required (on the command line or in --config)", param_hint=flag
        )
    return load_problems(spec, limit=limit, offset=o.offset, shuffle=o.shuffle, seed=o.seed)


def _collect_config(o: SimpleNamespace, iteration: int = 0) -> CollectConfig:
    teacher = None
    given = TEACHER.values(o)
    if o.teacher_url or o.teacher_model:
        if not (o.teacher_url and o.teacher_model):
            raise typer.BadParameter("a teacher needs both --teacher-url and --teacher-model")
        teacher = TeacherConfig(**given)
    return CollectConfig(**COLLECT.values(o), seed=o.seed, iteration=iteration, teacher=teacher)


def _train_overrides(o: SimpleNamespace, *sets: Options) -> dict[str, Any]:
    """TrainConfig's fields given on the command line: ``sets``' options, then --train-arg."""
    given = {k: v for options in sets for k, v in options.values(o).items()}
    return {**given, **parse_assignments(o.train_args)}


def _build_config(o: SimpleNamespace, *sets: Options) -> BuildConfig:
    return BuildConfig(**{k: v for s in sets for k, v in s.values(o).items()}, seed=o.seed)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1, default=str))


# -- commands -------------------------------------------------------------------------------------


DATA_DIR = Options(EngineSettings, ("data_dir",), optional=True)


@app.command("prepare-model")
@friendly_errors
@with_options(DATA_DIR)
def prepare_model_cmd(model: Model = "default", **options: Any) -> None:
    """Make a local model folder (the bundled default is converted once) and print its path."""
    from rise.engine.models import prepare_model

    settings = _settings(model, SimpleNamespace(**options), options=DATA_DIR)
    typer.echo(prepare_model(settings.model, settings.data_dir))


@app.command()
@friendly_errors
@with_options(COLLECT, Options(CollectConfig, ("iteration",)), TEACHER, ENGINE)
def collect(
    ctx: typer.Context,
    data: Annotated[str | None, Opt(help=SPEC_HELP)] = None,
    output: Annotated[Path, Opt(help="Trajectories JSONL (appended; resumable).")] = Path(
        "trajectories.jsonl"
    ),
    model: Model = "default",
    limit: Limit = None, offset: Offset = 0, shuffle: Shuffle = False, seed: Seed = 0,
    shard: Annotated[
        str | None,
        Opt(help="INDEX/COUNT: only problems INDEX, INDEX+COUNT, ... (one engine of COUNT); "
            "put the shard files back together with `merge-shards`."),
    ] = None,
    prompts: PromptsOption = None, prompts_override: PromptsOverrideOption = False,
    config: Config = None, quiet: Quiet = False,
    **options: Any,
) -> None:  # fmt: skip
    """Roll out the model on problems, best-of-N (or teacher) per turn; write trajectories."""
    from rise_train.shards import parse_shard, shard_items

    o = resolve(ctx)
    try:
        part = None if o.shard is None else parse_shard(o.shard)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from None
    problems = _problems(o.data, "--data", o, o.limit)
    if part is not None:
        problems = shard_items(problems, *part)
    cfg = _collect_config(o, o.iteration)
    settings = _settings(o.model, o, o.seed)
    prompts = _prompts(o, settings)

    async def go() -> Any:
        from rise.engine import build_engine
        from rise.prompts import ChatRenderer
        from rise_train.collect import collect as run_collect

        engine = build_engine(settings)
        try:
            renderer = ChatRenderer(engine.tokenizer, prompts)
            return await run_collect(
                engine, problems, o.output, cfg, renderer=renderer, progress=not o.quiet
            )
        finally:
            await engine.close()

    _print_json(asyncio.run(go()).to_dict())


@app.command("merge-shards")
@friendly_errors
def merge_shards_cmd(
    shards: Annotated[
        list[Path], typer.Argument(help="Shard files of `collect --shard`, 0 first.")
    ],
    output: Annotated[Path, Opt(help="The merged trajectories JSONL.")] = Path(
        "trajectories.jsonl"
    ),
) -> None:
    """Put `collect --shard i/n` files back into one file, in the unsharded problem order."""
    from rise_train.shards import merge_shards

    for path in shards:
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="SHARDS")
    if output.resolve() in {p.resolve() for p in shards}:
        raise typer.BadParameter("must not be one of the shard files", param_hint="--output")
    merged = merge_shards(shards, output)
    _print_json({"trajectories": len(merged), "shards": len(shards), "output": str(output)})


@app.command()
@friendly_errors
@with_options(BUILD, BUILD_FILES, BUILD_EXPERIMENTAL)
def build(
    ctx: typer.Context,
    trajectories: Annotated[list[Path] | None, Opt(help="Trajectory JSONL (repeat).")] = None,
    output: Annotated[Path, Opt(help="Examples JSONL.")] = Path("examples.jsonl"),
    seed: Seed = 0,
    config: Config = None,
    **options: Any,
) -> None:
    """Turn trajectories into reward-weighted training examples (and preference pairs)."""
    from rise_train.build import build as run_build

    o = resolve(ctx)
    if not o.trajectories:
        raise typer.BadParameter("give at least one file", param_hint="--trajectories")
    for path in o.trajectories:
        if not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="--trajectories")
    cfg = _build_config(o, BUILD, BUILD_FILES, BUILD_EXPERIMENTAL)
    stats = run_build(o.trajectories, o.output, cfg)
    _print_json(stats.to_dict())  # its "composition" is the data composition


@app.command()
@friendly_errors
@with_options(TRAIN_ONLY, TRAIN, TRAIN_EXPERIMENTAL, TRAIN_ANCHOR, DATA_DIR)
def train(
    ctx: typer.Context,
    examples: Annotated[Path | None, Opt(help="Examples JSONL from `build`.")] = None,
    model: Model = "default",
    output_dir: Annotated[Path, Opt(help="Where the trained model is saved.")] = Path(
        "runs/rise-model"
    ),
    seed: Seed = 0,
    train_args: TrainArgs = None,
    config: Config = None,
    **options: Any,
) -> None:
    """Fine-tune on built examples with their objective; saves a plain Hugging Face model folder."""
    o = resolve(ctx)
    if o.examples is None or not Path(o.examples).is_file():
        raise typer.BadParameter(f"no such examples file: {o.examples}", param_hint="--examples")
    sets = (TRAIN_ONLY, TRAIN, TRAIN_EXPERIMENTAL, TRAIN_ANCHOR)
    overrides = {"seed": o.seed, **_train_overrides(o, *sets)}
    from rise.engine.models import prepare_model
    from rise_train.train import TrainConfig, fit

    settings = _settings(o.model, o, options=DATA_DIR)
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
@with_options(EVALUATE, ENGINE)
def evaluate(
    ctx: typer.Context,
    data: Annotated[
        list[str] | None, Opt(help=SPEC_HELP + " Repeat for several held-out sets.")
    ] = None,
    data_name: Annotated[
        list[str] | None, Opt(help="Name per --data (subfolder, table; default: file stem).")
    ] = None,
    grader: Annotated[
        GraderName | None, Opt(help="Grade every problem with this grader (default: the data's).")
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
    prompts: PromptsOption = None, prompts_override: PromptsOverrideOption = False,
    config: Config = None, quiet: Quiet = False,
    **options: Any,
) -> None:  # fmt: skip
    """m1@t1, m5@t1, m1@tN, p1@tN, flips, copy selectivity, anchoring (95% CIs); JSON + plots."""
    from rise_train import report as rp
    from rise_train.evaluate import run_evaluation
    from rise_train.metrics import paired_comparison

    o = resolve(ctx)
    sets = _eval_sets(o)
    several = len(sets) > 1
    cfg = EvalConfig(**EVALUATE.values(o), seed=o.seed)
    settings = _settings(o.model, o, o.seed)
    prompts = _prompts(o, settings)
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
        from rise.prompts import ChatRenderer

        engine = build_engine(settings)
        try:
            renderer = ChatRenderer(engine.tokenizer, prompts)
            for data, problems in sets:
                write(data, await run_evaluation(
                    engine, problems, cfg, label=name, renderer=renderer, progress=not o.quiet
                ))  # fmt: skip
        finally:
            await engine.close()

    asyncio.run(go())
    typer.echo(rp.format_table(table, table_data if several else None))


@app.command()
@friendly_errors
@with_options(
    COLLECT, TEACHER, BUILD, TRAIN, ITERATE_EVALUATE, ENGINE, BUILD_EXPERIMENTAL,
    TRAIN_EXPERIMENTAL,
)  # fmt: skip
def iterate(
    ctx: typer.Context,
    train_data: Annotated[str | None, Opt(help="Training problems. " + SPEC_HELP)] = None,
    eval_data: Annotated[
        list[str] | None,
        Opt(help="Held-out problems (else split from train); repeat for extra held-out sets."),
    ] = None,
    eval_name: Annotated[
        list[str] | None,
        Opt(help="Names of the extra held-out sets (the 2nd, 3rd --eval-data; default: stem)."),
    ] = None,
    heldout: Annotated[float, Opt(help="No --eval-data: held-out fraction (<1) or count.")] = 0.1,
    train_limit: Limit = None,
    eval_limit: Annotated[int | None, Opt(help="Use at most this many eval problems.")] = None,
    offset: Offset = 0, shuffle: Shuffle = False, seed: Seed = 0,
    iterations: Annotated[int, Opt(help="RISE iterations K.")] = 1,
    run_dir: Annotated[Path, Opt(help="Run directory (resumed if it exists).")] = Path("runs/rise"),
    model: Model = "default",
    train_args: TrainArgs = None,
    eval_base: Annotated[bool, Opt(help="Evaluate the base model too.")] = True,
    prompts: PromptsOption = None, prompts_override: PromptsOverrideOption = False,
    config: Config = None, quiet: Quiet = False,
    **options: Any,
) -> None:  # fmt: skip
    """Run K RISE iterations: collect → build → train → evaluate, with a manifest."""
    from rise_train.datasets import split_problems
    from rise_train.iterate import DataSet, IterateConfig, format_run, run, spec_files

    o = resolve(ctx)
    specs = [o.eval_data] if isinstance(o.eval_data, str) else list(o.eval_data or [])
    extra_names = list(o.eval_name or []) or [_data_name(s) for s in specs[1:]]
    if len(extra_names) != len(specs[1:]):
        raise typer.BadParameter(
            "give one name per extra --eval-data (the 2nd, 3rd, ...)", param_hint="--eval-name"
        )
    train_problems = _problems(o.train_data, "--train-data", o, o.train_limit)
    if specs:
        eval_problems = _problems(specs[0], "--eval-data", o, o.eval_limit)
    else:
        count = o.heldout if o.heldout < 1 else int(o.heldout)
        train_problems, eval_problems = split_problems(train_problems, count, seed=o.seed)
        eval_problems = eval_problems[: o.eval_limit]
    extra = [
        DataSet(_problems(spec, "--eval-data", o, o.eval_limit), spec, spec_files(spec), name)
        for name, spec in zip(extra_names, specs[1:], strict=True)
    ]
    cfg = IterateConfig(
        run_dir=str(o.run_dir), model=o.model, iterations=o.iterations, engine=ENGINE.values(o),
        collect=_collect_config(o), build=_build_config(o, BUILD, BUILD_EXPERIMENTAL),
        train=_train_overrides(o, TRAIN, TRAIN_EXPERIMENTAL),
        evaluate=EvalConfig(**ITERATE_EVALUATE.values(o), seed=o.seed),
        evaluate_base=o.eval_base, progress=not o.quiet,
        prompts=_prompts(o, _settings(o.model, o, o.seed)),
    )  # fmt: skip
    eval_spec = specs[0] if specs else f"{o.train_data} (held out)"
    manifest = run(
        cfg,
        DataSet(train_problems, o.train_data, spec_files(o.train_data)),
        DataSet(eval_problems, eval_spec, spec_files(specs[0] if specs else o.train_data)),
        extra,
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
