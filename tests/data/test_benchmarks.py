"""Benchmark name -> problems: the world's splits from its config, real benchmarks from the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from echochamber.data.benchmarks import BENCHMARKS, benchmark_records, load_benchmark, world_problems
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError


def test_benchmark_records(shared_data: Path, tmp_path: Path) -> None:
    assert [len(benchmark_records(name, shared_data)) for name in ("gsm8k", "math500", "aime")] == [
        1319,
        500,
        90,
    ]
    with pytest.raises(UserError, match="unknown benchmark 'mmlu'"):
        benchmark_records("mmlu", shared_data)
    with pytest.raises(UserError, match="gsm8k/test.jsonl not found"):
        benchmark_records("gsm8k", tmp_path)


def test_world_benchmarks_are_the_worlds_splits_and_names_are_checked_first(tmp_path: Path) -> None:
    world = WorldConfig(n_pretrain=50, n_rl=10, n_test=7, n_hard=5)
    test = load_benchmark("world-test", world)
    assert [r.id for r in test] == [r.id for r in world_problems(world, "test")] and len(test) == 7
    assert len(load_benchmark("world-hard", world)) == 5
    assert all(r.answer.lstrip("-").isdigit() for r in test)
    with pytest.raises(UserError, match="unknown benchmark 'mmlu'.*world-test, world-hard, gsm8k"):
        load_benchmark("mmlu", world, data=str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_benchmark("aime", world, data=str(tmp_path / "nowhere"))
    assert BENCHMARKS == ("world-test", "world-hard", "gsm8k", "math500", "aime")
