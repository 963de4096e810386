"""docs/CONFIGURATION.md's table of every ``RISE_*`` variable is the one the settings classes
generate (scripts/settings_table.py): no setting undocumented, none documented that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from scripts import settings_table

ROOT = settings_table.ROOT
SOURCES = ("rise", "app", "rise_train", "bench", "scripts", "tests")


def test_every_setting_has_a_description() -> None:
    assert settings_table.missing_descriptions() == [], "add description= to these fields"


def test_the_committed_table_is_the_generated_one() -> None:
    document = settings_table.DOC.read_text()
    assert settings_table.with_table(document) == document, (
        "docs/CONFIGURATION.md is stale: run python -m scripts.settings_table"
    )


def test_every_rise_settings_class_is_in_the_table() -> None:
    """A pydantic-settings class with the RISE_ prefix, or one extending a listed class, that
    settings_table.settings_classes() does not name would leave its variables out."""
    listed = {cls.__name__ for cls, _ in settings_table.settings_classes()}
    found = set()
    for folder in SOURCES[:-1]:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}
                prefixed = '"RISE_"' in ast.unparse(node) and "env_prefix" in ast.unparse(node)
                if prefixed or bases & (listed | {"BaseSettings"}):
                    found.add(node.name)
    assert found <= listed, f"settings classes missing from settings_table: {found - listed}"


def _names_read_in_code() -> set[str]:
    """RISE_* names the code reads: quoted in Python, ``$RISE_X`` in shell and the Makefile."""
    quoted = re.compile(r"""["'](RISE_[A-Z0-9_]+)["']""")
    shell = re.compile(r"\$\{?(RISE_[A-Z0-9_]+)|^\s*(?:export\s+)?(RISE_[A-Z0-9_]+)\s*[?:]?=", re.M)
    names: set[str] = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            if path != Path(__file__).resolve():  # this file's made-up names
                names.update(quoted.findall(path.read_text()))
    for path in [*(ROOT / "scripts").glob("*.sh"), ROOT / "Makefile"]:
        names.update(a or b for a, b in shell.findall(path.read_text()))
    return names


def test_every_variable_the_code_reads_is_in_the_table() -> None:
    table = set(re.findall(r"`(RISE_[A-Z0-9_]+)`", settings_table.render_table()))
    missing = _names_read_in_code() - table
    assert not missing, f"read by the code but not in docs/CONFIGURATION.md: {sorted(missing)}"


def test_defaults_and_accepted_values_render_the_same_on_every_machine() -> None:
    rows = {row.name: row for row in settings_table.variables()}
    assert rows["`RISE_DATA_DIR`"].default == "`~/.cache/rise`"  # not this machine's home
    assert rows["`RISE_DTYPE`"].values == "`auto`, `float32`, `bfloat16`, `float16`"
    assert rows["`RISE_PORT`"].values == "integer ≥ 1, ≤ 65535"
    assert rows["`RISE_API_KEYS`"].values == "comma-separated list"
    assert rows["`RISE_BLOCK_SIZE`"].default == "unset"
    assert rows["`RISE_PORT`"].reader == "service" and rows["`RISE_MODEL`"].reader == "engine"


def test_aliases_are_listed_with_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field read under more than one name (a renamed setting that still accepts its old
    name) shows every name in its row, the one to use first."""
    from pydantic import AliasChoices, Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Renamed(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="RISE_")
        turns_limit: int = Field(
            10, validation_alias=AliasChoices("RISE_TURNS_LIMIT", "RISE_MAX_TURNS"), description="x"
        )

    monkeypatch.setattr(settings_table, "settings_classes", lambda: [(Renamed, "service")])
    (row, *_) = settings_table.variables()
    assert row.name == "`RISE_TURNS_LIMIT` (also `RISE_MAX_TURNS`)"


def test_with_table_needs_its_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_table.with_table("# no table here\n")
