"""rise.prompt_file: prompt files, a checkpoint's prompts, and which prompts a model runs with."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rise.prompt_file import (
    PROMPT_FILE,
    PromptMismatchError,
    load_prompts,
    local_model_dir,
    prompts_from_dict,
    prompts_to_dict,
    resolve_prompts,
    write_prompts,
)
from rise.prompts import PromptConfig

CUSTOM = PromptConfig(
    first_turn="Q: {question}",
    introspection="Again: {question}",
    system="sys",
    demonstrations=(("1+1?", "\\boxed{2}"),),
)


def test_json_and_yaml_files_and_defaults_for_missing_keys(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(prompts_to_dict(CUSTOM)))
    assert load_prompts(tmp_path / "p.json") == CUSTOM
    (tmp_path / "p.yaml").write_text(
        "first_turn: 'Q: {question}'\nintrospection: 'Again: {question}'\nsystem: sys\n"
        "demonstrations:\n  - question: '1+1?'\n    response: '\\boxed{2}'\n"
    )
    assert load_prompts(tmp_path / "p.yaml") == CUSTOM
    (tmp_path / "partial.json").write_text('{"system": "be brief"}')
    assert load_prompts(tmp_path / "partial.json") == PromptConfig(system="be brief")
    # Exactly what training writes: dataclasses.asdict of the config.
    assert prompts_from_dict(json.loads(json.dumps(asdict(CUSTOM)))) == CUSTOM


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping"),
        ({"greeting": "hi"}, "unknown prompt fields"),
        ({"first_turn": ""}, "first_turn must be a non-empty string"),
        ({"system": 3}, "system must be"),
        ({"demonstrations": [["only one"]]}, r"demonstrations\[0\]"),
        ({"demonstrations": [[1, 2]]}, "two strings"),
    ],
)
def test_bad_prompt_data_is_refused(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prompts_from_dict(data)


def test_write_then_resolve_from_the_checkpoint(tmp_path: Path) -> None:
    assert write_prompts(CUSTOM, tmp_path) == tmp_path / PROMPT_FILE
    active = resolve_prompts(None, tmp_path)
    assert active.prompts == CUSTOM and active.source == f"checkpoint: {tmp_path / PROMPT_FILE}"
    assert "Again: {question}" in active.describe()
    assert resolve_prompts(None, None).source == "default"
    assert resolve_prompts(None, tmp_path / "no-such-folder").prompts == PromptConfig()


def test_configured_prompts_against_the_checkpoints(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    write_prompts(CUSTOM, model)
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps(prompts_to_dict(CUSTOM)))
    other.write_text('{"introspection": "No. {question}"}')
    assert resolve_prompts(same, model).source == f"configured: {same}"
    with pytest.raises(PromptMismatchError, match="override"):
        resolve_prompts(other, model)
    forced = resolve_prompts(other, model, override=True)
    assert forced.prompts.introspection == "No. {question}" and "overrides" in forced.source
    assert resolve_prompts(other, tmp_path).prompts.introspection == "No. {question}"


def test_local_model_dir(tmp_path: Path) -> None:
    assert local_model_dir(str(tmp_path), tmp_path / "data") == tmp_path
    assert local_model_dir("org/not-here", tmp_path / "data") is None
    cached = tmp_path / "data" / "models" / "org--model"
    cached.mkdir(parents=True)
    assert local_model_dir("org/model", tmp_path / "data") == cached
