"""Collection across engines: shard the problems, merge the shards back in one order.

``collect --shard i/n`` rolls out problems ``i, i + n, i + 2n, …`` of the loaded list (after
shuffle/offset/limit), so N engines (GPUs, machines) collect at once; every sample's seed comes
from its problem id, turn and candidate (``rise.engine.base.derive_seed``), not from where it
ran. ``merge-shards`` interleaves the shard files back into the unsharded order — each shard
file is already in its own problem order (``collect`` finalises it so) — so the merged file is
the file one engine would have written, and ``build`` makes the same examples from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from rise_train.records import Trajectory, read_trajectories, write_jsonl

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` → ``(1, 4)``: shard index (0-based) and count."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"a shard is INDEX/COUNT, e.g. 0/4 (got {text!r})") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"a shard is INDEX/COUNT with 0 <= INDEX < COUNT (got {text!r})")
    return i, n


def shard_items(items: Sequence[T], index: int, count: int) -> list[T]:
    """Items ``index, index + count, …``: every shard within one of the others' size."""
    return list(items[index::count])


def merge_shards(paths: Sequence[str | Path], output: str | Path) -> list[Trajectory]:
    """Interleave the shard files (given in shard order, 0 first) into ``output``.

    Fails, writing nothing, when the files cannot be shards of one list: sizes that are not
    those of ``shard_items`` (a shard missing or unfinished) or a problem in two shards.
    """
    shards = [read_trajectories(path) for path in paths]
    total, count = sum(len(s) for s in shards), len(shards)
    expected = [len(range(i, total, count)) for i in range(count)]
    sizes = [len(s) for s in shards]
    if sizes != expected:
        raise ValueError(
            f"shard sizes {sizes} are not those of {total} problems in {count} shards "
            f"({expected}): is a shard unfinished, missing or out of order?"
        )
    merged = [shards[k % count][k // count] for k in range(total)]
    ids = [t.problem_id for t in merged]
    if len(set(ids)) != len(ids):
        raise ValueError("a problem appears in two shards: were they cut from the same list?")
    write_jsonl(merged, output, fsync=True)
    return merged
