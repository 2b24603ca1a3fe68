"""GRPO: PPO's clipped surrogate with a group baseline instead of a critic.

Advantage of sample i of prompt p, one value for every token of its response, from the verifier
reward r:

    A_i = (r_i - mean_p r) / (max(std_p r, std_floor) + std_eps)   ("zscore", the paper; std with
                                                                    Bessel's correction, OpenRLHF, TRL)
    A_i = r_i - mean_p r                                            ("center", Dr. GRPO)

The KL to the reference is named twice: its estimator (k1/k2/k3) and its placement. "loss": beta x
the per-token estimate is added to the per-token loss (the paper's GRPO). "reward": the group
statistics are taken of the verifier reward alone and then

    A_i <- A_i - beta * sum_t k(t)        (k over sample i's response tokens, sampler vs reference)

The order matters. The verifier reward is 0/1 while a sample's summed KL is ~1e-3; subtracting the KL
before the z-score would make it part of the normalised quantity, and in a group whose verifier
rewards tie the KL differences alone would be divided by their own tiny std: +-1 advantages from
~1e-3 differences, beta effectively x1000. After the z-score the KL term keeps its scale, beta x KL, in
every group (a tie group then pushes each sample down by its own KL, the reward-form KL gradient).
The aggregation of the per-token loss is named too (token_mean / seq_mean / constant = Dr. GRPO's
N x max_new_tokens), and stays exact under micro-batching and data parallelism: each micro-batch's
share is normalised by the minibatch's global token or sequence count.

Samples left out of the loss (truncation "mask") are left out of their group's mean and std too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from echochamber.dist import Sums
from echochamber.rl.config import GRPOConfig, RLConfig
from echochamber.rl.losses import reference_kl, surrogate_with_kl
from echochamber.rl.rollout import RolloutBatch
from echochamber.rl.update import MicroBatch, minibatch_indices, policy_step, update_diagnostics


def group_advantages(
    rewards: torch.Tensor,
    group: torch.Tensor,
    valid: torch.Tensor,
    config: GRPOConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample advantages ([N], 0 for invalid samples) and a per-group flag: no reward variance.

    A group whose valid samples all got the same reward (or that has no valid sample) carries no
    learning signal; its fraction is the zero-variance diagnostic.
    """
    n_groups = int(group.max()) + 1
    weight = valid.to(rewards.dtype)
    count = rewards.new_zeros(n_groups).index_add_(0, group, weight)
    mean = rewards.new_zeros(n_groups).index_add_(0, group, rewards * weight) / count.clamp(min=1)
    centred = (rewards - mean[group]) * weight
    squares = rewards.new_zeros(n_groups).index_add_(0, group, centred.pow(2))
    zero_variance = squares <= 1e-12
    if config.normalization == "center":
        return centred, zero_variance
    std = torch.sqrt(squares / (count - 1).clamp(min=1))
    return centred / (std.clamp(min=config.std_floor) + config.std_eps)[group], zero_variance


def sample_advantages(batch: RolloutBatch, config: GRPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] advantages, per-group zero-variance flags) of a rollout batch: the verifier reward
    normalised within its group (`group_advantages`), minus beta x the sample's summed KL estimate when
    the KL is placed in the reward (the rollout's own KL, sampler vs reference: fixed for the whole
    update, like the reward). The zero-variance flags are of the verifier reward: the KL term carries
    no reward signal."""
    mask = batch.response_mask
    advantages, zero_variance = group_advantages(batch.rewards.float(), batch.group, mask.sum(1) > 0, config)
    if config.kl_placement == "reward" and config.kl_coef > 0:
        kl = reference_kl(batch.old_logp, batch.ref_logp, mask, config.kl_estimator, charged=True)
        advantages = advantages - config.kl_coef * kl.sum(1)
    return advantages, zero_variance


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: GRPOConfig,
    *,
    total_tokens: torch.Tensor | float,
    total_sequences: torch.Tensor | float,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss share, clipped [B, T], kl_to_ref [B, T] or None without a reference pass) of a micro-batch
    of B sequences ([B, T] log-probs, [B] advantages): the clipped surrogate, plus beta x the KL
    estimate per token when it is placed in the loss, aggregated by `micro_batch_loss`."""
    kl_coef = config.kl_coef if config.kl_placement == "loss" else 0.0
    return surrogate_with_kl(
        logp, old_logp, ref_logp, advantages[:, None], mask, clip=config.clip, kl_coef=kl_coef,
        kl_estimator=config.kl_estimator, aggregation=config.aggregation, total_tokens=total_tokens,
        total_sequences=total_sequences, max_new_tokens=max_new_tokens,
    )  # fmt: skip


class GRPO:
    """The GRPO update over one RolloutBatch (implements steps.Algorithm)."""

    name = "grpo"

    def __init__(
        self, policy: torch.nn.Module, ref: torch.nn.Module | None, tokenizer: Any, config: RLConfig
    ) -> None:
        self.policy = policy
        self.config = config
        self.optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=config.grpo.lr,
            betas=(config.betas[0], config.betas[1]),
            weight_decay=config.weight_decay,
        )
        self.updates = 0  # rollouts consumed: seeds the minibatch shuffle

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        grpo = self.config.grpo
        mask = batch.response_mask
        advantages, zero_variance = sample_advantages(batch, grpo)

        self.policy.train()
        lengths = mask.sum(1)
        sums = Sums(
            zero_variance_groups=zero_variance.sum(), groups=len(zero_variance),
            advantage_tokens=(advantages * lengths).sum(), response_tokens=lengths.sum(),
        )  # fmt: skip
        for indices in minibatch_indices(
            len(batch), epochs=grpo.epochs, minibatches=grpo.minibatches, seed=self.config.seed,
            updates=self.updates, device=mask.device,
        ):  # fmt: skip
            sums.add(self._minibatch(batch, advantages, indices))
        self.updates += 1
        line, total = update_diagnostics(sums, mask.device)
        return {
            **line,
            "zero_variance_groups": total["zero_variance_groups"] / total["groups"],
            # Token-weighted: negative means long responses are pushed down (the short-format trap).
            "advantage_token_mean": total["advantage_tokens"] / max(total["response_tokens"], 1.0),
        }

    def _minibatch(self, batch: RolloutBatch, advantages: torch.Tensor, indices: torch.Tensor) -> Sums:
        """One optimizer step on the samples `indices`; returns its diagnostics (this rank's sums)."""

        def micro_loss(
            micro: MicroBatch, logp: torch.Tensor, total_tokens: torch.Tensor, total_sequences: torch.Tensor
        ):
            return grpo_loss(
                logp, micro.old_logp, micro.ref_logp, advantages[micro.rows], micro.response_mask,
                self.config.grpo, total_tokens=total_tokens, total_sequences=total_sequences,
                max_new_tokens=self.config.rollout.max_new_tokens,
            )  # fmt: skip

        return policy_step(self.policy, self.optimizer, batch, indices, self.config, micro_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]

    def save_models(self, folder: Path) -> None:
        self.policy.save_pretrained(folder)


def build(policy: torch.nn.Module, ref: torch.nn.Module | None, tokenizer: Any, config: RLConfig) -> GRPO:
    return GRPO(policy, ref, tokenizer, config)
