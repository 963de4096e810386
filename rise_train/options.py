"""CLI options generated from the config classes, so each default and help text exists once.

A command lists which fields of which config it exposes (:class:`Options`); :func:`with_options`
appends one typer option per field to the command's signature — type, default and help read
from the dataclass field (its ``metadata["help"]``) or the pydantic field (its
``description``) — and :meth:`Options.values` turns the parsed options back into the config's
keyword arguments.

Why not transformers' ``HfArgumentParser``: it builds an ``argparse`` parser, and the CLI is
typer (rich help, the ``--config`` file precedence of :mod:`rise_train.config`, one ``error:``
line and exit 2 for bad values); importing it also costs seconds of torch import for every
``--help``. This adapter is the part of it we need: field → option, and back.

Two conventions:

- a per-turn schedule field (``tuple[int, ...]``) is one comma-separated option (``--samples
  1,16``), parsed by :func:`rise_train.collect.parse_schedule`;
- an :class:`Options` with ``optional=True`` defaults every option to ``None`` ("not given"), so
  the config's own default applies — and, for pydantic settings, its ``RISE_*`` environment
  variable. ``--help`` still shows that default.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    """One generated option: the field it comes from and how the CLI shows it."""

    field: str
    option: str  # the parameter name (``max_turns`` → ``turns`` → ``--turns``)
    annotation: Any  # the CLI type
    default: Any
    help: str
    schedule: type | None = None  # element type of a per-turn schedule field
    show_default: bool | str = True  # what --help gives as the default


@dataclass(frozen=True)
class Options:
    """The options one config class contributes to a command.

    ``fields`` names the fields to expose, in order; ``"field:option"`` renames one
    (``"max_turns:turns"``). ``prefix`` is put before every option name that is not renamed.
    ``panel`` is the heading the options are listed under in ``--help``.
    """

    config: type
    fields: tuple[str, ...]
    prefix: str = ""
    optional: bool = False
    envvars: Mapping[str, str] = dataclasses.field(default_factory=dict)  # option → variable
    panel: str | None = None

    def specs(self) -> list[Spec]:
        described = _describe(self.config)
        out = []
        for item in self.fields:
            name, _, option = item.partition(":")
            if name not in described:
                raise TypeError(f"{self.config.__name__} has no field {name!r}")
            annotation, default, help_text = described[name]
            if not help_text:
                raise TypeError(f"{self.config.__name__}.{name} has no help text")
            schedule = _schedule_element(annotation)
            if schedule is not None:
                annotation = str
                default = ",".join(str(v) for v in default)
            shown: bool | str = True
            if self.optional:
                shown = _show(default) if default is not dataclasses.MISSING else False
                default = None
                annotation = annotation | None if annotation is not Any else annotation
            out.append(
                Spec(
                    name,
                    option or self.prefix + name,
                    annotation,
                    default,
                    help_text,
                    schedule,
                    shown,
                )
            )
        return out

    def values(self, o: SimpleNamespace) -> dict[str, Any]:
        """The config's keyword arguments from parsed options (``None`` left out if optional)."""
        from rise_train.collect import parse_schedule

        out: dict[str, Any] = {}
        for spec in self.specs():
            value = getattr(o, spec.option)
            if value is None and self.optional:
                continue
            if spec.schedule is not None:
                try:
                    value = parse_schedule(value, spec.schedule)
                except ValueError as error:
                    raise typer.BadParameter(str(error), param_hint=flag(spec.option)) from None
            out[spec.field] = value
        return out

    def parameters(self) -> list[inspect.Parameter]:
        params = []
        for spec in self.specs():
            info = typer.Option(
                help=spec.help,
                envvar=self.envvars.get(spec.option),
                show_default=spec.show_default,
                rich_help_panel=self.panel,
            )
            params.append(
                inspect.Parameter(
                    spec.option,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=spec.default,
                    annotation=Annotated[spec.annotation, info],
                )
            )
        return params


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def with_options(*sets: Options, last: tuple[str, ...] = ("config", "quiet")) -> Callable[[F], F]:
    """Give a typer command the options of ``sets`` besides its own parameters.

    The command takes them as ``**options`` (and reads them all from :func:`resolve` as
    usual). A parameter the command declares itself wins over a generated one of the same name;
    two sets may share an option (``--top-p`` feeds collection and evaluation) only with the
    same default, so one flag never has two meanings. ``last`` parameters go at the end of
    ``--help``.
    """

    def decorate(fn: F) -> F:
        own = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        explicit = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in own.parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        taken = {p.name for p in explicit}
        generated: dict[str, inspect.Parameter] = {}
        for options in sets:
            for param in options.parameters():
                if param.name in taken:
                    continue
                seen = generated.get(param.name)
                if seen is not None and seen.default != param.default:
                    raise TypeError(
                        f"{fn.__name__}: option {param.name!r} has two defaults "
                        f"({seen.default!r}, {param.default!r})"
                    )
                generated.setdefault(param.name, param)
        ordered = [p for p in explicit if p.name not in last]
        ordered += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in generated.values()]
        ordered += [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in explicit if p.name in last
        ]
        ordered = _positional_first(ordered)

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        command.__signature__ = own.replace(parameters=ordered)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in ordered}
        return command  # type: ignore[return-value]

    return decorate


# -- reading the config classes -------------------------------------------------------------------


def _describe(config: type) -> dict[str, tuple[Any, Any, str]]:
    """field → (type, default, help) of a dataclass or a pydantic model."""
    if dataclasses.is_dataclass(config):
        hints = typing.get_type_hints(config)
        out = {}
        for f in dataclasses.fields(config):
            default: Any = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out[f.name] = (hints[f.name], default, f.metadata.get("help", ""))
        return out
    model_fields = getattr(config, "model_fields", None)
    if model_fields is None:
        raise TypeError(f"{config!r} is neither a dataclass nor a pydantic model")
    prefix = getattr(config, "model_config", {}).get("env_prefix", "")
    return {
        name: (
            info.annotation,
            info.get_default(call_default_factory=True),
            f"{info.description} (env {prefix}{name.upper()})" if info.description else "",
        )
        for name, info in model_fields.items()
    }


def _schedule_element(annotation: Any) -> type | None:
    """``int`` for ``tuple[int, ...]``, else ``None``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _positional_first(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """A valid signature order: positional parameters, then keyword-only ones."""
    positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    return positional + [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


__all__ = ["Options", "Spec", "flag", "with_options"]
