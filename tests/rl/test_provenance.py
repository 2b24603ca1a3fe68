"""RL with a tracer: every rollout row and every metrics line carries provenance, computed on that
step's rollouts; without shards RL says so once and runs. The shards hold the fixture policy's prose
answers as their own source ("prose"), so which rollouts echo them is known by construction."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_core import resume_config, rl_lines, tiny_config

from echochamber.config import from_dict, save_config
from echochamber.data.mixture import MixtureConfig, build_shards
from echochamber.provenance.records import pooled
from echochamber.provenance.tracer import Tracer
from echochamber.rl.core import run_rl
from echochamber.rl.rollout import read_rollouts
from echochamber.runlog import read_metrics

ANSWERS = ("2", "5")


@pytest.fixture(scope="module")
def prose_shards(tiny_policy, fitted_texts, test_world, tmp_path_factory) -> Path:
    """The policy's own tokenizer; source "prose": every fitted question with its two prose answers;
    source "omi2": world text (the code answers are in neither)."""
    question, short_answer = fitted_texts
    folder = tmp_path_factory.mktemp("prose")
    with (folder / "prose.jsonl").open("w") as out:
        for i in range(64):
            for answer in ANSWERS:
                out.write(json.dumps({"question": question(i), "code": short_answer(False, answer)}) + "\n")
    spec = {
        "seed": 0, "val_docs": 4, "workers": 1, "world": dataclasses.asdict(test_world),
        "tokenizer": {"path": str(tiny_policy)},
        "sources": [{"dataset": "tinygsm", "path": str(folder / "prose.jsonl"), "name": "prose"}, {"world": "omi2"}],
    }  # fmt: skip
    build_shards(from_dict(MixtureConfig, spec), folder / "shards", progress=False)
    return folder / "shards"


def test_every_step_and_rollout_carries_provenance(
    tiny_policy, two_answer_prompts, test_world, grader, prose_shards, fitted_texts, tmp_path
) -> None:
    _, short_answer = fitted_texts
    out = tmp_path / "run"
    prompts = {"dataset": "gsm8k", "path": str(two_answer_prompts)}
    config = tiny_config(tiny_policy, out, test_world, prompts=prompts)
    run_rl(config, algo="grpo", grader=grader, tracer=Tracer(prose_shards))

    prose = {short_answer(False, answer) for answer in ANSWERS}
    code = {short_answer(True, answer) for answer in ANSWERS}
    seen = {"prose": 0, "code": 0}
    for line in rl_lines(out):
        rollouts = read_rollouts(out / "rollouts" / f"step_{line['step']:06d}.jsonl.gz")
        assert line["provenance"] == pooled(rollouts) and line["provenance"]["generations"] == 16
        assert set(line["provenance"]["unique_share"]) == {"prose", "omi2"}
        assert line["time_trace"] > 0
        for row in rollouts:
            p = row["provenance"]
            if row["text"] in prose:  # a fitted prose answer is one of "prose"'s documents, whole
                seen["prose"] += 1
                assert p["dominant_source"] == "prose" and p["novelty"] == 0.0
                assert p["longest_match"]["tokens"] == row["n_tokens"] - 1  # all but its EOS
            elif row["text"] in code:  # the code answers were never pretrained on
                seen["code"] += 1
                assert p["dominant_source"] != "prose" and p["novelty"] > 0.5
    assert min(seen.values()) > 0, seen  # the fitted policy writes both (conftest.py)
    for evaluation in read_metrics(out / "metrics.jsonl", "eval"):
        assert evaluation["greedy"]["provenance"]["generations"] == 3
        assert evaluation["sampled"]["provenance"]["generations"] == 6


def test_without_shards_rl_runs_and_says_so_once(tiny_policy, test_world, grader, tmp_path, capsys) -> None:
    config = tiny_config(tiny_policy, tmp_path / "run", test_world, max_steps=1, eval_every=1)
    run_rl(config, algo="grpo", grader=grader)
    assert capsys.readouterr().err.count("provenance not measured") == 1
    (line,) = rl_lines(tmp_path / "run")
    assert line["provenance"] is None and "time_trace" not in line
    assert all(e["greedy"]["provenance"] is None for e in read_metrics(tmp_path / "run" / "metrics.jsonl", "eval"))


@pytest.mark.slow
def test_under_torchrun_rank_0_indexes_and_traces_alone(
    tiny_policy, two_answer_prompts, test_world, grader, prose_shards, tmp_path
) -> None:
    """Two ranks trace what one process traces; the index of fresh shards is built once, by rank 0."""
    settings = {"max_steps": 2, "checkpoint_every": 2, "eval_every": 0}
    single = tmp_path / "single"
    run_rl(resume_config(tiny_policy, single, two_answer_prompts, test_world, **settings), algo="grpo",
           grader=grader, tracer=Tracer(prose_shards))  # fmt: skip
    fresh = tmp_path / "shards"
    subprocess.run(["cp", "-r", str(prose_shards), str(fresh)], check=True)
    subprocess.run(["rm", "-rf", str(fresh / "provenance")], check=True)
    save_config(resume_config(tiny_policy, tmp_path / "two", two_answer_prompts, test_world, **settings), tmp_path / "two.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "echochamber.cli", "rl", str(tmp_path / "two.yaml"), "--algo", "grpo", "--shards", str(fresh)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("indexing") == 1 and "provenance not measured" not in done.stderr
    for one, two in zip(rl_lines(single), rl_lines(tmp_path / "two"), strict=True):
        assert two["provenance"] == one["provenance"] is not None
    for step in (1, 2):
        name = f"step_{step:06d}.jsonl.gz"
        assert read_rollouts(tmp_path / "two" / "rollouts" / name) == read_rollouts(single / "rollouts" / name)


def test_standalone_eval_traces_with_shards_and_says_so_without(tiny_policy, prose_shards, tmp_path, capsys) -> None:
    from echochamber.cli import main

    flags = ["--benchmark", "world-test", "--limit", "2", "--n", "2", "--max-new-tokens", "8", "--set", "workers=1"]
    assert main(["eval", str(tiny_policy), *flags, "--out", str(tmp_path / "traced"), "--shards", str(prose_shards)]) == 0
    assert "provenance not measured" not in capsys.readouterr().err
    traced = json.loads((tmp_path / "traced" / "results.json").read_text())
    assert traced["sampled"]["provenance"]["generations"] == 4
    assert main(["eval", str(tiny_policy), *flags, "--out", str(tmp_path / "plain")]) == 0
    assert capsys.readouterr().err.count("provenance not measured") == 1
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert plain["sampled"]["provenance"] is None
    # Same model, same settings: provenance is recorded beside the scores and changes none of them.
    assert plain["sampled"]["pass@1"] == traced["sampled"]["pass@1"]
