"""Benchmark name -> problems: the one place that knows where each benchmark's prompts and gold
answers come from (the eval suite and RL's periodic evaluation both ask here).

    world-test, world-hard   the controlled world's test and hard (transfer) splits, rebuilt from its
                             WorldConfig (deterministic: the same config, the same problems)
    world-<k>step            the test split of each k-step rung declared in world.ladder
    gsm8k, math500, aime     real benchmarks in a data folder laid out like shared/data
                             (`--data`, $ECHOCHAMBER_DATA, or a shared/data beside the checkout)

A world problem set is taken in one rendering style because only its question and gold answer are
used: the model is prompted with the question, whatever format it then answers in.
"""

from __future__ import annotations

from pathlib import Path

from echochamber.data.paths import ENV_VAR, data_dir
from echochamber.data.records import Record
from echochamber.data.world import WorldConfig, rung_splits, world_records
from echochamber.errors import UserError

# Real benchmarks inside a folder laid out like shared/data (see echochamber.data.paths.data_dir).
BENCHMARK_FILES: dict[str, str] = {
    "gsm8k": "gsm8k/test.jsonl",
    "math500": "math500/test.jsonl",
    "aime": "aime/aime_22_23_24.jsonl",
}
BENCHMARKS = ("world-test", "world-hard", *BENCHMARK_FILES)


def check_benchmark(name: str, world: WorldConfig) -> None:
    """A one-line error for a benchmark name that names no problem set (before any compute)."""
    known = (*BENCHMARKS, *(f"world-{split}" for split in rung_splits(world)))
    if name not in known:
        raise UserError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(known)} "
            "(world-<k>step needs a k-step rung in world.ladder)"
        )


def world_problems(world: WorldConfig, split: str) -> list[Record]:
    """A world split as questions with gold answers (any style would do; see the module docstring)."""
    return world_records(world, split, "gsm8k")


def load_benchmark(name: str, world: WorldConfig, data: str | None = None) -> list[Record]:
    """The problems of benchmark `name`: a split of `world`, or a real benchmark from the data folder
    `data` (default: $ECHOCHAMBER_DATA, then shared/data beside the checkout)."""
    check_benchmark(name, world)
    if name.startswith("world-"):
        return world_problems(world, name.removeprefix("world-"))
    if data is not None and not Path(data).is_dir():
        raise UserError(f"data folder {data} does not exist")
    folder = data_dir(data)
    if folder is None:
        raise UserError(f"benchmark {name} reads the real data: pass --data DIR or set ${ENV_VAR}")
    return benchmark_records(name, folder)


def benchmark_records(name: str, folder: Path) -> list[Record]:
    """A real benchmark (gsm8k, math500, aime) from a folder laid out like shared/data."""
    if name not in BENCHMARK_FILES:
        raise UserError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARK_FILES)}")
    file = Path(folder) / BENCHMARK_FILES[name]
    if not file.is_file():
        raise UserError(
            f"benchmark {name}: {file} not found (expected a data folder laid out like shared/data)"
        )
    from echochamber.data.sources import load_source  # `datasets` takes a second to import: only here

    return load_source(name, path=file)
