"""Property-based fuzzing of the live server's OpenAPI schema: no input may cause a 5xx.

The schema is the server's own ``/openapi.json`` (deployment bounds included); only the cost
bounds (tokens, turns, choices) are tightened here so the run stays short on the tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings

pytestmark = [pytest.mark.engine, pytest.mark.redis, pytest.mark.slow]

TIGHTER = {"max_tokens": 8, "max_completion_tokens": 8, "max_turns": 2, "n": 2}


def tighten(schema: Any) -> None:
    if isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name in TIGHTER:
                for option in [prop, *prop.get("anyOf", [])]:
                    if option.get("type") == "integer":
                        option["maximum"] = TIGHTER[name]
        for value in schema.values():
            tighten(value)
    elif isinstance(schema, list):
        for value in schema:
            tighten(value)


def focus(schema: dict[str, Any], models: list[str]) -> None:
    """Steer generated bodies past the cross-field rules the schema cannot state (exactly one
    of question / messages / session_id, the last message from the user, a served model name),
    so most positive cases reach the engine instead of stopping at a 400."""
    components = schema["components"]["schemas"]
    text = {"type": "string", "pattern": r"\S", "maxLength": 300}
    solve = components["SolveRequest"]
    solve["properties"]["question"] = text
    solve["required"] = ["question", "max_turns", "max_tokens"]  # not the costly defaults
    for name in ("messages", "session_id"):
        del solve["properties"][name]
    chat = components["ChatCompletionRequest"]["properties"]
    chat["model"] = {"enum": models}
    user = {"type": "object", "properties": {"role": {"enum": ["user"]}, "content": text}}
    user["required"] = ["role", "content"]
    chat["messages"] = {"type": "array", "items": user, "minItems": 1, "maxItems": 3}
    for name in ("tools", "response_format", "logprobs", "presence_penalty", "frequency_penalty"):
        del chat[name]
    components["ChatCompletionRequest"]["required"] = ["messages", "max_tokens"]
    for name in ("ContinueRequest", "RiseOptions"):
        components[name]["required"] = ["max_turns"]


def test_fuzzed_requests_never_get_a_server_error(live, helpers, tmp_path: Path) -> None:
    schema = httpx.get(f"{live.url}/openapi.json").json()
    solve = schema["components"]["schemas"]["SolveRequest"]["properties"]
    limit = Settings.model_fields["turn_limit"].default  # the live server keeps the default
    assert any(o.get("maximum") == limit for o in solve["max_turns"]["anyOf"])  # the app's bound
    tighten(schema)
    with helpers.client() as api:
        models = [card["id"] for card in api.get("/v1/models").json()["data"]]
    focus(schema, models)
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(schema))
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(path),
        "--url",
        live.url,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "10",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--seed",
        "20261124",
        "--request-timeout",
        "60",
        "--header",
        f"Authorization: Bearer {helpers.key_a}",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    print(result.stdout[-5000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert live.alive()
