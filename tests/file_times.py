"""Snapshots of a folder's files, to tell that a restart rewrote nothing (tests only)."""

from __future__ import annotations

from pathlib import Path


def file_times(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time: a rewrite changes one. A folder
    that does not exist has no files."""
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
