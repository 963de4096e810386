"""The host's registries as its apt and pip configuration name them (scripts/registries.py):
parsed from temporary files, no network; the public defaults only where the host names none."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from scripts import registries
from scripts.registries import AptSource

ONE_LINE = """\
# the main archive, from a local mirror
deb [arch=amd64 signed-by=/usr/share/keyrings/d.gpg] http://mirror.internal/debian bookworm main
deb-src http://mirror.internal/debian bookworm main
deb [ trusted=yes ] https://mirror.internal/security bookworm-security main  # comment
deb http://broken
"""

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://off.example.org/debian
Suites: trixie
Components: main
Enabled: no

Types: deb
URIs: http://deb.example.org/debian-security
Suites:
 bookworm-security
Components: main
"""


def _apt(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (tmp_path / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return tmp_path


def test_one_line_sources_skip_options_comments_and_short_lines() -> None:
    assert registries.parse_one_line_sources(ONE_LINE) == [
        AptSource(("deb",), ("http://mirror.internal/debian",), ("bookworm",)),
        AptSource(("deb-src",), ("http://mirror.internal/debian",), ("bookworm",)),
        AptSource(("deb",), ("https://mirror.internal/security",), ("bookworm-security",)),
    ]


def test_deb822_sources_read_stanzas_continuations_and_enabled() -> None:
    assert registries.parse_deb822_sources(DEB822) == [
        AptSource(("deb",), ("http://deb.example.org/debian",), ("bookworm", "bookworm-updates")),
        AptSource(("deb",), ("http://deb.example.org/debian-security",), ("bookworm-security",)),
    ]


def test_debian_mirror_is_the_source_that_lists_the_suite(tmp_path: Path) -> None:
    """deb822 files count like sources.list; files apt ignores (other endings) do not; a
    security or updates suite is not the suite."""
    apt = _apt(
        tmp_path,
        "deb http://security.example.org/debian-security bookworm-security main\n",
        debian_sources=DEB822,
        other_list_disabled="deb http://wrong.example.org/debian bookworm main\n",
    )
    assert registries.debian_mirror("bookworm", apt, tmp_path / "none") == (
        "http://deb.example.org/debian"
    )


def test_debian_mirror_falls_back_to_the_hosts_release_then_the_public_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    apt = _apt(tmp_path / "apt", a_list="deb http://mirror.internal/debian/ trixie main\n")
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=debian\nVERSION_CODENAME="trixie"\n')
    # a Debian host's own mirror serves the other suites too
    assert registries.debian_mirror("bookworm", apt, os_release) == "http://mirror.internal/debian"
    os_release.write_text("ID=ubuntu\nVERSION_CODENAME=trixie\n")  # not a Debian mirror
    with caplog.at_level(logging.WARNING, logger=registries.__name__):
        assert registries.debian_mirror("bookworm", apt, os_release) == (
            registries.PUBLIC_DEBIAN_MIRROR
        )
    assert "public mirror" in caplog.text
    empty = _apt(tmp_path / "empty")
    assert registries.debian_mirror("bookworm", empty, os_release) == (
        registries.PUBLIC_DEBIAN_MIRROR
    )


def test_pip_config_list_merges_as_pip_does() -> None:
    """A command's section overrides global, PIP_* variables (``:env:``) override files; other
    commands' sections are not ours."""
    text = """\
global.index-url='https://files.example/simple'
global.cert='/etc/ssl/certs/ca.crt'
install.index-url='https://install.example/simple'
freeze.index-url='https://freeze.example/simple'
:env:.cert='/tmp/proxy.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'
"""
    assert registries.parse_pip_config_list(text) == {
        "index-url": "https://install.example/simple",
        "cert": "/tmp/proxy.crt",
        "extra-index-url": "file:///opt/pypi/simple file:///opt/more/simple",
    }


def test_pip_configuration_files_and_variables_without_pip(tmp_path: Path) -> None:
    """Where pip cannot be asked: its files, later ones winning, then the PIP_* variables."""
    system, user = tmp_path / "pip.conf", tmp_path / "user.conf"
    system.write_text("[global]\nindex-url = https://system.example/simple\ncert = /a.crt\n")
    user.write_text("[global]\nindex-url = https://user.example/simple\n")
    env = {"PIP_CERT": "/b.crt", "PIP_FIND_LINKS": "/opt/wheels"}
    assert registries.read_pip_config([system, user, tmp_path / "absent"], env) == {
        "index-url": "https://user.example/simple",
        "cert": "/b.crt",
        "find-links": "/opt/wheels",
    }
    assert registries.pip_conf_files({"PIP_CONFIG_FILE": str(user)}) == [user]
    assert Path("/etc/pip.conf") in registries.pip_conf_files({"HOME": str(tmp_path)})


def test_pip_config_falls_back_to_the_files_when_pip_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n")
    monkeypatch.setattr(registries.sys, "executable", str(tmp_path / "no-python"))
    config = registries.pip_config({"PIP_CONFIG_FILE": str(conf)})
    assert config == {"index-url": "https://mirror.example/simple"}


@pytest.mark.parametrize(
    ("index", "json_api"),
    [
        ("https://pypi.org/simple", "https://pypi.org/pypi"),
        ("https://pypi.org/simple/", "https://pypi.org/pypi"),
        (
            "https://nexus.example/repository/pypi-proxy/simple",
            "https://nexus.example/repository/pypi-proxy/pypi",
        ),
        ("https://u:p@art.example/api/pypi/py/simple", "https://u:p@art.example/api/pypi/py/pypi"),
        ("file:///opt/pypi/simple", None),  # a local index has no JSON API
        ("https://devpi.example/root/pypi/+simple/", None),
    ],
)
def test_pypi_json_api_beside_the_index(index: str, json_api: str | None) -> None:
    assert registries.pypi_json_base(index) == json_api


def test_pypi_json_url_follows_the_override_then_the_indexes_then_pypi(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {"extra-index-url": "file:///opt/pypi/simple https://mirror.example/simple"}
    assert registries.pypi_json_url(config, env={}) == "https://mirror.example/pypi"
    with_main = {**config, "index-url": "https://main.example/simple"}
    assert registries.pypi_json_url(with_main, env={}) == "https://main.example/pypi"
    override = {"PYPI_JSON_URL": "https://json.example/pypi/"}
    assert registries.pypi_json_url(with_main, env=override) == "https://json.example/pypi"
    local = {"extra-index-url": "file:///opt/pypi/simple"}
    with caplog.at_level(logging.WARNING, logger=registries.__name__):
        assert registries.pypi_json_url(local, env={}) == registries.PUBLIC_PYPI_JSON
    assert "public" in caplog.text


def test_first_index_prefers_the_extra_indexes(caplog: pytest.LogCaptureFixture) -> None:
    both = {"index-url": "https://main.example/simple", "extra-index-url": "file:///a file:///b"}
    assert registries.first_index(both) == "file:///a"
    assert registries.first_index({"index-url": "https://main.example/simple"}) == (
        "https://main.example/simple"
    )
    with caplog.at_level(logging.WARNING, logger=registries.__name__):
        assert registries.first_index({}) == registries.PUBLIC_PYPI_INDEX
    assert "public" in caplog.text


def test_log_lines_hide_passwords() -> None:
    assert (
        registries.redacted("https://u:secret@host:8443/simple") == "https://u:***@host:8443/simple"
    )
    assert registries.redacted("https://host/simple") == "https://host/simple"
