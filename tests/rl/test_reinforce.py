"""REINFORCE with a group baseline: baselines, KL returns-to-go, the loss and its gradient in closed
form, the update on the tiny policy, and a smoke run through the RL stage."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from echochamber.config import load_config
from echochamber.rl.config import REINFORCEConfig, RLConfig
from echochamber.rl.core import run_rl
from echochamber.rl.losses import gae, masked_whiten
from echochamber.rl.reinforce import build, centred_rewards, reinforce_loss, token_advantages
from echochamber.rl.rollout import RolloutBatch, sequence_logprobs
from echochamber.runlog import read_metrics

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
GROUPS = torch.arange(3).repeat_interleave(4)


def test_mean_and_leave_one_out_baselines_in_closed_form():
    rewards = torch.tensor(REWARDS)
    valid = torch.ones(12, dtype=torch.bool)
    by_group = rewards.view(3, 4)
    mean, zero_variance = centred_rewards(rewards, GROUPS, valid, "mean")
    torch.testing.assert_close(mean, (by_group - by_group.mean(1, keepdim=True)).flatten())
    assert zero_variance.tolist() == [False, True, False]
    loo, _ = centred_rewards(rewards, GROUPS, valid, "loo")
    others = (by_group.sum(1, keepdim=True) - by_group) / 3
    torch.testing.assert_close(loo, (by_group - others).flatten())
    # The identity the module docstring states: the mean baseline is RLOO shrunk by (G-1)/G.
    torch.testing.assert_close(mean, loo * 3 / 4)
    assert loo[0].item() == pytest.approx(1 - 1 / 3) and mean[0].item() == pytest.approx(0.5)


def test_invalid_samples_leave_the_baseline_and_a_lone_sample_has_no_loo_baseline():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    valid = torch.tensor([True, True, True, False, True, False])  # truncated samples under "mask"
    mean, _ = centred_rewards(rewards, group, valid, "mean")
    assert mean.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    loo, zero_variance = centred_rewards(rewards, group, valid, "loo")
    assert loo.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0])
    assert zero_variance.tolist() == [False, True]  # group 1's only valid sample teaches nothing


def _batch(
    rewards: list[float],
    old: list[list[float]],
    ref: list[list[float]],
    mask: list[list[float]],
    group: list[int],
) -> RolloutBatch:
    n, width = len(rewards), len(old[0])
    return RolloutBatch(
        prompt_ids=[f"p{g}" for g in group], sample_index=list(range(n)), group=torch.tensor(group),
        texts=[""] * n, formats=["other"] * n, statuses=["ok"] * n, correct=torch.tensor(rewards) > 0,
        rewards=torch.tensor(rewards), truncated=torch.zeros(n, dtype=torch.bool),
        tokens=torch.zeros(n, width, dtype=torch.long), attention_mask=torch.ones(n, width, dtype=torch.long),
        prompt_length=torch.tensor(mask).argmax(1), response_mask=torch.tensor(mask), old_logp=torch.tensor(old),
        ref_logp=torch.tensor(ref),
    )  # fmt: skip


def test_kl_in_the_reward_is_credited_from_each_token_on():
    """A_t = (r - baseline) - beta * sum of k1 over tokens t' >= t; 0 off the mask (row 1 is shorter)."""
    old = [[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]]
    ref = [[-1.2, -1.5, -0.9], [-0.5, -1.4, 0.0]]
    mask = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    batch = _batch([1.0, 0.0], old, ref, mask, [0, 0])
    beta = 0.1
    config = REINFORCEConfig(kl_coef=beta, kl_estimator="k1", whiten_advantages=False)
    advantages, parts = token_advantages(batch, config)
    k1 = torch.tensor(old) - torch.tensor(ref)  # log p_old - log p_ref
    centred = [0.5, -0.5]
    expected = [
        [centred[0] - beta * k1[0, t:].sum().item() for t in range(3)],
        [centred[1] - beta * k1[1, t:2].sum().item() for t in range(2)] + [0.0],
    ]
    assert advantages.tolist()[0] == pytest.approx(expected[0]) and advantages.tolist()[1] == pytest.approx(
        expected[1]
    )
    # The same as GAE with no critic (V = 0) and gamma = lambda = 1 over the per-token rewards.
    per_token = -beta * k1 * torch.tensor(mask)
    per_token[0, 2] += centred[0]
    per_token[1, 1] += centred[1]
    torch.testing.assert_close(advantages, gae(per_token, torch.zeros(2, 3), torch.tensor(mask), 1.0, 1.0)[0])
    torch.testing.assert_close(parts["returns"], advantages)
    whitened, _ = token_advantages(batch, REINFORCEConfig(kl_coef=beta, kl_estimator="k1"))
    torch.testing.assert_close(whitened, masked_whiten(advantages, torch.tensor(mask)))
    in_loss, _ = token_advantages(
        batch, REINFORCEConfig(kl_coef=beta, kl_placement="loss", whiten_advantages=False)
    )
    torch.testing.assert_close(in_loss, torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]]))


def test_loss_on_hand_made_tensors_equals_its_closed_form():
    logp = torch.tensor([[-1.0, -0.5, -2.0]])
    old_logp = torch.tensor([[-1.1, -1.0, -2.0]])
    ref_logp = torch.tensor([[-1.0, -0.7, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages = torch.tensor([[2.0, -1.0, 7.0]])  # per token; the third is padding
    shares = {"total_tokens": 2, "total_sequences": 1, "max_new_tokens": 3}
    ratio = [math.exp(0.1), math.exp(0.5)]
    unclipped, _, _ = reinforce_loss(
        logp, old_logp, ref_logp, advantages, mask, REINFORCEConfig(clip=None, kl_coef=0.0), **shares
    )
    assert unclipped.item() == pytest.approx((-2.0 * ratio[0] + 1.0 * ratio[1]) / 2)
    # Clip 0.2: token 2 has A < 0 and ratio e^0.5 > 1.2, so max(-A rho, -A clip(rho)) keeps -A rho: unclipped.
    # Token 1 (A > 0, rho = e^0.1 < 1.2) is inside. With clip 0.05 token 1 clips to 1.05.
    clipped_loss, clipped, _ = reinforce_loss(
        logp, old_logp, ref_logp, advantages, mask, REINFORCEConfig(clip=0.05, kl_coef=0.0), **shares
    )
    assert clipped_loss.item() == pytest.approx((-2.0 * 1.05 + 1.0 * ratio[1]) / 2)
    assert clipped[0, :2].tolist() == [1.0, 0.0]
    in_loss = REINFORCEConfig(clip=None, kl_coef=0.1, kl_estimator="k2", kl_placement="loss")
    with_kl, _, kl = reinforce_loss(logp, old_logp, ref_logp, advantages, mask, in_loss, **shares)
    k2 = [0.5 * d * d for d in (0.0, -0.2)]  # d = ref_logp - logp
    assert kl[0, :2].tolist() == pytest.approx(k2)
    assert with_kl.item() == pytest.approx(unclipped.item() + 0.1 * sum(k2) / 2)


def test_gradient_at_ratio_one_is_the_reinforce_gradient():
    """On-policy (the sampler's log-probs), the gradient of the loss with respect to each token's
    log-prob is -A_t / |response| / B (seq_mean): REINFORCE's score-function gradient, clipped or not."""
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([[0.7, 0.4, -0.2], [-1.5, -1.5, 0.0]])
    for clip in (None, 0.2):
        leaf = logp.clone().requires_grad_(True)
        loss, _, _ = reinforce_loss(leaf, logp, logp, advantages, mask, REINFORCEConfig(clip=clip, kl_coef=0.0),
                                    total_tokens=5, total_sequences=2, max_new_tokens=3)  # fmt: skip
        loss.backward()
        expected = -advantages * mask / mask.sum(1, keepdim=True) / 2
        torch.testing.assert_close(leaf.grad, expected)


# --- the update on the tiny policy ---------------------------------------------------------------


def _config(**reinforce: object) -> RLConfig:
    return load_config(
        RLConfig,
        base={
            "policy": "p",
            "out": "o",
            "reinforce": {"lr": 1e-4, **reinforce},
            "rollout": {"temperature": 0.7},
            "dtype": "float32",  # these tests compare against float32 maths, at float32 tolerances
        },
    )


def _sequence_logp(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    with torch.no_grad():
        return (
            sequence_logprobs(model, batch.tokens, batch.attention_mask, 0.7)[0] * batch.response_mask
        ).sum(1)


@pytest.mark.parametrize("baseline", ["mean", "loo"])
def test_update_moves_probability_toward_rewarded_responses(own_answers_batch, baseline):
    model, tokenizer, batch = own_answers_batch()
    before = _sequence_logp(model, batch)
    diagnostics = build(model, copy.deepcopy(model), tokenizer, _config(baseline=baseline)).update(batch)
    change = _sequence_logp(model, batch) - before
    assert (change[0] + change[3]) - (change[1] + change[2]) > 0
    assert diagnostics["zero_variance_groups"] == 0.0 and diagnostics["grad_norm"] > 0
    assert diagnostics["clip_fraction"] == 0.0  # one minibatch, on-policy: nothing to clip
    assert diagnostics["kl_penalty_mean"] == 0.0  # the reference is the policy itself


def test_update_does_not_depend_on_the_micro_batch_size(own_answers_batch):
    """With the sampler's log-probs shifted (ratio != 1, some tokens clip), the gradient left after the
    step and the diagnostics are the same for micro-batches of 1 and 4."""
    model, tokenizer, batch = own_answers_batch()
    shift = 0.3 * torch.randn(batch.old_logp.shape, generator=torch.Generator().manual_seed(0))
    batch.old_logp = (batch.old_logp + shift) * batch.response_mask
    # The reference is the policy itself, so its KL would be ~0 and compared as float noise, which
    # differs between kernels (AVX2 vs AVX-512): shift it too, so kl_loss is a real number.
    ref_shift = 0.2 * torch.randn(batch.ref_logp.shape, generator=torch.Generator().manual_seed(1))
    batch.ref_logp = (batch.ref_logp + ref_shift) * batch.response_mask
    results = []
    for micro in (1, 4):
        policy = copy.deepcopy(model)
        config = _config(kl_coef=0.1, clip=0.2)
        config.micro_batch_size = micro
        diagnostics = build(policy, model, tokenizer, config).update(batch)
        results.append(({name: p.grad for name, p in policy.named_parameters()}, diagnostics))
    planted = results[0][1]
    assert planted["approx_kl"] > 1e-3 and abs(planted["kl_loss"]) > 1e-3 and 0 < planted["clip_fraction"] < 1
    scale = max(float(grad.abs().max()) for grad in results[0][0].values())
    for name, grad in results[0][0].items():
        torch.testing.assert_close(results[1][0][name], grad, atol=1e-5 * scale, rtol=1e-4)
    for key in ("loss", "entropy", "clip_fraction", "approx_kl", "kl_loss"):
        assert results[1][1][key] == pytest.approx(results[0][1][key], rel=1e-5, abs=1e-8), key


def test_reinforce_smoke_run_through_the_rl_stage(tiny_policy, two_answer_prompts, grader, tmp_path):
    out = tmp_path / "run"
    config = load_config(RLConfig, base={
        "policy": str(tiny_policy), "out": str(out), "prompts": {"dataset": "gsm8k", "path": str(two_answer_prompts)},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 32, "grader_workers": 1},
        "reinforce": {"lr": 1e-4, "minibatches": 2}, "max_steps": 2, "eval_every": 0, "micro_batch_size": 8,
        "checkpoint_every": 1, "tensorboard": False, "progress": False, "dtype": "float32",
    })  # fmt: skip
    final = run_rl(config, algo="reinforce", grader=grader)
    lines = read_metrics(out / "metrics.jsonl", "rl")
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert line["algo"] == "reinforce" and line["n_samples"] == 16
        assert line["zero_variance_groups"] < 1.0 and math.isfinite(line["loss"]) and line["grad_norm"] > 0
        assert "kl_penalty_mean" in line and line["kl_k1"] is not None
    assert (final / "config.json").is_file() and (
        out / "checkpoints" / "step_2" / "trainer_state.pt"
    ).is_file()
