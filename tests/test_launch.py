"""`echochamber run --procs N`: the ranks it starts, and how it ends when one fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echochamber.cli import main
from echochamber.launch import launch
from echochamber.study.pipeline import read_run


@pytest.mark.slow
def test_the_smoke_study_as_two_ranks_runs_every_stage_and_rank_0_traces_both_parts(tmp_path: Path, capfd) -> None:
    run = tmp_path / "smoke"
    assert main(["run", "--preset", "smoke", "--procs", "2", "--out", str(run)]) == 0
    assert capfd.readouterr().out.count("study finished") == 1  # rank 0 speaks for the job
    assert all(stage["done"] for stage in read_run(run)["stages"].values())
    for phase in ("base", "final"):
        for benchmark in ("world-test", "world-hard"):
            folder = run / "eval" / phase / benchmark
            rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
            # 8 prompts × (1 greedy + 2 sampled), each rank generating half, every row traced.
            assert sorted((r["mode"], r["prompt_id"], r["sample_index"]) for r in rows) == sorted(
                (mode, pid, index) for pid in {r["prompt_id"] for r in rows}
                for mode, n in (("greedy", 1), ("sampled", 2)) for index in range(n)
            )  # fmt: skip
            assert len(rows) == 24 and all(row["provenance"] is not None for row in rows)
            assert json.loads((folder / "results.json").read_text())["n_prompts"] == 8
    lines = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["stage"] == "rl"] == [1, 2]
    assert all(line["provenance"]["generations"] == 16 for line in lines if line["stage"] == "rl")
    assert [line["step"] for line in lines if line["stage"] == "eval"] == [0, 2]
    assert (run / "report" / "index.html").is_file()


def test_a_failing_rank_ends_the_launch_with_its_exit_code_and_one_line(tmp_path: Path, capfd) -> None:
    assert launch(main, ["pretrain", str(tmp_path / "missing.yaml")], 2) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line]
    assert errors and all(line.startswith("echochamber: error: ") for line in errors)  # no traceback


def test_a_run_it_would_refuse_is_refused_once_before_any_rank_starts(tmp_path: Path, capsys) -> None:
    (tmp_path / "run" / "pretrain").mkdir(parents=True)  # a folder run.json does not know about
    assert main(["run", "--preset", "smoke", "--procs", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not record it" in err
    assert main(["run", "--preset", "smoke", "--procs", "0", "--out", str(tmp_path / "other")]) == 2
    assert "--procs N (N >= 1)" in capsys.readouterr().err


def _children_of(launcher: int) -> list[int]:
    """The parent's spawned children (ranks or cells), not multiprocessing's helpers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


LONG = "pretrain.max_steps=100000"  # children that would pretrain for an hour


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children end with their parent on Linux only")
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_children_end_with_a_parent_killed_outright(command: str, tmp_path: Path) -> None:
    """The ranks of `run --procs 2` and the cell processes of `sweep --jobs 2` stop when their parent is
    SIGKILLed mid-pretraining, instead of writing on to the run folder."""
    if command == "run":
        argv = ["run", "--preset", "smoke", "--procs", "2", "--out", str(tmp_path / "run"), "--set", LONG]
    else:  # two seeds: two cells that pretrain at once
        spec = {"name": "long", "base": "smoke", "axes": {"algo": ["grpo"]}, "seeds": [0, 1], "set": [LONG]}
        (tmp_path / "long.yaml").write_text(json.dumps(spec))
        argv = ["sweep", str(tmp_path / "long.yaml"), "--jobs", "2", "--out", str(tmp_path / "sweep")]
    parent = subprocess.Popen(
        [sys.executable, "-m", "echochamber", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(children := _children_of(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children) == 2, f"{command} did not start its two child processes"
    time.sleep(3)  # past the children's start, into their work
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in children), f"a child of {command} outlived its parent"
