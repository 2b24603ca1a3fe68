"""REINFORCE with a group baseline: the third estimator in the paper's own sweep (OpenRLHF
`reinforce_baseline`), and nanochat's RL. No critic; the G samples of a prompt are each other's baseline.

Advantage of token t of sample i of prompt p, from the verifier reward r and the KL penalty k:

    c_i    = r_i - mean_p r                       ("mean": the paper's baseline, the whole group)
    c_i    = r_i - mean_{j in p, j != i} r_j      ("loo": RLOO, leave-one-out)
    A_i,t  = c_i - beta * sum_{t' >= t} k_i,t'    (KL "reward": the returns-to-go of the per-token
                                                   penalties, gamma = 1; k from the sampler vs the
                                                   reference, fixed for the update)

then, with `whiten_advantages` (the paper), A is whitened over every response token of the batch.
Which baseline, and why both: a baseline that does not depend on sample i's own action leaves the
policy gradient unbiased, and the leave-one-out mean is such a baseline. The group mean contains
r_i itself, but r_i - mean_p r = (G-1)/G * (r_i - mean_{j != i} r_j) exactly: the mean baseline is
RLOO with every step shrunk by (G-1)/G (7/8 at the paper's G = 8), the same direction. The paper ran
"mean"; "loo" is the textbook unbiased form. After whitening the two differ only through the KL term.
Unlike GRPO there is no division by the group's std, so a prompt whose samples nearly tie is not
blown up to +-1 advantages.

The loss per token is PPO's clipped surrogate -min(rho A, clip(rho, 1-eps, 1+eps) A) with
rho = p / p_sampler, or with `clip: null` the unclipped -rho A. In the first optimizer step of an
update rho = 1 and the gradient of -rho A is -A grad log p: plain REINFORCE. On later minibatches
(the paper takes 8 optimizer steps per rollout) rho re-weights the now off-policy samples, and the
clip (the paper's OpenRLHF actor loss) bounds how far one rollout moves the policy. The KL may
instead be placed in the loss (beta x the estimate per token, as the paper's GRPO); the aggregation
of the per-token loss is named (token_mean / seq_mean / constant), exact under micro-batching.

Samples left out of the loss (truncation "mask") are left out of their group's baseline too; a
sample with no valid partner in its group gets advantage 0 under "loo" (no baseline exists).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from echochamber.dist import Sums
from echochamber.rl.config import REINFORCEConfig, RLConfig
from echochamber.rl.losses import returns_to_go, surrogate_with_kl, token_rewards
from echochamber.rl.rollout import RolloutBatch
from echochamber.rl.update import (
    MicroBatch,
    global_whiten,
    minibatch_indices,
    policy_step,
    update_diagnostics,
)


def centred_rewards(
    rewards: torch.Tensor, group: torch.Tensor, valid: torch.Tensor, baseline: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] reward minus its baseline, 0 for invalid samples; per-group flag: no reward variance).

    "mean": r_i - (sum of the group's valid rewards) / count; "loo": r_i - (sum - r_i) / (count - 1),
    0 where the sample is its group's only valid one.
    """
    n_groups = int(group.max()) + 1
    weight = valid.to(rewards.dtype)
    count = rewards.new_zeros(n_groups).index_add_(0, group, weight)[group]
    total = rewards.new_zeros(n_groups).index_add_(0, group, rewards * weight)[group]
    if baseline == "loo":
        others = (count - 1).clamp(min=1)
        centred = torch.where(count > 1, rewards - (total - rewards) / others, 0.0)
    else:
        centred = rewards - total / count.clamp(min=1)
    centred = centred * weight
    squares = rewards.new_zeros(n_groups).index_add_(0, group, centred.pow(2))
    return centred, squares <= 1e-12


def token_advantages(
    batch: RolloutBatch, config: REINFORCEConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """([N, S] advantages, 0 off the mask; the pieces a metrics line reports: the per-group
    zero-variance flags of the verifier reward, the returns before whitening and the KL penalty)."""
    mask = batch.response_mask
    centred, zero_variance = centred_rewards(
        batch.rewards.float(), batch.group, mask.sum(1) > 0, config.baseline
    )
    coef = config.kl_coef if config.kl_placement == "reward" else 0.0
    rewards, penalty = token_rewards(
        centred, batch.old_logp, batch.ref_logp, mask, kl_coef=coef, estimator=config.kl_estimator
    )
    returns = returns_to_go(rewards, mask)
    advantages = global_whiten(returns, mask) if config.whiten_advantages else returns
    return advantages, {"zero_variance": zero_variance, "returns": returns, "penalty": penalty}


def reinforce_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: REINFORCEConfig,
    *,
    total_tokens: torch.Tensor | float,
    total_sequences: torch.Tensor | float,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss share, clipped [B, T], kl_to_ref [B, T] or None without a reference pass) of a micro-batch
    ([B, T] log-probs and advantages): -rho A per token (clipped as PPO's when `clip` is set), plus
    beta x the KL estimate when it is placed in the loss, aggregated by `micro_batch_loss`."""
    clip = config.clip if config.clip is not None else math.inf  # clamp(rho, -inf, inf) = rho: never clips
    kl_coef = config.kl_coef if config.kl_placement == "loss" else 0.0
    return surrogate_with_kl(
        logp, old_logp, ref_logp, advantages, mask, clip=clip, kl_coef=kl_coef,
        kl_estimator=config.kl_estimator, aggregation=config.aggregation, total_tokens=total_tokens,
        total_sequences=total_sequences, max_new_tokens=max_new_tokens,
    )  # fmt: skip


class REINFORCE:
    """The REINFORCE update over one RolloutBatch (implements steps.Algorithm)."""

    name = "reinforce"

    def __init__(self, policy: torch.nn.Module, config: RLConfig) -> None:
        self.policy = policy
        self.config = config
        self.optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=config.reinforce.lr,
            betas=(config.betas[0], config.betas[1]),
            weight_decay=config.weight_decay,
        )
        self.updates = 0  # rollouts consumed: seeds the minibatch shuffle

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        settings = self.config.reinforce
        mask = batch.response_mask
        advantages, parts = token_advantages(batch, settings)

        self.policy.train()
        sums = Sums(
            zero_variance_groups=parts["zero_variance"].sum(), groups=len(parts["zero_variance"]),
            returns_sum=(parts["returns"] * mask).sum(), penalty_sum=parts["penalty"].sum(),
            response_tokens=mask.sum(),
        )  # fmt: skip
        for indices in minibatch_indices(
            len(batch), epochs=settings.epochs, minibatches=settings.minibatches, seed=self.config.seed,
            updates=self.updates, device=mask.device,
        ):  # fmt: skip
            sums.add(self._minibatch(batch, advantages, indices))
        self.updates += 1
        line, total = update_diagnostics(sums, mask.device)
        response_tokens = max(total["response_tokens"], 1.0)
        return {
            **line,
            "zero_variance_groups": total["zero_variance_groups"] / total["groups"],
            # Before whitening. Negative means long responses are pushed down (the short-format trap).
            "return_token_mean": total["returns_sum"] / response_tokens,
            "kl_penalty_mean": total["penalty_sum"] / response_tokens,
        }

    def _minibatch(self, batch: RolloutBatch, advantages: torch.Tensor, indices: torch.Tensor) -> Sums:
        """One optimizer step on the samples `indices`; returns its diagnostics (this rank's sums)."""

        def micro_loss(
            micro: MicroBatch, logp: torch.Tensor, total_tokens: torch.Tensor, total_sequences: torch.Tensor
        ):
            return reinforce_loss(
                logp, micro.old_logp, micro.ref_logp, advantages[micro.rows, : micro.cols], micro.response_mask,
                self.config.reinforce, total_tokens=total_tokens, total_sequences=total_sequences,
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


def build(policy: torch.nn.Module, ref: torch.nn.Module | None, tokenizer: Any, config: RLConfig) -> REINFORCE:
    """REINFORCE for `policy`; `ref` and `tokenizer` are unused (the reference log-probs come in the batch)."""
    return REINFORCE(policy, config)
