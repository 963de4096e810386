"""``python -m rise solve "question"``: the quickest way to watch RISE think again.

Streams every turn as the model writes it, then its extracted answer, then the vote. Runs on
the bundled default model unless ``--model`` (or ``RISE_MODEL``) names another.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from rise.answers import GRADER_NAMES
from rise.engine.base import PromptTooLongError
from rise.engine.config import EngineSettings
from rise.feedback import FeedbackProviders
from rise.feedback.verifier import HttpVerifier, VerifierSettings
from rise.loop import EpisodeEvent, TokenEvent, TurnEvent, TurnLoop, new_episode
from rise.plan import BUILTIN_FEEDBACK, CLI_PLAN, PlanError, RequestPlan, mode_rules
from rise.prompt_file import ActivePrompts, local_model_dir, resolve_prompts
from rise.prompts import ChatRenderer
from rise.voting import ANSWER_MODES

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RISE: language models that correct their own answers over sequential turns.",
)

# Each option's default is the CLI plan's (rise/plan.py), so no default is written twice.
_FLAGS = {
    "max_turns": "--turns",
    "mode": "--mode",
    "converge_k": "--converge",
    "context_window": "--context-window",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "max_tokens": "--max-tokens",
    "stop_on_correct": "--mode",
    "feedback": "--feedback",
    "reference": "--reference",
}


@app.callback()
def _main() -> None:
    """RISE command line (the service is `python -m app`, training `python -m rise_train`)."""


def _rule(title: str) -> str:
    return f"── {title} " + "─" * max(0, 60 - len(title))


# The prompt-file options, shared with ``python -m rise_train`` (one help text).
PromptsOption = Annotated[
    Path | None,
    typer.Option(help="Prompt file (JSON/YAML); default: the model folder's, else the paper's."),
]
PromptsOverrideOption = Annotated[
    bool,
    typer.Option(
        "--prompts-override", help="Use --prompts even where the checkpoint's prompts differ."
    ),
]


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="The problem to solve.")],
    max_turns: Annotated[
        int, typer.Option("--turns", "-n", min=1, max=50, help="Turns to take.")
    ] = CLI_PLAN.max_turns,
    mode: Annotated[
        str, typer.Option(help="Final answer: vote | last | oracle (stops at a correct turn).")
    ] = CLI_PLAN.mode,
    reference: Annotated[str | None, typer.Option(help="Known answer (grades each turn).")] = None,
    grader: Annotated[str, typer.Option(help="gsm8k | math | exact.")] = "gsm8k",
    feedback: Annotated[
        str,
        typer.Option(
            help="What follows each turn: fixed (RISE's prompt) | oracle | calculator | a "
            "verifier named in RISE_VERIFIERS."
        ),
    ] = CLI_PLAN.feedback,
    converge: Annotated[
        int | None, typer.Option(help="Stop once the last K answers agree.", min=2)
    ] = CLI_PLAN.converge_k,
    context_window: Annotated[
        int | None, typer.Option(help="Keep only the last K attempts.", min=1)
    ] = CLI_PLAN.context_window,
    temperature: Annotated[float, typer.Option(min=0.0)] = CLI_PLAN.temperature,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = CLI_PLAN.top_p,
    max_tokens: Annotated[int, typer.Option(help="Tokens per turn.", min=1)] = CLI_PLAN.max_tokens,
    seed: Annotated[int, typer.Option(help="Engine seed.")] = 0,
    model: Annotated[
        str | None, typer.Option(help="Model folder or Hugging Face id (default: bundled).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Model cache folder.")] = None,
    prompts: PromptsOption = None,
    prompts_override: PromptsOverrideOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the episode as JSON.")] = False,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the model as the service does (faster turns, a start ~15 s longer; "
            "~100 s the first time). Off: one solve is over before compiling pays off.",
        ),
    ] = False,
) -> None:
    """Solve one problem over several turns and show every turn, its answer and the vote."""
    if mode not in ANSWER_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(ANSWER_MODES)}", param_hint="--mode")
    if grader not in GRADER_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(GRADER_NAMES)}", param_hint="--grader")
    if not question.strip():
        raise typer.BadParameter("must not be empty", param_hint="QUESTION")
    try:
        plan = CLI_PLAN.updated(
            max_turns=max_turns,
            converge_k=converge,
            context_window=context_window,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            feedback=feedback,
            **mode_rules(mode),  # type: ignore[arg-type]
        )
        verifiers = VerifierSettings().providers()  # type: ignore[call-arg]  # from RISE_* env
        offered = (*BUILTIN_FEEDBACK, *verifiers)
        if feedback not in offered:
            raise PlanError(f"must be one of {', '.join(offered)}", "feedback")
        if plan.needs_reference and reference is None:
            raise PlanError(f"mode {mode!r} / feedback {feedback!r} needs --reference", "reference")
    except PlanError as error:
        raise typer.BadParameter(str(error), param_hint=_FLAGS.get(error.field)) from error
    overrides: dict[str, object] = {"seed": seed, "enforce_eager": not compile_model}
    if model:
        overrides["model"] = model
    if data_dir:
        overrides["data_dir"] = data_dir
    settings = EngineSettings(**overrides)  # type: ignore[arg-type]
    try:
        active = resolve_prompts(
            prompts, local_model_dir(settings.model, settings.data_dir), override=prompts_override
        )
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--prompts") from error
    try:
        asyncio.run(_solve(settings, active, question, reference, grader, plan, as_json, verifiers))
    except PromptTooLongError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


async def _solve(
    settings: EngineSettings,
    active: ActivePrompts,
    question: str,
    reference: str | None,
    grader: str,
    plan: RequestPlan,
    as_json: bool,
    verifiers: dict[str, HttpVerifier],
) -> None:
    from rise.engine import build_engine

    # A CLI shows answers, not engine logs; and stdout stays clean for --json.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    typer.echo(f"Starting the engine on {settings.model} …", err=True)
    started = time.perf_counter()
    engine = build_engine(settings)
    typer.echo(f"Engine ready in {time.perf_counter() - started:.0f} s.", err=True)
    if active.source != "default":
        typer.echo(active.describe(), err=True)
    try:
        providers = FeedbackProviders(verifiers)
        loop = TurnLoop(engine, ChatRenderer(engine.tokenizer, active.prompts), providers)
        context = active.prompts.context()  # system prompt and demonstrations, as in training
        episode = new_episode(question, reference=reference, grader=grader, context=context)
        out = sys.stderr if as_json else sys.stdout
        shown: set[int] = set()  # turns whose header is printed
        async for event in loop.stream([episode], plan):
            if isinstance(event, TokenEvent):
                if event.turn not in shown:
                    print(_rule(f"turn {event.turn + 1}"), file=out)
                    shown.add(event.turn)
                print(event.text, end="", file=out, flush=True)
            elif isinstance(event, TurnEvent):
                turn = event.turn
                graded = f" · {turn.outcome.value}" if turn.outcome else ""
                print(
                    f"\n→ answer: {turn.answer if turn.answer is not None else '(none)'}{graded}"
                    f"  ({turn.output_tokens} tokens, {turn.cached_tokens} of "
                    f"{turn.prompt_tokens} prompt tokens cached, {turn.latency_s:.1f} s)",
                    file=out,
                )
                given = turn.feedback
                if given is not None and plan.feedback != "fixed":
                    failed = f", {given.error}" if given.error else ""
                    print(f"→ {given.provider} ({given.verdict.value}{failed}): {given.message}",
                          file=out)  # fmt: skip
            elif isinstance(event, EpisodeEvent):
                vote = event.vote
                print(_rule("result"), file=out)
                counts = ", ".join(f"{a}: {n}" for a, n in vote.counts.items()) or "no answers"
                print(f"votes: {counts} (margin {vote.margin})", file=out)
                print(
                    f"stop: {episode.stop_reason.value if episode.stop_reason else '-'}", file=out
                )
                final = event.final
                shown_turn = "" if final.turn is None else f", turn {final.turn + 1}"
                answer = final.answer if final.answer is not None else "(no answer)"
                print(f"final answer: {answer} ({plan.mode}{shown_turn})", file=out)
        if as_json:
            print(json.dumps(episode.to_dict(), indent=2))
    finally:
        await engine.close()
        await providers.aclose()
