"""RL rollouts from a colocated vLLM engine (`rollout.backend: vllm`), everything but the engine
itself: the fake vllm package (tests/conftest.py) samples with its own copy of the policy, so the
weight pushes, the log-probs the ratio uses and the measured gap are the real code paths. What only a
GPU can show (throughput, vLLM's own kernels, its EOS and log-prob conventions) is
benchmarks/bench_gpu_rollouts.py's (docs/gpu.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from test_core import tiny_config

from echochamber.config import load_config
from echochamber.data.tokenizer import load_tokenizer
from echochamber.errors import UserError
from echochamber.model.presets import load_model
from echochamber.model.sampling_params import SamplingParams
from echochamber.rl.config import RLConfig
from echochamber.rl.core import run_rl
from echochamber.rl.engine import logprob_gap
from echochamber.rl.rollout import build_batch, generate_rollouts, load_prompts, read_rollouts
from echochamber.runlog import read_metrics


def vllm_config(policy, prompts, out, world, **vllm):
    return tiny_config(
        policy, out, world, prompts={"dataset": "gsm8k", "path": str(prompts)}, eval_every=0,
        rollout={"backend": "vllm", "vllm": {"memory": 0.25, **vllm}},
    )  # fmt: skip


def test_grpo_samples_from_the_engine_which_gets_the_weights_of_every_update(
    tiny_policy, two_answer_prompts, test_world, grader, fake_vllm, tmp_path
):
    out = tmp_path / "run"
    run_rl(vllm_config(tiny_policy, two_answer_prompts, out, test_world), algo="grpo", grader=grader)

    [engine] = fake_vllm.engines  # one engine for the whole run, built in this process beside the trainer
    options = engine.options
    assert (options["distributed_executor_backend"], options["gpu_memory_utilization"]) == ("external_launcher", 0.25)
    assert (options["logprobs_mode"], options["dtype"], options["max_model_len"]) == ("processed_logprobs", "float32", 256)
    # Every step sampled the engine: 4 prompts x 4 samples, at the rollout temperature, without top-p.
    assert len(engine.outputs) == 2 and all(len(step) == 4 for step in engine.outputs)
    assert {(r.n, r.temperature, r.top_p, r.top_k) for r in engine.requests} == {(4, 0.7, 1.0, -1)}
    for step in (1, 2):
        rows = read_rollouts(out / "rollouts" / f"step_{step:06d}.jsonl.gz")
        sampled = [c for output in engine.outputs[step - 1] for c in output.outputs]
        assert sorted(row["n_tokens"] for row in rows) == sorted(len(c.token_ids) for c in sampled)
    # After each update the engine got exactly the weights of that step's checkpoint, in memory.
    assert len(engine.pushes) == 2 and engine.prefix_resets == 2
    for step, pushed in enumerate(engine.pushes, start=1):
        saved = load_file(out / "checkpoints" / f"step_{step}" / "model.safetensors")
        assert pushed.keys() <= saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in pushed)
    before = load_file(tiny_policy / "model.safetensors")
    assert any(not torch.equal(engine.pushes[0][k], before[k]) for k in engine.pushes[0])

    lines = read_metrics(out / "metrics.jsonl", "rl")
    for line in lines:
        # The same weights in the same precision: the gap is float error (the engine decodes with a KV cache).
        assert 0 <= line["logprob_gap_mean"] <= line["logprob_gap_max"] < 1e-4
        assert line["time_sync"] >= 0


def test_a_lower_precision_engine_shows_its_gap_and_its_log_probs_drive_the_ratio(
    tiny_policy, two_answer_prompts, test_world, grader, fake_vllm, tmp_path
):
    config = vllm_config(tiny_policy, two_answer_prompts, tmp_path / "run", test_world, dtype="bfloat16")
    run_rl(dataclasses.replace(config, max_steps=1), algo="grpo", grader=grader)
    [engine] = fake_vllm.engines
    assert engine.options["dtype"] == "bfloat16"
    [line] = read_metrics(tmp_path / "run" / "metrics.jsonl", "rl")
    assert line["logprob_gap_mean"] > 1e-3 and line["logprob_gap_max"] >= line["logprob_gap_mean"]
    # The old log-probs are the engine's (bf16) ones: GRPO's first ratio is not 1, by the engine's doing.
    assert line["approx_kl"] > 0


def test_the_gap_is_the_mean_and_max_absolute_difference_per_response_token(tiny_policy, two_answer_prompts, grader):
    policy, tokenizer = load_model(tiny_policy), load_tokenizer(tiny_policy)
    records = load_prompts(load_config(RLConfig, base={"policy": "p", "out": "o", "prompts": {
        "dataset": "gsm8k", "path": str(two_answer_prompts), "limit": 3}}).prompts)  # fmt: skip
    rollouts, _ = generate_rollouts(policy, tokenizer, records, 2, SamplingParams(0.7, max_new_tokens=24, seed=1), grader)
    batch, _ = build_batch(rollouts, tokenizer=tokenizer, ref=policy, temperature=0.7, truncation="zero", micro_batch_size=4)
    honest = logprob_gap(policy, batch, 0.7, micro_batch_size=4)
    assert honest["logprob_gap_max"] < 1e-4  # the torch sampler reports the policy's own log-probs
    planted = torch.linspace(-0.3, 0.5, batch.old_logp.numel()).view_as(batch.old_logp) * batch.response_mask
    shifted = dataclasses.replace(batch, old_logp=batch.old_logp + planted)
    policy.train()
    gap = logprob_gap(policy, shifted, 0.7, micro_batch_size=3)
    tokens = batch.response_mask > 0
    assert gap["logprob_gap_mean"] == pytest.approx(float(planted[tokens].abs().mean()), abs=1e-4)
    assert gap["logprob_gap_max"] == pytest.approx(float(planted[tokens].abs().max()), abs=1e-4)
    assert policy.training  # left in the mode it was found in


def test_the_torch_backend_measures_no_gap_and_pushes_nothing(tiny_policy, two_answer_prompts, test_world, grader, tmp_path):
    config = dataclasses.replace(vllm_config(tiny_policy, two_answer_prompts, tmp_path / "run", test_world), max_steps=1)
    config.rollout.backend = "torch"
    run_rl(config, algo="grpo", grader=grader)
    [line] = read_metrics(tmp_path / "run" / "metrics.jsonl", "rl")
    assert line["logprob_gap_mean"] is None and line["logprob_gap_max"] is None  # not measured, never 0
    assert line["time_sync"] == 0.0


def test_the_vllm_backend_without_vllm_stops_before_any_model_loads(tiny_policy, two_answer_prompts, test_world, tmp_path):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed")
    with pytest.raises(UserError, match="needs the vllm package"):
        run_rl(vllm_config(tiny_policy, two_answer_prompts, tmp_path / "run", test_world), algo="grpo")
    with pytest.raises(UserError, match="rollout.vllm.memory must be in"):
        tiny_config(tiny_policy, tmp_path, test_world, rollout={"vllm": {"memory": 1.5}})


def test_a_resumed_run_may_change_the_engines_memory_share_but_not_its_backend(
    tiny_policy, two_answer_prompts, test_world, grader, fake_vllm, tmp_path
):
    config = dataclasses.replace(vllm_config(tiny_policy, two_answer_prompts, tmp_path / "run", test_world), max_steps=1)
    config.rollout.backend = "torch"
    run_rl(config, algo="grpo", grader=grader)
    config.rollout.vllm.memory = 0.6  # a memory knob: not part of what the run computes
    run_rl(dataclasses.replace(config, max_steps=2), algo="grpo", resume=True, grader=grader)
    config.rollout.backend = "vllm"  # other samples: another run
    with pytest.raises(UserError, match="config key 'rollout' changed"):
        run_rl(dataclasses.replace(config, max_steps=3), algo="grpo", resume=True, grader=grader)
