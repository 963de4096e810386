"""Config files for the ``rise_train`` CLI, and the CLI's error policy.

A config file (YAML or JSON) holds option values under the CLI's own names (``max_tokens`` or
``max-tokens``), flat and/or in a section named after a command::

    model: default
    max_tokens: 256
    collect: {samples: 8}
    iterate: {iterations: 2, train_args: {num_train_epochs: 2}}

Precedence: a flag given on the command line (or by its environment variable) > the command's
section > the flat keys > the flag's default. Values go through the same parsing and checks as
the command line. A key that names no option of any command is an error (a typo should not pass
silently); a key that belongs to another command is ignored, so one file can serve them all.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import typer

_PASS_THROUGH = ("train_args",)  # dict-valued keys: not coerced as command-line strings
F = TypeVar("F", bound=Callable[..., Any])


def load_config_file(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping; keys normalised to underscores."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return _normalise(data)


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        out[name] = _normalise(value) if isinstance(value, dict) and name != "train_args" else value
    return out


def _all_option_names(ctx: typer.Context) -> tuple[set[str], set[str]]:
    """(every option name of every command, the command names)."""
    root = ctx.find_root().command
    commands = getattr(root, "commands", None) or {ctx.info_name: ctx.command}
    names = {p.name for cmd in commands.values() for p in cmd.params if p.name}
    return names, {str(n).replace("-", "_") for n in commands}


def resolve(ctx: typer.Context) -> SimpleNamespace:
    """The command's option values with its ``--config`` file applied (see module docstring)."""
    values = dict(ctx.params)
    config_path = values.get("config")
    if config_path is None:
        return SimpleNamespace(**values)
    data = load_config_file(Path(config_path))
    known, commands = _all_option_names(ctx)
    command = (ctx.info_name or "").replace("-", "_")
    section = data.get(command) if isinstance(data.get(command), dict) else {}
    flat = {k: v for k, v in data.items() if k not in commands}
    unknown = sorted(
        {k for k in flat if k not in known}
        | {f"{command}.{k}" for k in section or {} if k not in known}
    )
    if unknown:
        raise typer.BadParameter(
            f"unknown key(s) in {config_path}: {', '.join(unknown)}", param_hint="--config"
        )
    params = {p.name: p for p in ctx.command.params}
    for source in (flat, section or {}):
        for name, raw in source.items():
            if name not in params or name == "config":
                continue  # another command's option
            origin = ctx.get_parameter_source(name)
            if origin is not None and origin.name in ("COMMANDLINE", "ENVIRONMENT"):
                continue
            if name in _PASS_THROUGH and isinstance(raw, dict):
                values[name] = raw
                continue
            if getattr(params[name], "multiple", False) and isinstance(raw, str):
                raw = [raw]  # a list option given one value in the file
            try:
                values[name] = params[name].process_value(ctx, raw)
            except typer.BadParameter as error:
                raise typer.BadParameter(f"{name} in {config_path}: {error}") from None
    return SimpleNamespace(**values)


def parse_assignments(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["num_train_epochs=2", "lr_scheduler_type=linear"]`` (or a dict) → typed values."""
    import yaml

    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--train-arg")
        try:
            value = json.loads(text)  # numbers (1e-5 too), true/false, null, lists
        except json.JSONDecodeError:
            value = yaml.safe_load(text) if text.strip() else ""
            if isinstance(value, bool):
                value = text.strip()  # YAML 1.1 reads no/yes/on/off as booleans: save_strategy=no
        out[key.strip().replace("-", "_")] = value
    return out


def friendly_errors(fn: F) -> F:
    """Turn expected failures (bad files, bad values, unavailable models) into one line + exit 2.

    ``RISE_DEBUG=1`` re-raises with the traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:
            if os.environ.get("RISE_DEBUG", "").lower() in ("1", "true", "yes"):
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]
