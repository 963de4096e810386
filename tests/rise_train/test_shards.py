"""Sharded collection: problems cut across engines, shard files merged back in one order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rise_train.cli import app
from rise_train.records import read_trajectories
from rise_train.shards import merge_shards, parse_shard, shard_items
from tests.rise_train.test_cli import trajectory


def test_parse_shard() -> None:
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0", "1/"):
        with pytest.raises(ValueError, match="INDEX/COUNT"):
            parse_shard(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 12])
def test_shards_partition_and_merge_back_in_order(tmp_path: Path, count: int) -> None:
    ids = [f"p{i:02d}" for i in range(10)]
    shards = [shard_items(ids, i, count) for i in range(count)]
    assert sorted(pid for part in shards for pid in part) == ids  # every problem once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    paths = []
    for i, part in enumerate(shards):
        path = tmp_path / f"s{i}.jsonl"
        path.write_text("".join(json.dumps(trajectory(pid, ["wrong"])) + "\n" for pid in part))
        paths.append(path)
    merged = merge_shards(paths, tmp_path / "all.jsonl")
    assert [t.problem_id for t in merged] == ids  # the unsharded order
    assert [t.problem_id for t in read_trajectories(tmp_path / "all.jsonl")] == ids


def test_merge_refuses_what_cannot_be_shards(tmp_path: Path) -> None:
    def write(name: str, pids: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(trajectory(p, ["wrong"])) + "\n" for p in pids))
        return path

    a, b = write("a.jsonl", ["p0", "p2", "p4"]), write("b.jsonl", ["p1"])  # b unfinished
    with pytest.raises(ValueError, match="shard sizes"):
        merge_shards([a, b], tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="shard sizes"):
        merge_shards([b, a], tmp_path / "out.jsonl")  # out of order
    twice = write("c.jsonl", ["p0", "p3"])
    with pytest.raises(ValueError, match="two shards"):
        merge_shards([write("d.jsonl", ["p0", "p2"]), twice], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # nothing written


def test_cli_shard_and_merge(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["collect", "--data", str(tmp_path / "x.jsonl"), "--shard", "2/2"])
    assert bad.exit_code == 2 and "--shard" in " ".join(bad.output.replace("│", " ").split())
    parts = [tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"]
    for path, pids in zip(parts, (["a", "c"], ["b"]), strict=True):
        path.write_text("".join(json.dumps(trajectory(p, ["wrong"])) + "\n" for p in pids))
    out = tmp_path / "all.jsonl"
    done = runner.invoke(app, ["merge-shards", *map(str, parts), "--output", str(out)])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["trajectories"] == 3
    assert [t.problem_id for t in read_trajectories(out)] == ["a", "b", "c"]
    clobber = runner.invoke(app, ["merge-shards", *map(str, parts), "--output", str(parts[0])])
    assert clobber.exit_code == 2
