"""Data collection: candidate choice, stopping, degenerate filtering, teacher, resume, file format.

Logic runs on a scripted engine whose reply is keyed by the per-request seed (so every candidate
of every turn can be scripted); the real vLLM CPU engine runs with the parrot model (always 7).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from rise.engine.base import EngineError, GenerationChunk, SamplingConfig, derive_seed
from rise_train.build import BuildConfig, build_examples
from rise_train.collect import (
    CollectConfig,
    TeacherConfig,
    collect,
    first_best,
    is_degenerate,
)
from rise_train.datasets import Problem
from rise_train.records import read_trajectories
from tests.scripted_engine import ScriptedEngineBase

TURN_KEYS = {"index", "user_message", "prompt_ids", "candidates", "chosen", "dropped", "feedback"}
CANDIDATE_KEYS = {"text", "output_ids", "ended_with_eos", "answer", "outcome", "reward", "source"}
RECORD_KEYS = {
    *("problem_id", "question", "reference", "grader", "source", "context", "turns"),
    *("iteration", "seed"),
}


def read_trajectory_file(path: Path) -> list[dict]:
    """The file's records as their JSON dicts (the shape the assertions below check)."""
    return [t.to_dict() for t in read_trajectories(path, repair=True)]


def problems(n: int, reference: Callable[[int], str] = lambda i: "7") -> list[Problem]:
    return [
        Problem(f"p-{i}", f"Question {i}: what is {i} plus 3?", reference(i), "test", "gsm8k")
        for i in range(n)
    ]


class SeedScriptedEngine(ScriptedEngineBase):
    """Replies with ``script[(problem index, turn, candidate)]`` found through the request seed."""

    def __init__(self, tokenizer, problems: Sequence[Problem], script, config: CollectConfig):
        super().__init__(tokenizer)
        self.script = script  # (i, turn, candidate) -> reply; missing -> "The answer is 0."
        self.by_seed = {
            derive_seed(config.seed, config.iteration, p.id, t, c): (i, t, c)
            for i, p in enumerate(problems)
            for t in range(config.max_turns)
            for c in range(max(config.samples) + 8)
        }
        self.requests: list[tuple[int, int, int]] = []
        self.fail_on: int | None = None  # problem index whose request raises

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingConfig,
        request_id: str,
        affinity: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[GenerationChunk]:
        key = self.by_seed[sampling.seed]
        self.requests.append(key)
        if key[0] == self.fail_on:
            raise EngineError("scripted crash")
        reply = self.script(*key)
        yield GenerationChunk(self.reply_ids(reply), reply, finished=True, finish_reason="stop")


def check_record(record: dict, problem: Problem, max_turns: int) -> None:
    assert set(record) >= RECORD_KEYS
    assert record["problem_id"] == problem.id and record["reference"] == problem.reference
    assert 1 <= len(record["turns"]) <= max_turns
    for t, turn in enumerate(record["turns"]):
        assert set(turn) == TURN_KEYS and turn["index"] == t
        assert turn["candidates"] and 0 <= turn["chosen"] < len(turn["candidates"])
        for cand in turn["candidates"]:
            assert set(cand) == CANDIDATE_KEYS
            assert (
                cand["reward"]
                == {"correct": 1.0, "wrong": 0.0, "unparseable": -1.0}[cand["outcome"]]
            )
        rewards = [c["reward"] for c in turn["candidates"]]
        assert turn["chosen"] == rewards.index(max(rewards))  # the FIRST best
    chosen = [turn["candidates"][turn["chosen"]] for turn in record["turns"]]
    assert all(c["outcome"] != "correct" for c in chosen[:-1])  # stops at the first correct


# -- pure helpers ------------------------------------------------------------------------------


def test_is_degenerate_empty_and_repeats() -> None:
    assert is_degenerate("") and is_degenerate("  \n ")
    assert not is_degenerate("the answer is 7")
    assert not is_degenerate("go " * 150)
    assert is_degenerate("go " * 151)
    assert is_degenerate("a b " * 11, max_word_repeats=10)


def test_first_best_keeps_the_first_maximum() -> None:
    assert first_best([0.0, 1.0, 1.0, -1.0]) == 1
    assert first_best([-1.0, -1.0]) == 0
    assert first_best([-1.0, 0.0, 0.0]) == 1


def test_derive_seed_is_stable_and_distinct() -> None:
    seeds = {derive_seed(3, 0, pid, t, c) for pid in "ab" for t in range(2) for c in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(3, 0, "a", 1, 2) == derive_seed(3, 0, "a", 1, 2)
    assert derive_seed(3, 0, "a", 1, 2) != derive_seed(4, 0, "a", 1, 2)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        CollectConfig(samples=(0,))
    with pytest.raises(ValueError):
        CollectConfig(samples=(1, 0))
    with pytest.raises(ValueError):
        CollectConfig(max_turns=0)
    with pytest.raises(ValueError, match="turn 1"):
        CollectConfig(samples=(0, 4), teacher=TeacherConfig("http://x/v1", "t"))
    CollectConfig(samples=(1, 0), teacher=TeacherConfig("http://x/v1", "t"))


# -- rollouts on a scripted engine ----------------------------------------------------------------


async def test_collect_chooses_first_best_and_stops_when_correct(tmp_path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=3, samples=(4,))
    probs = problems(3)

    def script(i: int, turn: int, cand: int) -> str:
        if i == 0:  # turn 0: candidates 2 and 3 correct -> choose 2, stop
            return "The answer is 7." if cand >= 2 else "I think 5."
        if i == 1:  # wrong, wrong, then candidate 1 right at turn 2
            return "So 7." if (turn, cand) == (2, 1) else f"Maybe {turn}{cand}1."
        return "no idea" if cand == 0 else "it is 9"  # wrong beats unparseable: chosen = 1

    engine = SeedScriptedEngine(tiny_tokenizer, probs, script, config)
    out = tmp_path / "traj.jsonl"
    stats = await collect(engine, probs, out, config, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["problem_id"] for r in records] == ["p-0", "p-1", "p-2"]
    for record, problem in zip(records, probs, strict=True):
        check_record(record, problem, 3)
    assert [len(r["turns"]) for r in records] == [1, 3, 3]
    assert records[0]["turns"][0]["chosen"] == 2
    assert records[1]["turns"][2]["chosen"] == 1
    assert [t["chosen"] for t in records[2]["turns"]] == [1, 1, 1]
    assert records[2]["turns"][0]["candidates"][0]["outcome"] == "unparseable"
    # The state of turn t+1 is the state of turn t + the CHOSEN action + the introspection turn.
    t0, t1 = records[1]["turns"][:2]
    prefix = t0["prompt_ids"] + t0["candidates"][t0["chosen"]]["output_ids"]
    assert t1["prompt_ids"][: len(prefix)] == prefix
    assert "Please try again" in t1["user_message"]
    assert stats.problems == 3 and stats.solved == 2 and stats.solved_at_turn == [1, 0, 1]


async def test_collect_drops_degenerate_candidates(tmp_path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=2, samples=(3,), max_word_repeats=20)
    probs = problems(2)

    def script(i: int, turn: int, cand: int) -> str:
        if i == 0:
            return "7 " * 30 if cand == 0 else ("" if cand == 1 else "It is 8.")
        return "loop " * 25  # every candidate degenerate: no action, trajectory ends

    engine = SeedScriptedEngine(tiny_tokenizer, probs, script, config)
    out = tmp_path / "traj.jsonl"
    stats = await collect(engine, probs, out, config, progress=False)
    first, second = read_trajectory_file(out)
    assert [len(t["candidates"]) for t in first["turns"]] == [1, 1]
    assert all(t["dropped"] == 2 for t in first["turns"])
    assert first["turns"][0]["candidates"][0]["text"] == "It is 8."
    assert second["turns"] == []
    assert stats.dropped == 4 + 0  # the second problem wrote no turn to count


async def test_collect_with_teacher_candidates(tmp_path, tiny_tokenizer) -> None:
    class FakeTeacher:
        def __init__(self) -> None:
            self.calls: list[list[dict[str, str]]] = []

        async def complete(self, messages, n, seeds, max_tokens):
            self.calls.append(messages)
            return ["Wrong: 2.", "Right: \\boxed{7}"][:n]

    teacher = FakeTeacher()
    config = CollectConfig(
        max_turns=2, samples=(1,), teacher=TeacherConfig("http://unused/v1", "big", samples=2)
    )
    probs = problems(1)
    engine = SeedScriptedEngine(tiny_tokenizer, probs, lambda *k: "It is 5.", config)
    out = tmp_path / "traj.jsonl"
    await collect(engine, probs, out, config, teacher=teacher, progress=False)
    (record,) = read_trajectory_file(out)
    first, turn = record["turns"]
    # The teacher answers corrections only: turn 1 is the learner's own attempt.
    assert [c["source"] for c in first["candidates"]] == ["policy"]
    assert [c["source"] for c in turn["candidates"]] == ["policy", "teacher", "teacher"]
    assert turn["chosen"] == 2 and turn["candidates"][2]["answer"] == "7"
    teacher_ids = turn["candidates"][2]["output_ids"]
    assert (
        teacher_ids[-1] == tiny_tokenizer.eos_token_id and turn["candidates"][2]["ended_with_eos"]
    )
    assert (
        teacher.calls[0][-1]["role"] == "user" and "Question 0" in teacher.calls[0][-1]["content"]
    )
    assert len(teacher.calls) == 1
    assert teacher.calls[0][-2] == {"role": "assistant", "content": "It is 5."}


async def test_collect_resumes_after_a_crash(tmp_path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=2, samples=(2,), concurrency=1)
    probs = problems(6)

    def script(i: int, turn: int, cand: int) -> str:
        return "It is 7." if turn == 1 else "It is 6."

    engine = SeedScriptedEngine(tiny_tokenizer, probs, script, config)
    engine.fail_on = 4  # problems 0-3 finish, then the "engine" dies
    out = tmp_path / "traj.jsonl"
    with pytest.raises(EngineError):
        await collect(engine, probs, out, config, progress=False)
    assert [r["problem_id"] for r in read_trajectory_file(out)] == ["p-0", "p-1", "p-2", "p-3"]
    # A crash mid-write leaves a partial last line: cut p-3's line in half.
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last_start + (len(data) - last_start) // 2])

    engine.fail_on, engine.requests = None, []
    stats = await collect(engine, probs, out, config, progress=False)
    assert sorted({i for i, _, _ in engine.requests}) == [3, 4, 5]  # only unfinished problems
    records = read_trajectory_file(out)
    assert [r["problem_id"] for r in records] == [p.id for p in probs]
    for record, problem in zip(records, probs, strict=True):
        check_record(record, problem, 2)
    assert stats.resumed == 3 and stats.problems == 6

    # Same inputs, fresh file: byte-identical output (order and content are deterministic).
    again = tmp_path / "again.jsonl"
    await collect(engine, probs, again, config, progress=False)
    assert again.read_bytes() == out.read_bytes()


def test_read_trajectory_file_refuses_damage_before_the_end(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem_id": "a"}\n{"problem_id": \n{"problem_id": "c"}\n')
    with pytest.raises(ValueError, match="corrupt"):
        read_trajectory_file(path)


# -- the real engine (parrot: always "The answer is \\boxed{7}.") -------------------------------


@pytest.mark.engine
@pytest.mark.slow
async def test_collect_on_parrot_engine(tmp_path, parrot_engine) -> None:
    probs = problems(8, reference=lambda i: "7" if i % 2 == 0 else "8")
    config = CollectConfig(max_turns=2, samples=(3,), temperatures=(0.0,), max_tokens=40)
    out = tmp_path / "parrot.jsonl"
    stats = await collect(parrot_engine, probs, out, config, progress=False)
    records = read_trajectory_file(out)
    assert [r["problem_id"] for r in records] == [p.id for p in probs]
    for i, (record, problem) in enumerate(zip(records, probs, strict=True)):
        check_record(record, problem, 2)
        assert len(record["turns"]) == (1 if i % 2 == 0 else 2)
        for turn in record["turns"]:
            assert [c["answer"] for c in turn["candidates"]] == ["7"] * 3
            assert turn["chosen"] == 0
            assert all(c["ended_with_eos"] and c["source"] == "policy" for c in turn["candidates"])
        if len(record["turns"]) == 2:
            t0, t1 = record["turns"]
            prefix = t0["prompt_ids"] + t0["candidates"][0]["output_ids"]
            assert t1["prompt_ids"][: len(prefix)] == prefix
    assert stats.solved == 4 and stats.candidates == 3 * (4 + 8)
    # The build step reads these records: correct turns weigh exp(1/0.4), wrong ones exp(0).
    examples, stats = build_examples(records, BuildConfig(shuffle=False))
    # Right at once (4), or wrong twice (4 problems): the parrot's second "7" repeats its first
    # attempt, which within-trajectory de-duplication (RISE's, on by default) drops.
    assert len(examples) == 4 + 4 and stats.repeats_earlier_action == 4
    every, _ = build_examples(records, BuildConfig(shuffle=False, dedup_trajectory=False))
    assert len(every) == 4 + 2 * 4  # one per (state, action)
    for ex in examples:
        assert ex.weight == pytest.approx(math.exp(ex.reward / 0.4))


async def test_trajectory_paths_are_created(tmp_path: Path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=1, samples=(1,))
    probs = problems(1)
    engine = SeedScriptedEngine(tiny_tokenizer, probs, lambda *k: "7", config)
    out = tmp_path / "deep" / "dir" / "t.jsonl"
    await collect(engine, probs, out, config, progress=False)
    assert read_trajectory_file(out)[0]["turns"][0]["candidates"][0]["outcome"] == "correct"


# -- RISE's sample schedule and the anti-collapse options --------------------------------------


async def test_schedule_one_attempt_then_best_of_n(tmp_path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=3, samples=(1, 4), temperatures=(0.7, 1.0))
    probs = problems(2)

    def script(i: int, turn: int, cand: int) -> str:
        if turn == 0:
            return "It is 7." if i == 0 else "It is 5."  # p-0 right at once, p-1 wrong
        return "So 7." if cand == 3 else "Still 5."  # the 4th correction candidate is right

    temperatures: dict[int, set[float]] = {}

    class Recording(SeedScriptedEngine):
        async def generate(self, prompt_ids, sampling, request_id, affinity=None, stream=True):
            turn = self.by_seed[sampling.seed][1]
            temperatures.setdefault(turn, set()).add(sampling.temperature)
            async for chunk in super().generate(prompt_ids, sampling, request_id, affinity, stream):
                yield chunk

    engine = Recording(tiny_tokenizer, probs, script, config)
    out = tmp_path / "traj.jsonl"
    stats = await collect(engine, probs, out, config, progress=False)
    first, second = read_trajectory_file(out)
    assert [len(t["candidates"]) for t in first["turns"]] == [1]  # solved: stop (RISE)
    assert [len(t["candidates"]) for t in second["turns"]] == [1, 4]
    assert second["turns"][1]["chosen"] == 3
    assert sorted(engine.requests) == [(0, 0, 0), (1, 0, 0)] + [(1, 1, c) for c in range(4)]
    assert temperatures == {0: {0.7}, 1: {1.0}}
    assert stats.solved_at_turn == [1, 1, 0] and stats.candidates == 6


async def test_continue_after_correct_keeps_rolling_out(tmp_path, tiny_tokenizer) -> None:
    config = CollectConfig(max_turns=3, samples=(1, 2), continue_after_correct=True)
    probs = problems(1)
    engine = SeedScriptedEngine(
        tiny_tokenizer, probs, lambda i, t, c: "It is 7." if c == 1 or t == 0 else "9", config
    )
    out = tmp_path / "traj.jsonl"
    stats = await collect(engine, probs, out, config, progress=False)
    (record,) = read_trajectory_file(out)
    assert [len(t["candidates"]) for t in record["turns"]] == [1, 2, 2]
    assert [t["chosen"] for t in record["turns"]] == [0, 1, 1]  # the right one is kept
    assert stats.solved == 1 and stats.solved_at_turn == [1, 0, 0]


def test_parse_schedule() -> None:
    from rise_train.collect import parse_schedule

    assert parse_schedule("1,16") == (1, 16)
    assert parse_schedule("0.7, 1.0", float) == (0.7, 1.0)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_schedule("1,x")
    assert CollectConfig(samples=(1, 16)).samples_at(5) == 16


async def test_collect_with_calculator_feedback_names_the_slip_in_the_next_state(
    tmp_path, tiny_tokenizer
) -> None:
    """``--feedback calculator``: the chosen attempt's slip is named in the next state's user
    message, the record keeps the feedback, and an example answering it says so."""
    config = CollectConfig(max_turns=2, samples=(1, 2), feedback="calculator")
    probs = problems(1, reference=lambda i: "72")

    def script(i: int, turn: int, cand: int) -> str:
        return "12 x 6 = 62. The answer is 62." if turn == 0 else "12 x 6 = 72. The answer is 72."

    engine = SeedScriptedEngine(tiny_tokenizer, probs, script, config)
    out = tmp_path / "traj.jsonl"
    await collect(engine, probs, out, config, progress=False)
    (record,) = read_trajectory_file(out)
    first, second = record["turns"]
    assert first["feedback"]["provider"] == "calculator"
    assert first["feedback"]["slips"] == ["12 x 6 = 72, not 62"]
    assert "Check your arithmetic: 12 x 6 = 72, not 62." in second["user_message"]
    assert second["feedback"]["verdict"] == "unknown"
    rows, _ = build_examples(read_trajectories(out), BuildConfig(criteria="success"))
    assert [r.feedback for r in rows] == ["calculator:incorrect"]  # type: ignore[union-attr]


async def test_collect_refuses_an_unknown_feedback_before_any_rollout(
    tmp_path, tiny_tokenizer
) -> None:
    config = CollectConfig(max_turns=2, feedback="nope")
    probs = problems(1)
    engine = SeedScriptedEngine(tiny_tokenizer, probs, lambda *k: "7", config)
    with pytest.raises(KeyError, match="unknown feedback"):
        await collect(engine, probs, tmp_path / "t.jsonl", config, progress=False)
    assert engine.requests == []


async def test_solution_teacher_fills_only_what_best_of_n_could_not_correct(
    tmp_path, tiny_tokenizer
) -> None:
    """``solution_teacher``: a correction turn without a right candidate gets the problem's worked
    solution as one more (chosen, it is right); a turn best-of-N corrected, turn 1 and a problem
    without a solution get none; the summary counts the actions by source."""
    from rise_train.collect import summarize

    config = CollectConfig(max_turns=2, samples=(1, 2), solution_teacher=True)
    solution = "3 + 4 = 7.\nThe answer is \\boxed{7}."
    probs = [
        Problem("p-0", "Question 0: what is 3 plus 4?", "7", "test", "gsm8k", solution=solution),
        Problem("p-1", "Question 1: what is 3 plus 4?", "7", "test", "gsm8k", solution=solution),
        Problem("p-2", "Question 2: what is 3 plus 4?", "7", "test", "gsm8k"),  # no solution
    ]

    def script(i: int, turn: int, cand: int) -> str:
        return "The answer is 7." if (i, turn, cand) == (1, 1, 1) else "The answer is 5."

    engine = SeedScriptedEngine(tiny_tokenizer, probs, script, config)
    out = tmp_path / "traj.jsonl"
    await collect(engine, probs, out, config, progress=False)
    records = read_trajectory_file(out)
    for record, problem in zip(records, probs, strict=True):
        check_record(record, problem, 2)
    sources = [[[c["source"] for c in t["candidates"]] for t in r["turns"]] for r in records]
    assert sources == [
        [["policy"], ["policy", "policy", "solution"]],  # best-of-2 failed: the solution
        [["policy"], ["policy", "policy"]],  # best-of-2 corrected it
        [["policy"], ["policy", "policy"]],  # nothing to fill with
    ]
    taught = records[0]["turns"][1]
    assert taught["chosen"] == 2 and taught["candidates"][2]["text"] == solution
    assert taught["candidates"][2]["output_ids"][-1] == tiny_tokenizer.eos_token_id
    stats = summarize(read_trajectories(out), 2)
    assert stats.actions_by_source == {"policy": 5, "solution": 1}
    assert stats.solved == 2
