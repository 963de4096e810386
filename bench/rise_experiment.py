"""The RISE self-correction study on the bundled SmolLM2-135M-Instruct (docs/EXPERIMENTS.md).

Not a CI test. One command per configuration; each is an ordinary ``rise_train.iterate`` run
directory (manifest, trajectories, examples, models, reports), so rerunning the same command
resumes it where it stopped::

    # E1: RISE's sample schedule (1 attempt, best-of-16 corrections) + de-duplication
    python bench/rise_experiment.py --run-dir runs/e1
    # E2: the same trajectories, built with dissimilar targets, unit-weight turn 1 and
    #     copy-as-negative preference pairs (no new collection, the base evaluation reused)
    python bench/rise_experiment.py --run-dir runs/e2 --variant-of runs/e1 \\
        --target dissimilar --first-turn unit --pairs fix
    # the single-turn control: turn-1-only rejection sampling with E1's sampled tokens
    python bench/rise_experiment.py --run-dir runs/control --control-of runs/e1
    # E4: on-policy cycles with signed advantages (SCoRe-like): each iteration collects with
    #     the latest model, weights every candidate by its advantage in its state (negative
    #     for the worse ones), trains the clipped sequence ratio, and anchors every turn to the
    #     base (the pilots' recipe, docs/EXPERIMENTS.md "E4 pilot 5"; not yet a working one)
    python bench/rise_experiment.py --run-dir runs/e4 --base-of runs/e1 --iterations 2 \\
        --samples 2,8 --weighting advantage --progress-bonus 0 --mask-negative-stop \\
        --policy-clip 0.2 --anchor-kl 0.1 --anchor-turns all
    # the tables of several runs side by side (no engine)
    python bench/rise_experiment.py --summarize runs/e1 runs/e2 runs/control
    # a trained checkpoint on a larger held-out set, evaluated exactly as inside a run
    python bench/rise_experiment.py --evaluate-model runs/e4p5s1/iter-0/model \\
        --run-dir runs/e4p5s1/eval400 --oot 0 --eval-temperature 0.7 --max-tokens 128 \\
        --dtype float32

Problems are generated (``rise_train/arithmetic.py``): ``--train`` training and ``--eval``
held-out problems of one template family, plus ``--oot`` out-of-template held-out problems
(other sentences, names, objects). Format noise is removed with a one-shot demonstration
whose answer line is fixed (``The answer is \\boxed{N}.``), as RISE's own prompt does; the
gsm8k grader reads ``\\boxed{}`` or else the last number.

``--variant-of RUN`` copies RUN's base evaluations and iteration-0 trajectories into the new
run directory (the collection settings must match) and builds, trains and evaluates from them:
one change at a time at the price of a build + train + evaluation. ``--control-of RUN`` trains
the compute-matched single-turn control: one turn, as many samples per problem as RUN's
collection drew on average (so the same sampled tokens, within a few percent — printed),
rejection sampling (only correct samples, uniform weight).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/experiment_report.py

from rise.prompts import PromptConfig
from rise_train.arithmetic import DEMONSTRATION, make_problems
from rise_train.build import BuildConfig
from rise_train.collect import CollectConfig, parse_schedule
from rise_train.evaluate import EvalConfig
from rise_train.iterate import (
    MANIFEST,
    DataSet,
    IterateConfig,
    format_run,
    load_manifest,
    open_manifest,
    run,
    save_manifest,
)
from rise_train.objectives import ObjectiveName

SHORT_INTROSPECTION = "The answer is incorrect. Please try again."  # the paper's text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/rise-experiment", help="output directory")
    p.add_argument("--model", default="default", help="base model (default: bundled SmolLM2)")
    p.add_argument("--iterations", type=int, default=1, help="RISE iterations (K)")
    p.add_argument("--train", type=int, default=500, help="training problems")
    p.add_argument("--eval", type=int, default=400, help="held-out problems")
    p.add_argument("--oot", type=int, default=200, help="out-of-template held-out problems")
    p.add_argument("--two-step", type=float, default=0.3, help="fraction of two-step problems")
    p.add_argument("--samples", default="1,16", help="policy candidates per turn (RISE: 1,16)")
    p.add_argument("--turns", type=int, default=2, help="turns per training rollout (T)")
    p.add_argument("--collect-temperature", default="1.0", help="per turn (RISE: 1.0)")
    p.add_argument("--continue-after-correct", action="store_true")
    p.add_argument("--eval-turns", type=int, default=5, help="sequential turns at evaluation")
    p.add_argument("--eval-parallel", type=int, default=5, help="parallel first-turn samples")
    p.add_argument("--eval-temperature", type=float, default=1.0)
    p.add_argument("--eval-window", type=int, default=None, help="evaluation context window")
    p.add_argument(
        "--feedback", default="fixed",
        help="what follows each attempt, in collection and evaluation: fixed (RISE's prompt) | "
        "oracle | calculator | a verifier named in RISE_VERIFIERS",
    )  # fmt: skip
    p.add_argument(
        "--eval-feedback", default=None, help="the evaluation's feedback (default: --feedback)"
    )
    p.add_argument(
        "--solution-teacher", action="store_true",
        help="a correction turn best-of-N could not fix gets the problem's worked solution",
    )  # fmt: skip
    p.add_argument("--eval-repeats", type=int, default=1, help="evaluation seeds per problem")
    p.add_argument("--ablation", action="store_true", help="turn-2 context ablation")
    p.add_argument("--max-tokens", type=int, default=160, help="tokens per turn")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="no demonstration")
    p.add_argument(
        "--introspection", choices=["rise", "short"], default="rise",
        help="rise: '... Please try again. Here's the question: {q}'; short: the paper's text",
    )  # fmt: skip
    p.add_argument("--criteria", default="all", choices=["all", "better", "best", "success"])
    p.add_argument(
        "--weighting", default="rwr", choices=["rwr", "awr", "uniform", "advantage"],
        help="the objective: rwr | awr | uniform (objective sft) | advantage; with --pairs, "
        "objective preference",
    )  # fmt: skip
    p.add_argument("--target", default="chosen", choices=["chosen", "dissimilar"])
    p.add_argument("--first-turn", default="full", choices=["full", "unit", "exclude"])
    p.add_argument("--progress-bonus", type=float, default=0.0)
    p.add_argument(
        "--negative-scale", type=float, default=1.0,
        help="multiplier of negative advantages (--weighting advantage)",
    )  # fmt: skip
    p.add_argument(
        "--mask-negative-stop", action="store_true",
        help="negative examples leave their final stop token out of the loss",
    )  # fmt: skip
    p.add_argument(
        "--copy-penalty", type=float, default=0.0,
        help="a correction repeating an earlier wrong attempt counts as reward r - c "
        "(--weighting advantage)",
    )  # fmt: skip
    p.add_argument(
        "--max-corrections", type=int, default=None,
        help="at most N correction examples, drawn uniformly (seeded): a fixed budget",
    )  # fmt: skip
    p.add_argument("--pairs", default="none", choices=["none", "fix", "fix+keep"])
    p.add_argument("--no-dedup-trajectory", dest="dedup_trajectory", action="store_false")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1536, help="tokens per training example")
    p.add_argument("--pref-beta", type=float, default=0.1)
    p.add_argument(
        "--policy-clip", type=float, default=0.0, help="epsilon for signed advantages (E4)"
    )
    p.add_argument(
        "--anchor-kl", type=float, default=0.0, help="turn-1 penalty towards the base (E4)"
    )
    p.add_argument(
        "--anchor-turns", default="first", choices=["first", "all"],
        help="rows the anchor penalty holds: first answers (SCoRe) or every example",
    )  # fmt: skip
    p.add_argument("--train-seed", type=int, default=0, help="seed of training only")
    p.add_argument("--seed", type=int, default=0, help="problems and sampling")
    p.add_argument("--dtype", default="bfloat16", help="engine dtype (every model the same)")
    p.add_argument("--data-dir", default=None, help="model cache (default: $RISE_DATA_DIR)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-gib", type=float, default=3.0)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument(
        "--compile", action="store_true",
        help="compile the engine (torch.compile; faster, another start-up). Off: every run "
        "of the study so far ran eager, and the models of a comparison run in one mode",
    )  # fmt: skip
    p.add_argument("--variant-of", default=None, help="reuse this run's collection")
    p.add_argument("--control-of", default=None, help="single-turn control matched to this run")
    p.add_argument("--base-of", default=None, help="reuse this run's base evaluations only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--evaluate-model", default=None, metavar="MODEL",
        help="only evaluate this checkpoint on the held-out sets, into --run-dir",
    )  # fmt: skip
    p.add_argument(
        "--seed-mean", nargs="+", default=None, metavar="REPORT",
        help="only print several seeds' per-problem mean against a base: BASE_REPORT "
        "SEED_REPORT... (report.json files; paired bootstrap over problems)",
    )  # fmt: skip
    p.add_argument(
        "--summarize", nargs="*", default=None, metavar="RUN",
        help="only print (and write results.json for) these existing run directories",
    )  # fmt: skip
    return p.parse_args(argv)


def prompts(args: argparse.Namespace) -> PromptConfig:
    kwargs: dict[str, Any] = {}
    if args.demo:
        kwargs["demonstrations"] = (DEMONSTRATION,)
    if args.introspection == "short":
        kwargs["introspection"] = SHORT_INTROSPECTION
    return PromptConfig(**kwargs)


def datasets(args: argparse.Namespace) -> tuple[DataSet, DataSet, list[DataSet]]:
    train = make_problems(args.train, args.seed, "train", args.two_step, set())
    held = make_problems(args.eval, args.seed, "eval", args.two_step, {p.question for p in train})
    oot = make_problems(args.oot, args.seed, "eval", args.two_step, set(), family="oot")
    spec = f"generated arithmetic (seed {args.seed}, two-step {args.two_step})"
    extra = [DataSet(oot, spec + " out-of-template", name="oot")] if oot else []
    return DataSet(train, spec + " train"), DataSet(held, spec + " eval"), extra


def iterate_config(args: argparse.Namespace) -> IterateConfig:
    engine: dict[str, Any] = {
        "max_model_len": args.max_model_len, "kv_cache_gib": args.kv_cache_gib,
        "dtype": args.dtype, "max_num_seqs": args.max_num_seqs,
        "enforce_eager": not args.compile,
    }  # fmt: skip
    if args.data_dir:
        engine["data_dir"] = Path(args.data_dir)
    train_args = {
        "learning_rate": args.lr, "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum, "max_length": args.max_length,
        "save_strategy": "no", "seed": args.train_seed, "pref_beta": args.pref_beta,
    }  # fmt: skip
    name = objective(args)
    if name == "advantage":
        train_args.update(
            policy_clip=args.policy_clip, anchor_kl_coef=args.anchor_kl,
            anchor_turns=args.anchor_turns,
        )  # fmt: skip
    return IterateConfig(
        run_dir=args.run_dir, model=args.model, iterations=args.iterations, engine=engine,
        collect=CollectConfig(
            max_turns=args.turns, samples=parse_schedule(args.samples, int),
            temperatures=parse_schedule(args.collect_temperature, float),
            max_tokens=args.max_tokens, continue_after_correct=args.continue_after_correct,
            feedback=args.feedback, solution_teacher=args.solution_teacher, seed=args.seed,
        ),
        build=BuildConfig(
            objective=name, criteria=args.criteria, target=args.target,
            first_turn=args.first_turn, progress_bonus=args.progress_bonus, pairs=args.pairs,
            negative_scale=args.negative_scale, mask_negative_stop=args.mask_negative_stop,
            copy_penalty=args.copy_penalty, max_corrections=args.max_corrections,
            dedup_trajectory=args.dedup_trajectory, max_length=args.max_length, seed=args.seed,
        ),
        train=train_args,
        evaluate=EvalConfig(
            max_turns=args.eval_turns, n_parallel=args.eval_parallel,
            temperature=args.eval_temperature, max_tokens=args.max_tokens,
            context_window=args.eval_window, seed=args.seed, repeats=args.eval_repeats,
            ablation=args.ablation, feedback=args.eval_feedback or args.feedback,
        ),
        prompts=prompts(args),
        progress=not args.quiet,
    )  # fmt: skip


def objective(args: argparse.Namespace) -> ObjectiveName:
    """The objective this study's flags name (they predate ``objective``, and its commands in
    docs/EXPERIMENTS.md keep them): ``--weighting``, and ``--pairs`` for the preference loss."""
    if args.pairs != "none":
        if args.weighting != "rwr":
            raise SystemExit("--pairs trains objective 'preference', whose examples are rwr's")
        return "preference"
    if args.weighting != "advantage" and (args.policy_clip or args.anchor_kl):
        raise SystemExit("--policy-clip and --anchor-kl apply to --weighting advantage")
    if args.weighting == "advantage" and args.policy_clip <= 0:
        raise SystemExit("--weighting advantage trains with the clipped ratio: give --policy-clip")
    names: dict[str, ObjectiveName] = {
        "rwr": "rwr", "awr": "awr", "uniform": "sft", "advantage": "advantage"
    }  # fmt: skip
    return names[args.weighting]


def matched_control(args: argparse.Namespace, source: Path) -> argparse.Namespace:
    """The single-turn control's settings: one turn, source's samples per problem, RFT."""
    stats = load_manifest(source)["iterations"][0]["collect"]
    per_problem = max(1, round(stats["candidates"] / max(1, stats["problems"])))
    print(
        f"control: 1 turn x {per_problem} samples per problem "
        f"(source drew {stats['candidates']} samples, {stats['output_tokens']} tokens)"
    )
    return argparse.Namespace(
        **{
            **vars(args),
            "turns": 1,
            "samples": str(per_problem),
            "criteria": "success",
            "weighting": "uniform",
            "pairs": "none",
        }
    )


def default_config() -> IterateConfig:
    """What an older manifest left out: the settings a run got when nothing was passed. Runs
    recorded before ``enforce_eager`` was an option ran eager, the CPU engine's default then."""
    return IterateConfig(run_dir="unused", engine={"enforce_eager": True})


def same_settings(old: object, new: object, default: object) -> bool:
    """Whether ``old`` (from an older manifest) equals ``new``.

    A key the older manifest lacks was added later; the run it describes used that key's
    default, so it compares equal when ``new`` holds the default too.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = default if isinstance(default, dict) else {}

        def same(key: str) -> bool:
            if key not in old:
                return new[key] == defaults.get(key)
            return same_settings(old[key], new[key], defaults.get(key))

        return all(same(k) for k in new) and set(old) <= set(new)
    return old == new


def seed_variant(
    config: IterateConfig, source: Path, data: tuple, *, collection: bool = True
) -> None:
    """Start ``config.run_dir`` from ``source``'s base evaluations and iteration-0 collection.

    ``collection=False`` (``--base-of``) copies the base evaluations only: a run that collects
    differently still compares against the very same base reports, without 27 minutes of
    re-evaluating an unchanged model.
    """
    target = Path(config.run_dir)
    if (target / MANIFEST).exists():
        return  # already seeded: resume
    option = "--variant-of" if collection else "--base-of"
    old = load_manifest(source)
    ours = config.to_dict()
    keys = ("collect", "model", "engine", "evaluate", "prompts")
    for key in keys if collection else keys[1:]:
        if not same_settings(old["config"][key], ours[key], default_config().to_dict()[key]):
            raise SystemExit(f"{option} {source}: '{key}' differs; pass the same settings")
    target.mkdir(parents=True, exist_ok=True)
    manifest = open_manifest(target, config, data[0], data[1], data[2])
    if old["data"] != manifest["data"]:
        raise SystemExit(f"{option} {source}: the problems differ")
    for folder in source.glob("eval*/base"):
        shutil.copytree(folder, target / folder.relative_to(source), dirs_exist_ok=True)
    manifest["evaluations"] = {"base": old["evaluations"]["base"]}
    manifest["extra_evaluations"] = {
        name: {"base": reports["base"]}
        for name, reports in old.get("extra_evaluations", {}).items()
    }
    if collection:
        (target / "iter-0").mkdir(exist_ok=True)
        trajectories = target / "iter-0" / "trajectories.jsonl"
        shutil.copy2(source / "iter-0" / "trajectories.jsonl", trajectories)
        entry = old["iterations"][0]
        manifest["iterations"] = [
            {k: entry[k] for k in ("iteration", "policy", "trajectories", "collect")}
        ]
    manifest["stages"] = []  # this run's own stages only; the source's are in its manifest
    manifest["seeded_from"] = str(source)
    save_manifest(target, manifest)


def evaluate_model(args: argparse.Namespace) -> int:
    """Evaluate ``--evaluate-model`` on this configuration's held-out sets (main, then the
    out-of-template one), with the run's prompts, engine and evaluation settings: a model
    trained on 100 problems measured on 400 compares with a base evaluated on the same 400
    (the problems depend on ``--train``, ``--eval`` and ``--seed`` only)."""
    import asyncio

    from rise.engine import build_engine
    from rise.prompts import ChatRenderer
    from rise_train.evaluate import run_evaluation
    from rise_train.report import format_table, write_evaluation

    config = iterate_config(args)
    _, evals, extra = datasets(args)
    out = Path(args.run_dir)

    async def run_all() -> None:
        engine = build_engine(config.engine_settings(Path(args.evaluate_model)))
        try:
            renderer = ChatRenderer(engine.tokenizer, config.prompts)
            for data in [evals, *extra]:
                folder = out / ("eval" if data is evals else f"eval-{data.name}")
                result = await run_evaluation(
                    engine, data.problems, config.evaluate, label=out.name,
                    renderer=renderer, progress=not args.quiet,
                )  # fmt: skip
                write_evaluation(result, folder)
                print(f"{data.spec}: {folder}")
                print(format_table([(out.name, result.report)]))
        finally:
            await engine.close()

    asyncio.run(run_all())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.evaluate_model is not None:
        return evaluate_model(args)
    if args.seed_mean is not None:
        from experiment_report import print_seed_mean

        if len(args.seed_mean) < 2:
            raise SystemExit("--seed-mean: a base report and at least one seed's report")
        print_seed_mean(Path(args.seed_mean[0]), [Path(r) for r in args.seed_mean[1:]])
        return 0
    if args.summarize is not None:
        from experiment_report import print_summary

        print_summary([Path(r) for r in args.summarize or [args.run_dir]])
        return 0
    start = time.perf_counter()
    if args.control_of:
        args = matched_control(args, Path(args.control_of))
    config = iterate_config(args)
    data = datasets(args)
    if args.variant_of:
        seed_variant(config, Path(args.variant_of), data)
    elif args.base_of:
        seed_variant(config, Path(args.base_of), data, collection=False)
    if args.control_of:
        config.evaluate_base = False  # the base is the source run's
    manifest = run(config, data[0], data[1], data[2])
    print(format_run(manifest))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    from experiment_report import print_summary

    print_summary([Path(args.run_dir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
