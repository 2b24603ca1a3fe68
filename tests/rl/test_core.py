"""The RL stage end to end: a few GRPO steps on the tiny policy, the run folder, bad input, resume."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from echochamber.checkpoint import LOCK_FILE, list_checkpoints
from echochamber.config import load_config, save_config
from echochamber.data.tokenizer import load_tokenizer
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.formats.registry import default_registry
from echochamber.model.precision import resolve_dtype
from echochamber.model.presets import load_model
from echochamber.rl import core
from echochamber.rl.config import RLConfig, load_rl_config
from echochamber.rl.core import run_rl, step_metrics, total_steps
from echochamber.rl.rollout import RolloutBatch, read_rollouts
from echochamber.rl.steps import rollout_kl, sample_seed
from echochamber.runlog import read_metrics

REQUIRED_KEYS = (
    "stage", "step", "algo", "reward_mean", "accuracy", "format_share", "format_accuracy", "kl_k1", "kl_k2",
    "kl_k3", "entropy", "response_length", "length_by_format", "truncation_rate", "truncation", "status_counts",
    "time_generate", "time_reward", "time_reference", "time_update", "tokens_per_s", "zero_variance_groups",
    "loss", "grad_norm", "clip_fraction", "approx_kl",
)  # fmt: skip
ROLLOUT_KEYS = {"prompt_id", "sample_index", "text", "reward", "format", "status", "correct", "truncated"}
# Wall-clock numbers differ between any two runs; everything else in a line must not.
TIMING_KEYS = {"time_generate", "time_reward", "time_reference", "time_update", "tokens_per_s", "generate_tokens_per_s"}


def tiny_config(policy: Path, out: Path, world: WorldConfig, **overrides: Any) -> RLConfig:
    values: dict[str, Any] = {
        "policy": str(policy),
        "out": str(out),
        "prompts": {"dataset": "world", "world": dataclasses.asdict(world)},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 32, "grader_workers": 1},
        "eval_every": 2,
        "eval": {"benchmarks": ["world-test"], "limit": 3, "n": 2, "max_new_tokens": 32},
        # Gentle: one step moves the fixture's p(answer) by ~0.04, so its built-in 50/50 (and the
        # reward variance it gives) holds over a test's few steps (1e-3 moved it to 0.8 in one).
        "grpo": {"lr": 1e-4},
        "max_steps": 2,
        "micro_batch_size": 8,
        "checkpoint_every": 1,
        "keep_checkpoints": 5,
        "tensorboard": False,
        "progress": False,
        "dtype": "float32",  # "auto" would be bfloat16 on some CPUs only: these tests compare float32 runs
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    return load_config(RLConfig, base=values)


def rl_lines(out: Path) -> list[dict[str, Any]]:
    return read_metrics(out / "metrics.jsonl", "rl")


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def test_grpo_smoke_run_writes_the_run_folder(tiny_policy, two_answer_prompts, test_world, grader, tmp_path):
    out = tmp_path / "run"
    prompts = {"dataset": "gsm8k", "path": str(two_answer_prompts)}
    final = run_rl(tiny_config(tiny_policy, out, test_world, prompts=prompts), algo="grpo", grader=grader)

    lines = rl_lines(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        missing = [key for key in REQUIRED_KEYS if key not in line]
        assert not missing, missing
        assert line["algo"] == "grpo" and line["n_samples"] == 16
        assert set(line["format_share"]) == set(default_registry().names) == set(line["format_accuracy"])
        assert sum(line["format_share"].values()) == pytest.approx(1.0)
        assert sum(line["status_counts"].values()) == 16
        assert line["kl_k1"] is not None and line["kl_k2"] >= 0 and line["kl_k3"] >= 0
        assert line["entropy"] > 0 and line["response_length"] > 0
        assert line["zero_variance_groups"] < 1.0  # reward signal by construction (see conftest.py)
    assert lines[0]["kl_k3"] == pytest.approx(0.0, abs=1e-4)  # policy == reference before any update

    # Eval at step 0 (the base policy) and every 2 steps, through the eval suite.
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert [(row["step"], row["benchmark"]) for row in evals] == [(0, "world-test"), (2, "world-test")]
    assert "pass@1" in evals[0]["greedy"] and "maj@2" in evals[0]["sampled"]
    assert (out / "eval" / "step_000002" / "world-test" / "results.json").is_file()

    rollouts = read_rollouts(out / "rollouts" / "step_000002.jsonl.gz")
    assert len(rollouts) == 16 and set(rollouts[0]) >= ROLLOUT_KEYS
    assert {(r["prompt_id"], r["sample_index"]) for r in rollouts} == {(p, i) for p in {r["prompt_id"] for r in rollouts} for i in range(4)}
    assert all(r["reward"] == float(r["correct"]) for r in rollouts)

    # Checkpoints and final/ are plain HF folders; the policy moved.
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert (final / "tokenizer.json").is_file()
    before = load_file(tiny_policy / "model.safetensors")
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "config.yaml").is_file()


def test_a_bf16_checkpoint_is_trained_in_float32(tiny_policy, two_answer_prompts, test_world, grader, tmp_path):
    """AdamW moves each weight by ~lr per step: at lr 1e-6 that is below bfloat16's resolution for weights
    of ~0.02, so a bf16 checkpoint trained in its own dtype would not move at all."""
    bf16 = tmp_path / "bf16"
    load_model(tiny_policy).to(torch.bfloat16).save_pretrained(bf16)
    load_tokenizer(tiny_policy).save_pretrained(bf16)
    prompts = {"dataset": "gsm8k", "path": str(two_answer_prompts)}
    config = tiny_config(bf16, tmp_path / "run", test_world, prompts=prompts, max_steps=1, eval_every=0, grpo={"lr": 1e-6})
    final = run_rl(config, algo="grpo", grader=grader)
    before, after = load_file(bf16 / "model.safetensors"), load_file(final / "model.safetensors")
    assert {value.dtype for value in before.values()} == {torch.bfloat16}
    assert {value.dtype for value in after.values()} == {torch.float32}
    moved = torch.cat([(after[name] != before[name].float()).flatten() for name in before])
    assert moved.float().mean() > 0.5, float(moved.float().mean())


def test_bad_input_is_one_line_user_error(tiny_policy, test_world, grader, tmp_path):
    with pytest.raises(UserError, match="unknown algorithm"):
        run_rl(tiny_config(tiny_policy, tmp_path / "a", test_world), algo="dpo")
    with pytest.raises(UserError, match="not found|does not exist"):
        run_rl(tiny_config(tmp_path / "missing", tmp_path / "b", test_world), algo="grpo", grader=grader)
    with pytest.raises(UserError, match="prompts_per_step=99"):
        run_rl(tiny_config(tiny_policy, tmp_path / "c", test_world, rollout={"prompts_per_step": 99}), algo="grpo", grader=grader)
    with pytest.raises(UserError, match="missing config key 'policy'"):
        load_rl_config("cpu", ["out=x"])

    out = tmp_path / "d"
    run_rl(tiny_config(tiny_policy, out, test_world, max_steps=1, eval_every=0), algo="grpo", grader=grader)
    with pytest.raises(UserError, match="already holds an RL run"):
        run_rl(tiny_config(tiny_policy, out, test_world, max_steps=1), algo="grpo", grader=grader)
    with pytest.raises(UserError, match="written by --algo grpo"):
        run_rl(tiny_config(tiny_policy, out, test_world, max_steps=1), algo="ppo", resume=True, grader=grader)
    with pytest.raises(UserError, match="config key 'grpo' changed"):
        run_rl(tiny_config(tiny_policy, out, test_world, max_steps=1, grpo={"lr": 1e-5}), algo="grpo", resume=True, grader=grader)


def test_resume_before_the_first_checkpoint_starts_over_without_duplicates(tiny_policy, test_world, grader, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # What a run killed during step 1 leaves: the base model's evaluation and a torn line, no checkpoint.
    (out / "metrics.jsonl").write_text('{"stage": "eval", "step": 0, "benchmark": "world-test"}\n{"stage": "rl", "st')
    config = tiny_config(tiny_policy, out, test_world, max_steps=1, eval_every=1, eval={"n": 0})
    run_rl(config, algo="grpo", resume=True, grader=grader)
    rows = read_metrics(out / "metrics.jsonl")
    assert [(row["stage"], row["step"]) for row in rows] == [("eval", 0), ("rl", 1), ("eval", 1)]
    assert "greedy" in rows[0]  # the stale line was replaced by a real evaluation


def test_cpu_preset_resolves_and_keeps_paper_defaults_elsewhere():
    config = load_rl_config("cpu", ["policy=p", "out=o"])
    paper = RLConfig(policy="p", out="o")
    assert config.rollout.max_new_tokens < paper.rollout.max_new_tokens
    assert config.rollout.prompts_per_step * config.rollout.samples_per_prompt == 128
    assert config.grpo.kl_estimator == paper.grpo.kl_estimator == "k3"
    assert (paper.rollout.prompts_per_step, paper.rollout.samples_per_prompt, paper.rollout.temperature) == (64, 8, 0.7)
    assert (paper.ppo.lr, paper.ppo.critic_lr, paper.ppo.kl_coef, paper.ppo.lam, paper.ppo.gamma) == (1e-6, 7e-6, 1e-3, 0.95, 1.0)
    assert total_steps(paper, "grpo", n_prompts=7473) == 10 * (7473 // 64)
    assert total_steps(paper, "ei", n_prompts=7473) == 3


def test_sample_seed_differs_per_step_and_seed():
    seeds = {sample_seed(seed, step) for seed in range(3) for step in range(50)}
    assert len(seeds) == 150


def test_step_metrics_never_reports_a_silent_zero():
    rows = [
        {"format": "omi2", "correct": True, "truncated": False, "n_tokens": 10, "status": "ok", "reward": 1.0},
        {"format": "omi2", "correct": False, "truncated": True, "n_tokens": 30, "status": "no_answer", "reward": 0.0},
        {"format": "other", "correct": False, "truncated": False, "n_tokens": 20, "status": "parse_error", "reward": 0.0},
    ]
    seconds = {"time_generate": 1.0, "time_reward": 0.5, "time_reference": 0.25, "time_update": 0.25}
    line = step_metrics(rows, algo="grpo", truncation="zero", kl=[3.0, 1.0, 2.0, 60.0], seconds=seconds, diagnostics={"entropy": 1.5}, names=default_registry().names)
    assert line["reward_mean"] == pytest.approx(1 / 3) and line["accuracy"] == pytest.approx(1 / 3)
    assert line["format_share"] == {"tinygsm": 0.0, "omi1": 0.0, "omi2": pytest.approx(2 / 3), "other": pytest.approx(1 / 3)}
    assert line["format_accuracy"]["tinygsm"] is None and line["format_accuracy"]["omi2"] == 0.5
    assert line["length_by_format"]["omi2"] == 20 and line["length_by_format"]["omi1"] is None
    assert line["truncation_rate"] == pytest.approx(1 / 3)
    assert (line["kl_k1"], line["kl_k2"], line["kl_k3"]) == (0.05, pytest.approx(1 / 60), pytest.approx(1 / 30))
    assert line["tokens_per_s"] == 30.0 and line["generate_tokens_per_s"] == 60.0
    assert line["status_counts"] == {"no_answer": 1, "ok": 1, "parse_error": 1}
    ei_line = step_metrics(rows, algo="ei", truncation="zero", kl=None, seconds=seconds, diagnostics={}, names=("omi2", "other"))
    assert ei_line["kl_k1"] is None  # no reference pass: unknown, not 0


def test_rollout_kl_ignores_extreme_fillers_on_padding():
    """Sampler and reference log-probs are fillers off the response mask: -100 there (e^100 overflows
    float32) must leave the step's KL sums as they are."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    old = torch.tensor([[0.0, -1.0, -2.0, -100.0], [0.0, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0], [-100.0, -0.7, 0.0, 0.0]])
    batch = RolloutBatch(
        prompt_ids=["a", "b"], sample_index=[0, 0], group=torch.tensor([0, 1]), texts=["", ""], formats=["other"] * 2,
        statuses=["ok"] * 2, correct=torch.zeros(2, dtype=torch.bool), rewards=torch.zeros(2),
        truncated=torch.zeros(2, dtype=torch.bool), tokens=torch.zeros(2, 4, dtype=torch.long),
        attention_mask=torch.ones(2, 4, dtype=torch.long), prompt_length=mask.argmax(1), response_mask=mask,
        old_logp=old, ref_logp=ref,
    )  # fmt: skip
    ratios = [-0.5, 1.0, -0.2]  # ref - old on the three response tokens
    expected = [sum(-r for r in ratios), sum(r * r / 2 for r in ratios), sum(math.expm1(r) - r for r in ratios)]
    assert rollout_kl(batch).tolist() == pytest.approx([*expected, 3.0], rel=1e-6)


# --- resume after SIGKILL ----------------------------------------------------------------------


def resume_config(policy: Path, out: Path, prompts: Path, world: WorldConfig, **overrides: Any) -> RLConfig:
    settings: dict[str, Any] = {
        "prompts": {"dataset": "gsm8k", "path": str(prompts)}, "max_steps": 6, "checkpoint_every": 2,
        "eval_every": 3, "eval": {"limit": 2}, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4},
    }  # fmt: skip
    return tiny_config(policy, out, world, **{**settings, **overrides})


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tiny_policy, two_answer_prompts, test_world, grader, tmp_path):
    prompts = two_answer_prompts
    reference = tmp_path / "uninterrupted"
    run_rl(resume_config(tiny_policy, reference, prompts, test_world), algo="grpo", grader=grader)
    expected = rl_lines(reference)
    assert min(line["zero_variance_groups"] for line in expected) < 1.0, "no reward signal: the test would prove nothing"

    killed = tmp_path / "killed"
    config = resume_config(tiny_policy, killed, prompts, test_world)
    save_config(config, tmp_path / "killed.yaml")
    # One thread like this test process (tests/conftest.py): a different thread count changes float
    # reduction order, and the comparison below is exact.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "echochamber.cli", "rl", str(tmp_path / "killed.yaml"), "--algo", "grpo"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not any(step >= 2 for step, _ in list_checkpoints(killed)):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = max(step for step, _ in list_checkpoints(killed))
    assert killed_at < 6, "the run finished before the kill"

    run_rl(config, algo="grpo", resume=True, grader=grader)
    assert comparable(rl_lines(killed)) == comparable(expected)
    assert read_metrics(killed / "metrics.jsonl", "eval") == read_metrics(reference / "metrics.jsonl", "eval")
    for step in range(1, 7):
        name = f"step_{step:06d}.jsonl.gz"
        assert (killed / "rollouts" / name).read_bytes() == (reference / "rollouts" / name).read_bytes()
    final_a = load_file(reference / "final" / "model.safetensors")
    final_b = load_file(killed / "final" / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tiny_policy, two_answer_prompts, test_world, grader, tmp_path):
    """Each rank samples and grades half of a step's prompts; the summed update equals one process's."""
    prompts = two_answer_prompts
    settings = {"max_steps": 2, "checkpoint_every": 2, "eval_every": 0}
    single = tmp_path / "single"
    run_rl(resume_config(tiny_policy, single, prompts, test_world, **settings), algo="grpo", grader=grader)
    two = tmp_path / "two"
    save_config(resume_config(tiny_policy, two, prompts, test_world, **settings), tmp_path / "two.yaml")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "echochamber.cli", "rl", str(tmp_path / "two.yaml"), "--algo", "grpo"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    expected, got = comparable(rl_lines(single)), comparable(rl_lines(two))
    assert [line["step"] for line in got] == [1, 2]
    for line_single, line_two in zip(expected, got, strict=True):
        for key in ("reward_mean", "format_share", "kl_k1", "kl_k3", "response_length", "zero_variance_groups"):
            assert line_two[key] == pytest.approx(line_single[key], rel=1e-4, abs=1e-6), key
        for key in ("loss", "entropy", "grad_norm", "approx_kl"):
            assert line_two[key] == pytest.approx(line_single[key], rel=1e-3, abs=1e-6), key
    assert read_rollouts(two / "rollouts" / "step_000001.jsonl.gz") == read_rollouts(single / "rollouts" / "step_000001.jsonl.gz")
    final_single = load_file(single / "final" / "model.safetensors")
    final_two = load_file(two / "final" / "model.safetensors")
    for name, value in final_single.items():
        torch.testing.assert_close(final_two[name], value, atol=1e-4, rtol=1e-3)


# Joins the default group with a short timeout, then runs the RL stage with rank 0 working alone before
# each evaluation for longer than that (rank 0 tracing, writing or regrading a paper-scale evaluation
# outlasts NCCL's 10 minutes the same way).
SLOW_EVAL_LAUNCHER = """
import os, sys, time
from datetime import timedelta
import torch.distributed as dist

timeout, pause, log = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
from echochamber import cli
from echochamber.rl import core

evaluate = core.evaluate_benchmark

def slow_evaluate(*args, **kwargs):
    if dist.get_rank() == 0:
        time.sleep(pause)
    with open(log, "a") as out:
        out.write(f"rank {dist.get_rank()} evaluated\\n")
    return evaluate(*args, **kwargs)

core.evaluate_benchmark = slow_evaluate
code = cli.main(["rl", *sys.argv[4:]])
dist.destroy_process_group()
sys.exit(code)
"""


@pytest.mark.slow
def test_torchrun_ranks_outwait_an_evaluation_longer_than_the_collective_timeout(
    tiny_policy, two_answer_prompts, test_world, tmp_path
):
    """Both ranks evaluate (steps 0 and 2), rank 0 after working alone for longer than the default
    group's timeout; the other rank must wait for it in the evaluation's first gather rather than
    time out in a collective."""
    prompts = two_answer_prompts
    out = tmp_path / "run"
    settings = {"max_steps": 2, "checkpoint_every": 2, "eval_every": 2, "eval": {"limit": 2}}
    save_config(resume_config(tiny_policy, out, prompts, test_world, **settings), tmp_path / "run.yaml")
    (tmp_path / "launch.py").write_text(SLOW_EVAL_LAUNCHER)
    log = tmp_path / "evaluations.log"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "launch.py"), "5", "8", str(log), str(tmp_path / "run.yaml"), "--algo", "grpo"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(log.read_text().splitlines()) == ["rank 0 evaluated"] * 2 + ["rank 1 evaluated"] * 2
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert [row["step"] for row in evals] == [0, 2]
    assert [line["step"] for line in rl_lines(out)] == [1, 2]


def test_an_rl_folder_another_run_is_writing_is_refused_before_any_weights_load(
    tiny_policy, two_answer_prompts, test_world, grader, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    out.mkdir()
    config = resume_config(tiny_policy, out, two_answer_prompts, test_world, max_steps=1, eval_every=0)
    monkeypatch.setattr(core, "load_model", lambda *args, **kwargs: pytest.fail("weights loaded"))
    with (out / LOCK_FILE).open("a+") as held:  # another run's hold, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="is being written by"):
            run_rl(config, algo="grpo", grader=grader)
    assert not (out / "metrics.jsonl").exists()


def test_rl_checks_its_prompts_before_loading_any_weights(tiny_policy, grader, tmp_path, monkeypatch):
    prompts = tmp_path / "long.jsonl"
    long_question = " ".join(["How many apples are left after everyone eats?"] * 60)
    prompts.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in ("Short one?", long_question)))
    base = {
        "policy": str(tiny_policy), "out": str(tmp_path / "run"), "prompts": {"dataset": "gsm8k", "path": str(prompts)},
        "rollout": {"prompts_per_step": 1, "samples_per_prompt": 2, "max_new_tokens": 8, "grader_workers": 1},
        "max_steps": 1, "eval_every": 0, "tensorboard": False, "progress": False,
    }  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(core, "load_model", lambda *args, **kwargs: pytest.fail("weights loaded before the check"))
        with pytest.raises(UserError, match=r"RL prompts \(gsm8k\): 1 of 2 prompts \+ 8 new tokens exceed .*rl.prompts.over_context"):
            run_rl(load_config(RLConfig, base=base), algo="grpo", grader=grader)
    skip = load_config(RLConfig, base={**base, "prompts": {**base["prompts"], "over_context": "skip"}})
    run_rl(skip, algo="grpo", grader=grader)
    recorded = json.loads((tmp_path / "run" / "prompts.json").read_text())
    assert recorded["n_prompts"] == 1 and recorded["context"]["skipped"] == 1


def test_a_bfloat16_update_agrees_with_float32_and_auto_records_what_it_ran(
    tiny_policy, two_answer_prompts, test_world, grader, tmp_path
):
    """One GRPO step in float32, bfloat16 (what "auto" picks on CPUs with native bf16) and auto.
    The sampler is float32 in all three, so the step's samples and rewards are the same; the update
    differs by bfloat16's rounding only. config.yaml names what "auto" resolved to."""
    prompts = {"dataset": "gsm8k", "path": str(two_answer_prompts)}
    lines, moves = {}, {}
    before = load_file(tiny_policy / "model.safetensors")
    for dtype in ("float32", "bfloat16", "auto"):
        out = tmp_path / dtype
        config = tiny_config(tiny_policy, out, test_world, prompts=prompts, max_steps=1, eval_every=0, dtype=dtype)
        final = run_rl(config, algo="grpo", grader=grader)
        recorded = yaml.safe_load((out / "config.yaml").read_text())["dtype"]
        assert recorded == (resolve_dtype("auto", torch.device("cpu")) if dtype == "auto" else dtype)
        (lines[dtype],) = rl_lines(out)
        after = load_file(final / "model.safetensors")
        moves[dtype] = torch.cat([(after[name] - before[name]).flatten() for name in before])
    f32, b16 = lines["float32"], lines["bfloat16"]
    # The same samples: the sampler does not change with the trainer's precision.
    assert (f32["reward_mean"], f32["format_share"]) == (b16["reward_mean"], b16["format_share"])
    # The update: the ratio starts at 1 in float32 and within bfloat16's rounding of it in bfloat16
    # (approx_kl measured 2.6e-5 on this fixture, the reference's KL alike); the step moves the
    # weights the same way (cosine measured 0.994; Adam's first step is sign-like, so weights with
    # near-zero gradients can flip: the norm of the difference is ~11 % of the move).
    assert f32["approx_kl"] < 1e-9 < b16["approx_kl"] < 1e-3
    assert b16["kl_k3"] < 1e-3
    assert b16["grad_norm"] == pytest.approx(f32["grad_norm"], rel=1e-2)
    assert b16["entropy"] == pytest.approx(f32["entropy"], rel=1e-2)
    assert torch.nn.functional.cosine_similarity(moves["float32"], moves["bfloat16"], dim=0) > 0.95
    resolved = resolve_dtype("auto", torch.device("cpu"))
    assert comparable([lines["auto"]]) == comparable([lines[resolved]]) and torch.equal(moves["auto"], moves[resolved])

    # The precision defines the run: a float32 run does not resume in bfloat16. Checkpoints written
    # before RL had a dtype trained in float32.
    config = tiny_config(tiny_policy, tmp_path / "float32", test_world, prompts=prompts, max_steps=2, eval_every=0, dtype="bfloat16")
    with pytest.raises(UserError, match="config key 'dtype' changed"):
        run_rl(config, algo="grpo", resume=True, grader=grader)
    assert core._defining(None, "dtype") == "float32"
