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
from rise.engine.base import PromptTooLongError, SamplingConfig
from rise.engine.config import EngineSettings
from rise.loop import EpisodeEvent, LoopConfig, TokenEvent, TurnEvent, TurnLoop, new_episode
from rise.prompts import ChatRenderer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RISE: language models that correct their own answers over sequential turns.",
)


@app.callback()
def _main() -> None:
    """RISE command line (the service is `python -m app`, training `python -m rise_train`)."""


def _rule(title: str) -> str:
    return f"── {title} " + "─" * max(0, 60 - len(title))


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="The problem to solve.")],
    max_turns: Annotated[int, typer.Option("--turns", "-n", min=1, max=50)] = 5,
    mode: Annotated[str, typer.Option(help="Final answer: vote | last | oracle.")] = "vote",
    reference: Annotated[str | None, typer.Option(help="Known answer (grades each turn).")] = None,
    grader: Annotated[str, typer.Option(help="gsm8k | math | exact.")] = "gsm8k",
    converge: Annotated[
        int | None, typer.Option(help="Stop once the last K answers agree.", min=2)
    ] = None,
    context_window: Annotated[
        int | None, typer.Option(help="Keep only the last K attempts.", min=1)
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="Tokens per turn.", min=1)] = 384,
    seed: Annotated[int, typer.Option(help="Engine seed.")] = 0,
    model: Annotated[
        str | None, typer.Option(help="Model folder or Hugging Face id (default: bundled).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Model cache folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the episode as JSON.")] = False,
) -> None:
    """Solve one problem over several turns and show every turn, its answer and the vote."""
    if mode not in {"vote", "last", "oracle"}:
        raise typer.BadParameter("must be vote, last or oracle", param_hint="--mode")
    if grader not in GRADER_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(GRADER_NAMES)}", param_hint="--grader")
    if mode == "oracle" and reference is None:
        raise typer.BadParameter("oracle mode needs --reference", param_hint="--mode")
    if not question.strip():
        raise typer.BadParameter("must not be empty", param_hint="QUESTION")
    overrides: dict[str, object] = {"seed": seed}
    if model:
        overrides["model"] = model
    if data_dir:
        overrides["data_dir"] = data_dir
    settings = EngineSettings(**overrides)  # type: ignore[arg-type]
    config = LoopConfig(
        max_turns=max_turns,
        oracle=mode == "oracle",
        converge_k=converge,
        context_window=context_window,
        answer_mode="last" if mode == "last" else "vote",
        sampling=SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_tokens),
    )
    try:
        asyncio.run(_solve(settings, question, reference, grader, config, as_json))
    except PromptTooLongError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


async def _solve(
    settings: EngineSettings,
    question: str,
    reference: str | None,
    grader: str,
    config: LoopConfig,
    as_json: bool,
) -> None:
    from rise.engine import build_engine

    # A CLI shows answers, not engine logs; and stdout stays clean for --json.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    typer.echo(f"Starting the engine on {settings.model} …", err=True)
    started = time.perf_counter()
    engine = build_engine(settings)
    typer.echo(f"Engine ready in {time.perf_counter() - started:.0f} s.", err=True)
    try:
        loop = TurnLoop(engine, ChatRenderer(engine.tokenizer))
        episode = new_episode(question, reference=reference, grader=grader)
        out = sys.stderr if as_json else sys.stdout
        shown: set[int] = set()  # turns whose header is printed
        async for event in loop.stream([episode], config):
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
            elif isinstance(event, EpisodeEvent):
                vote = event.vote
                print(_rule("result"), file=out)
                counts = ", ".join(f"{a}: {n}" for a, n in vote.counts.items()) or "no answers"
                print(f"votes: {counts} (margin {vote.margin})", file=out)
                print(
                    f"stop: {episode.stop_reason.value if episode.stop_reason else '-'}", file=out
                )
                final = episode.final_answer
                print(f"final answer: {final if final is not None else '(no answer)'}", file=out)
        if as_json:
            print(json.dumps(episode.to_dict(), indent=2))
    finally:
        await engine.close()
