"""The package registries this host is configured with: its pip index and its Debian mirror.

Whatever fetches packages on the host's behalf (the container tests' debootstrap base and image
builds, ``tests/deploy/podman.py``; the benchmark's llama.cpp source download,
``bench/bench_cpu.py``) asks here instead of naming an address: a machine that reaches the
internet only through a mirror or a proxy index says so in its apt and pip configuration, and
a hard-coded ``deb.debian.org`` or ``pypi.org`` would fail there. The public defaults are used
only where the host names none, and a warning says so.

- **pip**: ``pip config list`` (every pip configuration file and the ``PIP_*`` variables, as
  pip itself merges them); where pip cannot be run, the configuration files and ``PIP_*``
  read directly.
- **apt**: ``/etc/apt/sources.list`` and ``/etc/apt/sources.list.d/*.list`` (one-line format)
  and ``*.sources`` (deb822), the files apt reads.
- **PyPI's JSON API**: derived from the configured index (``.../simple`` -> ``.../pypi``, what
  PyPI, Nexus and Artifactory serve); ``PYPI_JSON_URL`` overrides it.
"""

from __future__ import annotations

import configparser
import logging
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PUBLIC_DEBIAN_MIRROR = "http://deb.debian.org/debian"
PUBLIC_PYPI_INDEX = "https://pypi.org/simple"
PUBLIC_PYPI_JSON = "https://pypi.org/pypi"

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "cert")
"""The pip settings that say where packages come from (and the CA bundle to trust them by)."""


def redacted(url: str) -> str:
    """``url`` without a password, for log lines (an index URL may carry credentials)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# ---- apt -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One source entry: what apt fetches (``deb``, ``deb-src``) from where, for which suites."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]


def parse_one_line_sources(text: str) -> list[AptSource]:
    """``deb [options] uri suite [component ...]`` lines (``sources.list``, ``*.list``)."""
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):  # options, possibly with spaces inside the brackets
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            sources.append(AptSource((kind,), (rest[0],), (rest[1],)))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 stanzas (``*.sources``): ``Types``, ``URIs``, ``Suites``, ``Enabled``."""
    sources = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        fields = {key: tuple(stanza.get(key, "").split()) for key in ("types", "uris", "suites")}
        if all(fields.values()):
            sources.append(AptSource(fields["types"], fields["uris"], fields["suites"]))
    return sources


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0].isspace() and key is not None:  # a continuation line
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every source entry in the files apt reads, in apt's order."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    sources: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = parse_deb822_sources if path.suffix == ".sources" else parse_one_line_sources
        sources += parse(text)
    return sources


def _os_release(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in lines if "=" in line)
    return {key.strip(): value.strip().strip("\"'") for key, _, value in pairs}


def debian_mirror(suite: str, apt_dir: Path = APT_DIR, os_release: Path = OS_RELEASE) -> str:
    """The Debian mirror to fetch ``suite`` from: the first ``deb`` source that lists the suite;
    else, on a Debian host, the source of the host's own release (a Debian mirror carries
    every current suite); else the public mirror, with a warning."""
    sources = [s for s in apt_sources(apt_dir) if "deb" in s.types]
    release = _os_release(os_release)
    host_suite = release.get("VERSION_CODENAME") if release.get("ID") == "debian" else None
    for wanted in (suite, host_suite):
        for source in sources:
            if wanted and wanted in source.suites:
                for uri in source.uris:
                    if urllib.parse.urlsplit(uri).scheme in ("http", "https", "ftp", "file"):
                        logger.info("Debian mirror for %s: %s (%s)", suite, redacted(uri), apt_dir)
                        return uri.rstrip("/")
    logger.warning(
        "no Debian source for %s in %s; using the public mirror %s",
        suite,
        apt_dir,
        PUBLIC_DEBIAN_MIRROR,
    )
    return PUBLIC_DEBIAN_MIRROR


# ---- pip -----------------------------------------------------------------------------------------

_SECTION_RANK = {"global": 0, "install": 1, "download": 1, ":env:": 2}
"""pip's precedence: a command's section overrides ``global``, ``PIP_*`` variables override
files (``pip config list`` shows them as the section ``:env:``)."""


def parse_pip_config_list(text: str) -> dict[str, str]:
    """``pip config list`` output (``section.key='value'`` lines) -> the effective settings."""
    config: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.strip().rpartition(".")
        rank = _SECTION_RANK.get(section)
        if not (sep and dot) or rank is None or rank < ranks.get(key, -1):
            continue
        config[key] = value.strip().strip("'\"")
        ranks[key] = rank
    return config


def pip_conf_files(env: Mapping[str, str]) -> list[Path]:
    """pip's configuration files, lowest precedence first (``pip config debug`` lists them)."""
    if "PIP_CONFIG_FILE" in env:
        return [Path(env["PIP_CONFIG_FILE"])]
    home = Path(env.get("HOME", Path.home()))
    xdg = env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    return [
        *(Path(folder) / "pip" / "pip.conf" for folder in reversed(xdg)),
        Path("/etc/pip.conf"),
        home / ".pip" / "pip.conf",
        Path(env.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf",
        Path(sys.prefix) / "pip.conf",
    ]


def read_pip_config(files: Iterable[Path], env: Mapping[str, str]) -> dict[str, str]:
    """The settings of pip's configuration ``files`` and the ``PIP_*`` variables of ``env``,
    merged as pip merges them (for when pip itself cannot be asked)."""
    lines = []
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            lines += [f"{section}.{key}={value}" for key, value in parser.items(section)]
    for key in PIP_KEYS:
        value = env.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            lines.append(f":env:.{key}={value}")
    return parse_pip_config_list("\n".join(lines))


def pip_config(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This host's pip settings, from ``pip config list`` (which reads every configuration file
    and the ``PIP_*`` variables), else from the files and variables read directly."""
    env = os.environ if env is None else env
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        return parse_pip_config_list(proc.stdout)
    return read_pip_config(pip_conf_files(env), env)


def index_urls(config: Mapping[str, str]) -> list[str]:
    """The configured indexes, the main one first, then the extra ones."""
    return [*config.get("index-url", "").split(), *config.get("extra-index-url", "").split()]


def pypi_json_base(index_url: str) -> str | None:
    """PyPI's JSON API beside a PEP 503 index: ``https://host/x/simple`` -> ``https://host/x/pypi``
    (PyPI, and the proxies of Nexus and Artifactory); None for a local or other index."""
    parts = urllib.parse.urlsplit(index_url)
    path = parts.path.rstrip("/")
    if parts.scheme not in ("http", "https") or not path.endswith("/simple"):
        return None
    base = parts._replace(path=path.removesuffix("simple") + "pypi", query="", fragment="")
    return urllib.parse.urlunsplit(base)


def pypi_json_url(config: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    """Where to ask PyPI's JSON API: ``PYPI_JSON_URL``; else beside the first configured index
    that has one; else the public PyPI, with a warning."""
    env = os.environ if env is None else env
    if env.get("PYPI_JSON_URL"):
        return env["PYPI_JSON_URL"].rstrip("/")
    for index in index_urls(config):
        base = pypi_json_base(index)
        if base is not None:
            logger.info(
                "PyPI JSON API: %s (beside pip's index %s)", redacted(base), redacted(index)
            )
            return base
    logger.warning(
        "pip names no http(s) index with a JSON API; using the public %s", PUBLIC_PYPI_JSON
    )
    return PUBLIC_PYPI_JSON


def first_index(config: Mapping[str, str]) -> str:
    """The first extra index, else the main one (where a Dockerfile that names an index for
    one package, torch, should look on this host); the public PyPI, with a warning, if none."""
    extras = config.get("extra-index-url", "").split()
    indexes = extras or config.get("index-url", "").split()
    if indexes:
        return indexes[0]
    logger.warning("pip names no index; using the public %s", PUBLIC_PYPI_INDEX)
    return PUBLIC_PYPI_INDEX
