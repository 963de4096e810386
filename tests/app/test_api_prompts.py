"""The served prompts: RISE_PROMPTS, a checkpoint's rise_prompts.json, and the parity guard."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rise.prompt_file import PROMPT_FILE
from rise.prompts import PromptConfig
from tests.app.scripted_app import TurnScriptEngine, serve

CUSTOM = {
    "first_turn": "Q: {question}\nThink, then answer in \\boxed{}.",
    "introspection": "Not quite. Look again at: {question}",
    "system": "You check your work.",
    "demonstrations": [["1 + 1?", "\\boxed{2}"]],
}


def checkpoint(folder: Path, prompts: dict) -> Path:
    """A model folder as training leaves it: the prompts it was trained with beside the weights."""
    folder.mkdir()
    (folder / PROMPT_FILE).write_text(json.dumps(prompts))
    return folder


async def test_configured_prompts_are_served_and_shown(tiny_tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(CUSTOM))
    engine = TurnScriptEngine(tiny_tokenizer)
    async with serve(engine, tmp_path, prompts=path) as client:
        models = (await client.get("/v1/models")).json()["data"]
        await client.post("/solve", json={"question": "What is 2 + 2?", "max_turns": 2})
    for card in models:
        assert card["prompts"] == {**CUSTOM, "source": f"configured: {path}"}
    first, second = engine.requests[0][0], engine.requests[1][0]
    assert "<|im_start|>system\nYou check your work." in first
    assert "1 + 1?" in first and "Q: What is 2 + 2?" in first  # demonstration, then the question
    assert "Not quite. Look again at: What is 2 + 2?" in second


async def test_a_checkpoint_brings_its_own_prompts(tiny_tokenizer, tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "ckpt", CUSTOM)
    engine = TurnScriptEngine(tiny_tokenizer)
    async with serve(engine, tmp_path, model=str(model)) as client:
        prompts = (await client.get("/v1/models")).json()["data"][0]["prompts"]
        await client.post("/solve", json={"question": "2 + 2?", "max_turns": 1})
    assert prompts["source"] == f"checkpoint: {model / PROMPT_FILE}"
    assert prompts["first_turn"] == CUSTOM["first_turn"]
    assert "Q: 2 + 2?" in engine.requests[0][0]


async def test_the_file_training_writes_is_read_back(tiny_tokenizer, tmp_path: Path) -> None:
    # rise_train writes json.dumps(asdict(PromptConfig)) into every checkpoint.
    trained = PromptConfig(system="sys", demonstrations=(("q", "r"),))
    model = checkpoint(tmp_path / "ckpt", asdict(trained))
    async with serve(TurnScriptEngine(tiny_tokenizer), tmp_path, model=str(model)) as client:
        prompts = (await client.get("/v1/models")).json()["data"][0]["prompts"]
    assert prompts["system"] == "sys" and prompts["demonstrations"] == [["q", "r"]]


async def test_other_prompts_than_the_checkpoints_stop_the_start_up(
    tiny_tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = checkpoint(tmp_path / "ckpt", CUSTOM)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"introspection": "Try again: {question}"}))
    engine = TurnScriptEngine(tiny_tokenizer)
    with pytest.raises(RuntimeError, match="RISE_PROMPTS_OVERRIDE"):
        async with serve(engine, tmp_path, model=str(model), prompts=mine):
            pass
    assert "trained with the prompts in" in caplog.text
    # The same file as the checkpoint's is no conflict; a deliberate override serves it.
    same = tmp_path / "same.json"
    same.write_text(json.dumps(CUSTOM))
    async with serve(engine, tmp_path, model=str(model), prompts=same) as client:
        assert (await client.get("/ready")).status_code == 200
    async with serve(
        engine, tmp_path, model=str(model), prompts=mine, prompts_override=True
    ) as client:
        prompts = (await client.get("/v1/models")).json()["data"][0]["prompts"]
    assert prompts["introspection"] == "Try again: {question}"
    assert prompts["source"].startswith(f"configured: {mine} (overrides checkpoint")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.json", None, "No such file"),
        ("bad.json", "{", "not valid JSON"),
        ("extra.json", '{"greeting": "hi"}', "unknown prompt fields"),
    ],
)
async def test_a_broken_prompt_file_stops_the_start_up(
    tiny_tokenizer, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(RuntimeError, match=message):
        async with serve(TurnScriptEngine(tiny_tokenizer), tmp_path, prompts=path):
            pass
