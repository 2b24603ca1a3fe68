"""GRPO: group advantages, the loss on hand-made tensors, exact aggregation under micro-batching, the update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from echochamber.config import load_config
from echochamber.rl.config import GRPOConfig, RLConfig
from echochamber.rl.grpo import build, group_advantages, grpo_loss, sample_advantages
from echochamber.rl.losses import aggregate, micro_batch_loss
from echochamber.rl.rollout import RolloutBatch, sequence_logprobs


def test_zscore_advantages_use_the_bessel_std_plus_eps_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    group = torch.arange(3).repeat_interleave(4)
    valid = torch.ones(12, dtype=torch.bool)
    config = GRPOConfig(std_eps=1e-4)
    advantages, zero_variance = group_advantages(rewards, group, valid, config)
    by_group = rewards.view(3, 4)
    # The paper's (r - mean) / (std + eps), with torch.std's Bessel correction (OpenRLHF, TRL).
    expected = (by_group - by_group.mean(1, keepdim=True)) / (by_group.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(advantages, expected.flatten())
    assert zero_variance.tolist() == [False, True, False]
    assert advantages[4:8].eq(0).all()  # a zero-variance group teaches nothing

    centred, _ = group_advantages(rewards, group, valid, GRPOConfig(normalization="center"))
    torch.testing.assert_close(centred, (by_group - by_group.mean(1, keepdim=True)).flatten())

    floored, _ = group_advantages(rewards, group, valid, GRPOConfig(std_floor=0.6, std_eps=0.0))
    assert floored[0].item() == pytest.approx(0.5 / 0.6)  # std 0.577 < floor 0.6


def test_invalid_samples_are_left_out_of_their_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    valid = torch.tensor([True, True, True, False])  # a truncated sample under truncation "mask"
    advantages, zero_variance = group_advantages(rewards, torch.zeros(4, dtype=torch.long), valid, GRPOConfig(std_eps=0.0))
    mean, std = 1 / 3, torch.tensor([1.0, 0.0, 0.0]).std().item()
    assert advantages.tolist() == pytest.approx([(1 - mean) / std, -mean / std, -mean / std, 0.0])
    assert not zero_variance.item()
    _, all_masked = group_advantages(rewards, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool), GRPOConfig())
    assert all_masked.item()


def test_grpo_loss_on_hand_made_tensors_equals_its_closed_form():
    logp = torch.tensor([[-1.0, -0.5, -2.0]])
    old_logp = torch.tensor([[-1.1, -1.0, -2.0]])
    ref_logp = torch.tensor([[-1.0, -0.7, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    config = GRPOConfig(clip=0.2, kl_coef=0.1, kl_estimator="k3", kl_placement="loss", aggregation="seq_mean")
    loss, clipped, kl = grpo_loss(logp, old_logp, ref_logp, torch.tensor([2.0]), mask, config,
                                  total_tokens=2, total_sequences=1, max_new_tokens=3)  # fmt: skip
    # token 1: ratio e^0.1 inside the clip range; token 2: ratio e^0.5 > 1.2, clipped (advantage > 0).
    surrogate = [-2.0 * math.exp(0.1), -2.0 * 1.2]
    k3 = [math.exp(d) - 1 - d for d in (0.0, -0.2)]  # d = ref_logp - logp
    assert loss.item() == pytest.approx(sum(s + 0.1 * k for s, k in zip(surrogate, k3, strict=True)) / 2)
    assert clipped[0, :2].tolist() == [0.0, 1.0]
    assert kl[0, :2].tolist() == pytest.approx(k3)

    in_reward = GRPOConfig(clip=0.2, kl_coef=0.1, kl_placement="reward", aggregation="constant")
    loss, _, _ = grpo_loss(logp, old_logp, ref_logp, torch.tensor([2.0]), mask, in_reward,
                           total_tokens=2, total_sequences=1, max_new_tokens=4)  # fmt: skip
    assert loss.item() == pytest.approx(sum(surrogate) / 4)  # Dr. GRPO: / (sequences x max_new_tokens)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_extreme_log_probs_on_padding_change_neither_loss_nor_gradient(estimator, aggregation):
    """Padding holds fillers: here a policy log-prob of -100 (row 0) and a sampler and reference log-prob
    of -100 (row 1) in the last column, which is padding in both rows. e^100 overflows float32, and
    inf * 0 (the mask) is NaN: the loss and gradient must equal those of the batch without that column."""
    logp = torch.tensor([[-1.0, -0.5, -2.0, -100.0], [-0.7, -1.2, -0.3, -1.0]])
    old_logp = torch.tensor([[-1.1, -1.0, -2.0, 0.0], [-0.9, -1.0, 0.0, -100.0]])
    ref_logp = torch.tensor([[-1.0, -0.7, -1.0, 0.0], [-0.5, -1.5, 0.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    config = GRPOConfig(clip=0.2, kl_coef=0.1, kl_estimator=estimator, kl_placement="loss", aggregation=aggregation)
    results = []
    for cols in (4, 3):  # with the planted column, then without it
        leaf = logp[:, :cols].clone().requires_grad_(True)
        loss, _, kl = grpo_loss(leaf, old_logp[:, :cols], ref_logp[:, :cols], torch.tensor([1.0, -1.0]), mask[:, :cols],
                                config, total_tokens=5, total_sequences=2, max_new_tokens=4)  # fmt: skip
        loss.backward()
        results.append((loss, leaf.grad, kl))
    (loss, grad, kl), (trimmed_loss, trimmed_grad, trimmed_kl) = results
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.isfinite(kl).all()
    assert loss.item() == pytest.approx(trimmed_loss.item(), rel=1e-6)
    torch.testing.assert_close(grad[:, :3], trimmed_grad)
    assert grad[:, 3].tolist() == [0.0, 0.0] and kl[:, 3].tolist() == [0.0, 0.0]
    torch.testing.assert_close(kl[:, :3], trimmed_kl)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_micro_batch_shares_sum_to_the_whole_minibatch_loss(aggregation):
    generator = torch.Generator().manual_seed(0)
    per_token = torch.randn(5, 6, generator=generator)
    mask = (torch.rand(5, 6, generator=generator) > 0.3).float()
    totals = {"total_tokens": mask.sum(), "total_sequences": 5, "max_new_tokens": 6}
    shares = sum(micro_batch_loss(per_token[rows], mask[rows], aggregation, **totals) for rows in (slice(0, 2), slice(2, 5)))
    whole = aggregate(per_token, mask, aggregation, constant=5 * 6.0)
    assert shares.item() == pytest.approx(whole.item(), rel=1e-6)


def test_kl_in_the_reward_is_subtracted_after_the_group_normalisation():
    """Group 0: the verifier rewards tie and the summed KL differs by ~1e-3 between samples; group 1 is
    mixed. Normalising reward - beta x KL would turn group 0's KL differences into +-1 advantages."""
    rewards = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    kl_sums = [0.001, 0.002, 0.003, 0.004, 0.5, 0.25, 0.1, 0.0]
    # k1 = old_logp - ref_logp: the first response token carries the sample's whole KL.
    old = [[-1.0, -2.0]] * 8
    ref = [[-1.0 - kl, -2.0] for kl in kl_sums]
    batch = _tensor_batch(rewards, old, ref, group=[0, 0, 0, 0, 1, 1, 1, 1])
    beta = 0.1
    config = GRPOConfig(kl_coef=beta, kl_estimator="k1", kl_placement="reward", std_eps=1e-6)
    advantages, zero_variance = sample_advantages(batch, config)
    penalty = beta * torch.tensor(kl_sums)
    # The tie group: no reward signal, only beta x KL (size ~1e-4, not +-1).
    torch.testing.assert_close(advantages[:4], -penalty[:4])
    assert advantages[:4].abs().max() < 1e-3
    # The mixed group: the z-scored verifier reward (mean 0.5, Bessel std 0.577), minus beta x KL.
    mixed = torch.tensor(rewards[4:])
    zscored = (mixed - mixed.mean()) / (mixed.std() + 1e-6)
    torch.testing.assert_close(advantages[4:], zscored - penalty[4:])
    assert zero_variance.tolist() == [True, False]  # of the verifier reward

    centred, _ = sample_advantages(batch, GRPOConfig(kl_coef=beta, kl_estimator="k1", kl_placement="reward", normalization="center"))
    torch.testing.assert_close(centred[4:], mixed - mixed.mean() - penalty[4:])
    in_loss, _ = sample_advantages(batch, GRPOConfig(kl_coef=beta, std_eps=1e-6))  # placed in the loss instead
    torch.testing.assert_close(in_loss, torch.cat([torch.zeros(4), zscored]))


def _tensor_batch(
    rewards: list[float], old: list[list[float]], ref: list[list[float]], group: list[int] | None = None
) -> RolloutBatch:
    n = len(rewards)
    return RolloutBatch(
        prompt_ids=[f"p{g}" for g in group or [0] * n], sample_index=list(range(n)),
        group=torch.tensor(group or [0] * n), texts=[""] * n, formats=["other"] * n, statuses=["ok"] * n,
        correct=torch.tensor(rewards) > 0, rewards=torch.tensor(rewards), truncated=torch.zeros(n, dtype=torch.bool),
        tokens=torch.zeros(n, 2, dtype=torch.long), attention_mask=torch.ones(n, 2, dtype=torch.long),
        prompt_length=torch.zeros(n, dtype=torch.long), response_mask=torch.ones(n, 2), old_logp=torch.tensor(old),
        ref_logp=torch.tensor(ref),
    )  # fmt: skip


# --- the update on the tiny policy ---------------------------------------------------------------


def _config(**grpo: object) -> RLConfig:
    return load_config(RLConfig, base={"policy": "p", "out": "o", "grpo": {"lr": 1e-3, **grpo}, "rollout": {"temperature": 0.7},
                                         "dtype": "float32"})  # these tests compare against float32 log-probs


def _logp(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_logprobs(model, batch.tokens, batch.attention_mask, 0.7)[0]


def test_update_moves_probability_toward_rewarded_responses(own_answers_batch):
    model, tokenizer, batch = own_answers_batch()
    before = (_logp(model, batch) * batch.response_mask).sum(1)
    grpo = build(model, copy.deepcopy(model), tokenizer, _config(lr=1e-4))
    diagnostics = grpo.update(batch)
    change = (_logp(model, batch) * batch.response_mask).sum(1) - before
    # Each group is one rewarded and one unrewarded response (advantages +-0.71): the rewarded ones
    # gain log-probability relative to the others.
    assert (change[0] + change[3]) - (change[1] + change[2]) > 0
    second = grpo.update(batch)
    assert second["loss"] < diagnostics["loss"]  # the surrogate improved (same rollout, same old_logp)
    assert diagnostics["zero_variance_groups"] == 0.0
    assert diagnostics["entropy"] > 0 and diagnostics["grad_norm"] > 0


def test_diagnostics_equal_their_closed_form_once_the_ratio_has_moved(own_answers_batch):
    """On a second pass over the same rollout the policy is no longer the sampler: the ratio, the
    clipped tokens, approx_kl and the loss all follow from the log-probs in closed form."""
    model, tokenizer, batch = own_answers_batch()
    clip, beta = 0.02, 0.1
    grpo = build(model, copy.deepcopy(model), tokenizer, _config(lr=1e-3, clip=clip, kl_coef=beta, std_eps=1e-6))
    grpo.update(batch)  # moves the policy: batch.old_logp is now a different policy's
    mask = batch.response_mask.bool()
    logp = _logp(model, batch).double()
    rewards = batch.rewards.double().view(2, 2)
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).flatten()
    ratio = torch.exp(logp - batch.old_logp.double())
    a = advantages[:, None].expand_as(ratio)
    clipped = ((a > 0) & (ratio > 1 + clip)) | ((a < 0) & (ratio < 1 - clip))
    r = batch.ref_logp.double() - logp
    per_token = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)) + beta * (torch.expm1(r) - r)
    loss = torch.stack([per_token[i][mask[i]].mean() for i in range(len(batch))]).mean()  # seq_mean
    assert 0 < clipped[mask].double().mean() < 1, "the planted condition: some tokens clip, some do not"

    second = grpo.update(batch)
    assert second["clip_fraction"] == pytest.approx(float(clipped[mask].double().mean()))
    assert second["approx_kl"] == pytest.approx(float(((ratio - 1) - ratio.log())[mask].mean()), rel=1e-3)
    assert second["approx_kl"] > 1e-6
    assert second["loss"] == pytest.approx(float(loss), rel=1e-3)
    assert second["kl_loss"] == pytest.approx(float((torch.expm1(r) - r)[mask].mean()), rel=1e-3)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_update_does_not_depend_on_the_micro_batch_size(own_answers_batch, aggregation):
    """The gradient of the minibatch (left in .grad after the step) and its diagnostics are the same for
    any micro-batching. The sampler's log-probs are shifted at random (std 0.3, fixed seed) so the ratio
    is not 1 and some tokens clip: the loss is not ~0 by construction, as it is at ratio 1.
    (Parameters are not compared: Adam's g / sqrt(v) amplifies float noise where g is ~0.)"""
    model, tokenizer, batch = own_answers_batch()
    shift = 0.3 * torch.randn(batch.old_logp.shape, generator=torch.Generator().manual_seed(0))
    batch.old_logp = (batch.old_logp + shift) * batch.response_mask
    # The reference is the policy itself, so its KL would be ~0 and compared as float noise, which
    # differs between kernels (AVX2 vs AVX-512): shift it too, so kl_loss is a real number.
    ref_shift = 0.2 * torch.randn(batch.ref_logp.shape, generator=torch.Generator().manual_seed(1))
    batch.ref_logp = (batch.ref_logp + ref_shift) * batch.response_mask
    results = []
    for micro in (1, 3, 4):
        policy = copy.deepcopy(model)
        config = _config(aggregation=aggregation, kl_coef=0.1)
        config.micro_batch_size = micro
        diagnostics = build(policy, model, tokenizer, config).update(batch)
        results.append(({name: p.grad for name, p in policy.named_parameters()}, diagnostics))
    planted = results[0][1]
    assert planted["approx_kl"] > 1e-3 and abs(planted["kl_loss"]) > 1e-3 and 0 < planted["clip_fraction"] < 1
    # Float noise is relative to the largest gradient: some weights' gradients are ~1e-6 of it.
    scale = max(float(grad.abs().max()) for grad in results[0][0].values())
    for grads, diagnostics in results[1:]:
        for name, grad in results[0][0].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5 * scale, rtol=1e-4)
        for key in ("loss", "entropy", "clip_fraction", "approx_kl", "kl_loss"):
            assert diagnostics[key] == pytest.approx(results[0][1][key], rel=1e-5, abs=1e-8), key


def test_optimizer_state_round_trips(own_answers_batch):
    model, tokenizer, batch = own_answers_batch()
    first = build(model, model, tokenizer, _config())
    first.update(batch)
    twin_model = copy.deepcopy(model)
    twin = build(twin_model, model, tokenizer, _config())
    twin.load_state_dict(copy.deepcopy(first.state_dict()))
    first.update(batch)
    twin.update(batch)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(twin_model.state_dict()[name], value, atol=0, rtol=0)
