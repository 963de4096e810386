"""The prompt as configuration: prompt files, the one a checkpoint carries, and which one wins.

A prompt file holds a :class:`~rise.prompts.PromptConfig` as JSON (or YAML, with PyYAML
installed): ``first_turn``, ``introspection``, ``system``, ``demonstrations`` (a list of
``[question, response]`` pairs) and the feedback providers' wording (``feedback_slips``,
``feedback_verifier``, ``feedback_correct``); a missing key keeps the default. It is exactly
``dataclasses.asdict(PromptConfig)``, so what training writes is what this reads.

Training writes :data:`PROMPT_FILE` into every checkpoint folder; whoever serves or evaluates
the checkpoint reads it back (:func:`resolve_prompts`), so the prompts it was trained with are
the prompts it runs with by construction. Running it with other prompts is a deliberate act: a
configured prompt file that differs from the checkpoint's is refused unless ``override`` is set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rise.engine.models import cache_dir_for
from rise.prompts import PromptConfig

__all__ = [
    "PROMPT_FILE",
    "ActivePrompts",
    "PromptMismatchError",
    "checkpoint_prompt_file",
    "load_prompts",
    "local_model_dir",
    "prompts_from_dict",
    "prompts_to_dict",
    "resolve_prompts",
    "write_prompts",
]

PROMPT_FILE = "rise_prompts.json"  # in a model folder: the prompts it was trained with


class PromptMismatchError(ValueError):
    """A configured prompt file differs from the one the checkpoint was trained with."""


def prompts_to_dict(prompts: PromptConfig) -> dict[str, Any]:
    """The prompts as JSON-able data (demonstrations as lists of [question, response])."""
    data = asdict(prompts)
    data["demonstrations"] = [list(pair) for pair in prompts.demonstrations]
    return data


def prompts_from_dict(data: Any, source: str = "prompts") -> PromptConfig:
    """A PromptConfig from parsed JSON/YAML; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping of prompt fields, got {type(data).__name__}"
        )
    known = {f.name for f in fields(PromptConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown prompt fields {unknown}; expected {sorted(known)}")
    values: dict[str, Any] = {}
    for name in (
        "first_turn",
        "introspection",
        "feedback_slips",
        "feedback_verifier",
        "feedback_correct",
    ):
        if name in data:
            if not isinstance(data[name], str) or not data[name].strip():
                raise ValueError(f"{source}: {name} must be a non-empty string")
            values[name] = data[name]
    if data.get("system") is not None:
        if not isinstance(data["system"], str):
            raise ValueError(f"{source}: system must be a string or null")
        values["system"] = data["system"]
    pairs = []
    for i, pair in enumerate(data.get("demonstrations") or []):
        if isinstance(pair, dict) and set(pair) == {"question", "response"}:
            pair = [pair["question"], pair["response"]]
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ValueError(f"{source}: demonstrations[{i}] must be [question, response]")
        if not all(isinstance(part, str) for part in pair):
            raise ValueError(f"{source}: demonstrations[{i}] must hold two strings")
        pairs.append((pair[0], pair[1]))
    values["demonstrations"] = tuple(pairs)
    return PromptConfig(**values)


def load_prompts(path: str | Path) -> PromptConfig:
    """Read a prompt file: JSON, or YAML for ``.yaml`` / ``.yml``."""
    path = Path(path).expanduser()
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:  # pyyaml comes with the train and dev extras
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from error
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from error
    return prompts_from_dict(data, str(path))


def write_prompts(prompts: PromptConfig, folder: str | Path) -> Path:
    """Write ``prompts`` as the folder's :data:`PROMPT_FILE` (what a checkpoint carries)."""
    path = Path(folder) / PROMPT_FILE
    path.write_text(json.dumps(prompts_to_dict(prompts), indent=1, ensure_ascii=False) + "\n")
    return path


def checkpoint_prompt_file(model_dir: str | Path | None) -> Path | None:
    """The model folder's prompt file, if the folder exists and has one."""
    if model_dir is None:
        return None
    path = Path(model_dir).expanduser() / PROMPT_FILE
    return path if path.is_file() else None


def local_model_dir(model: str, data_dir: str | Path) -> Path | None:
    """The model's folder on this machine, if it exists yet (a checkpoint, or a prepared copy)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    cached = cache_dir_for(model, Path(data_dir))
    return cached if cached.is_dir() else None


@dataclass(frozen=True)
class ActivePrompts:
    """The prompts a model runs with, and where they came from (shown and logged)."""

    prompts: PromptConfig
    source: str  # "default", "configured: PATH", "checkpoint: PATH", or an override note

    def describe(self) -> str:
        p = self.prompts
        return (
            f"prompts ({self.source}): first_turn={p.first_turn!r} "
            f"introspection={p.introspection!r} system={p.system!r} "
            f"demonstrations={len(p.demonstrations)}"
        )


def resolve_prompts(
    configured: str | Path | None, model_dir: str | Path | None, *, override: bool = False
) -> ActivePrompts:
    """Which prompts a model runs with.

    - the checkpoint's :data:`PROMPT_FILE` when the model folder has one, and nothing else is
      configured (or the configured file says the same);
    - the configured file otherwise (or the paper's defaults when there is none);
    - a configured file that differs from the checkpoint's raises
      :class:`PromptMismatchError`, unless ``override`` is set.
    """
    own_path = checkpoint_prompt_file(model_dir)
    own = None if own_path is None else load_prompts(own_path)
    given = None if configured is None else load_prompts(configured)
    if given is None:
        if own is None:
            return ActivePrompts(PromptConfig(), "default")
        return ActivePrompts(own, f"checkpoint: {own_path}")
    if own is None or own == given:
        return ActivePrompts(given, f"configured: {configured}")
    if not override:
        raise PromptMismatchError(
            f"the model was trained with the prompts in {own_path}, but {configured} differs "
            "from them; serving it with other prompts breaks train/serve parity. Remove the "
            "configured prompt file to use the checkpoint's, or set the override (service: "
            "RISE_PROMPTS_OVERRIDE=1; CLI: --prompts-override) to use yours deliberately."
        )
    return ActivePrompts(given, f"configured: {configured} (overrides checkpoint: {own_path})")
