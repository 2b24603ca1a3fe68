"""PPO with a critic: the paper's main algorithm (OpenRLHF 0.6 settings), one rollout per `update`.

Per rollout batch (cleanrl's order, one token = one action):
1. the critic values every response token's state (once, before any step: the "old" values);
2. per-token rewards: the KL penalty -kl_coef * estimate(old_logp, ref_logp) on every response token
   (the paper: k1 "in the reward") and the verifier's score on the last response token;
3. GAE (gamma, lambda) gives advantages and returns; advantages are whitened over the whole batch
   (all ranks);
4. `epochs` passes over `minibatches` shuffled minibatches, each one actor step (clipped surrogate)
   and one critic step (clipped value loss), each optimizer with its own lr and gradient clipping.

The critic is the policy's transformer body (no LM head) with a fresh scalar head on the last hidden
state, zero-initialised so that every value starts at 0 and building it draws no random numbers
(resume compares RNG states). Losses are exact under micro-batching and data parallelism: each
micro-batch's share is normalised by the minibatch's global token or sequence count
(`losses.micro_batch_loss`), gradients are summed over ranks before clipping.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModel, PreTrainedModel

from echochamber.dist import Sums
from echochamber.errors import UserError
from echochamber.model.precision import autocast
from echochamber.rl.config import RLConfig
from echochamber.rl.losses import (
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    micro_batch_loss,
    reference_kl,
    token_rewards,
)
from echochamber.rl.rollout import RolloutBatch, micro_batch_rows, sequence_logprobs
from echochamber.rl.update import (
    global_counts,
    global_whiten,
    kl_sums,
    micro_batches,
    minibatch_indices,
    optimizer_step,
    step_counts,
    update_diagnostics,
)

CRITIC_DIR = "critic"
VALUE_HEAD_FILE = "value_head.safetensors"


class ValueModel(torch.nn.Module):
    """V(state): a causal-LM body plus a scalar head on its last hidden state.

    `forward` is laid out like `sequence_logprobs`: column s holds the value of the state in which
    tokens[:, s] was chosen, i.e. of the prefix tokens[:, :s] (the hidden state at s - 1); column 0 is 0.
    """

    def __init__(self, backbone: PreTrainedModel, head: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_policy(cls, policy: PreTrainedModel) -> ValueModel:
        """A copy of the policy's body (the LM head is dropped: a critic never needs the vocabulary)."""
        backbone = copy.deepcopy(policy.base_model)
        device = next(backbone.parameters()).device
        # float32 head whatever the body's dtype: values and returns are small differences of rewards.
        # skip_init: Linear's own random init would move the global RNG (resume compares RNG states).
        head = torch.nn.utils.skip_init(torch.nn.Linear, backbone.config.hidden_size, 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return cls(backbone, head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # values in float32 under a bfloat16 run too
            values = self.head(hidden.float()).squeeze(-1)
        return F.pad(values[:, :-1], (1, 0))

    def save(self, folder: Path) -> None:
        """An HF base-model folder (AutoModel loads it) plus the head's weights."""
        self.backbone.save_pretrained(folder)
        save_file(
            {"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach()},
            folder / VALUE_HEAD_FILE,
        )

    @classmethod
    def load(cls, folder: Path) -> ValueModel:
        """Read a folder written by `save` (on the CPU; move it with `.to`), in float32 like every
        trained model (see model.presets.load_model)."""
        try:
            backbone = AutoModel.from_pretrained(folder, dtype=torch.float32)
            weights = load_file(folder / VALUE_HEAD_FILE)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot load critic from {folder}: {first_line}") from error
        head = torch.nn.utils.skip_init(torch.nn.Linear, backbone.config.hidden_size, 1, dtype=torch.float32)
        head.load_state_dict(weights)
        return cls(backbone, head)


class PPO:
    """The PPO update over one RolloutBatch (implements steps.Algorithm)."""

    name = "ppo"

    def __init__(self, policy: PreTrainedModel, critic: ValueModel, config: RLConfig) -> None:
        self.policy, self.critic, self.config = policy, critic, config
        betas = (config.betas[0], config.betas[1])
        self.actor_optimizer = torch.optim.AdamW(
            policy.parameters(), lr=config.ppo.lr, betas=betas, weight_decay=config.weight_decay
        )
        self.critic_optimizer = torch.optim.AdamW(
            critic.parameters(), lr=config.ppo.critic_lr, betas=betas, weight_decay=config.weight_decay
        )
        self.updates = 0  # rollouts consumed: seeds the minibatch shuffle

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        ppo = self.config.ppo
        mask = batch.response_mask
        old_values = self._values(batch)
        penalty_coef = ppo.kl_coef if ppo.kl_placement == "reward" else 0.0
        rewards, penalty = token_rewards(
            batch.rewards.float(), batch.old_logp, batch.ref_logp, mask, kl_coef=penalty_coef, estimator=ppo.kl_estimator
        )  # fmt: skip
        advantages, returns = gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
        if ppo.whiten_advantages:
            advantages = global_whiten(advantages, mask)

        self.policy.train()
        self.critic.train()
        sums = Sums(
            value_sum=(old_values * mask).sum(), returns_sum=(returns * mask).sum(),
            penalty_sum=penalty.sum(), response_tokens=mask.sum(),
        )  # fmt: skip
        for indices in minibatch_indices(
            len(batch), epochs=ppo.epochs, minibatches=ppo.minibatches, seed=self.config.seed,
            updates=self.updates, device=mask.device,
        ):  # fmt: skip
            sums.add(self._minibatch(batch, advantages, returns, old_values, indices))
        self.updates += 1
        line, total = update_diagnostics(sums, mask.device)
        steps, response_tokens = max(total["steps"], 1.0), max(total["response_tokens"], 1.0)
        return {
            **line,  # its loss is the actor's objective: the clipped surrogate (+ the KL term if "loss")
            "policy_loss": total["policy_loss"] / steps,
            "value_loss": total["value_loss"] / steps,
            "critic_grad_norm": total["critic_grad_norm"] / steps,
            # Of the critic's values before this update; this rank's tokens only under torchrun.
            "explained_variance": explained_variance(old_values, returns, mask),
            "value_mean": total["value_sum"] / response_tokens,
            "returns_mean": total["returns_sum"] / response_tokens,
            "kl_penalty_mean": total["penalty_sum"] / response_tokens,
        }

    @torch.no_grad()
    def _values(self, batch: RolloutBatch) -> torch.Tensor:
        """The critic's values of every response token's state before this update ([N, S], 0 off the mask)."""
        self.critic.eval()
        values = torch.zeros_like(batch.old_logp)
        every_row = torch.arange(len(batch), device=values.device)
        for rows, cols, _ in micro_batch_rows(batch, every_row, self.config.micro_batch_size, share_prompts=False):
            with autocast(self.config.dtype, values.device):
                values[rows, :cols] = self.critic(batch.tokens[rows, :cols], batch.attention_mask[rows, :cols])
        return values * batch.response_mask

    def _minibatch(
        self,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_values: torch.Tensor,
        indices: torch.Tensor,
    ) -> Sums:
        """One actor step and one critic step on the samples `indices`; returns this rank's sums."""
        ppo = self.config.ppo
        total_tokens, total_sequences = global_counts(batch, indices)
        shares = {
            "total_tokens": total_tokens, "total_sequences": total_sequences,
            "max_new_tokens": self.config.rollout.max_new_tokens,
        }  # fmt: skip
        sums = Sums()
        self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches(batch, indices, self.config.micro_batch_size):
            rows, cols, mask = micro.rows, micro.cols, micro.response_mask
            logp, entropy = sequence_logprobs(
                self.policy, micro.tokens, micro.attention_mask, self.config.rollout.temperature, wanted=mask,
                shared_prompt=micro.shared_prompt, dtype=self.config.dtype,
            )
            assert entropy is not None
            per_token, clipped = clipped_policy_loss(logp, micro.old_logp, advantages[rows, :cols], mask, ppo.clip)
            policy_loss = micro_batch_loss(per_token, mask, ppo.aggregation, **shares)
            charged = ppo.kl_placement == "loss" and ppo.kl_coef > 0
            kl_to_ref = reference_kl(logp, micro.ref_logp, mask, ppo.kl_estimator, charged=charged)
            loss = policy_loss
            if charged:
                loss = loss + micro_batch_loss(ppo.kl_coef * kl_to_ref, mask, ppo.aggregation, **shares)
            loss.backward()

            with autocast(self.config.dtype, micro.tokens.device):
                values = self.critic(micro.tokens, micro.attention_mask)
            per_token_value = clipped_value_loss(values, old_values[rows, :cols], returns[rows, :cols], ppo.value_clip)
            value_loss = micro_batch_loss(per_token_value, mask, ppo.aggregation, **shares)
            value_loss.backward()

            with torch.no_grad():
                sums.add(
                    Sums(
                        loss=loss, policy_loss=policy_loss, value_loss=value_loss, tokens=mask.sum(),
                        entropy=(entropy * mask).sum(), clipped=(clipped * mask).sum(),
                        approx_kl=approx_kl(logp, micro.old_logp, mask).sum(),
                        **kl_sums(kl_to_ref, mask),
                    )
                )  # fmt: skip
        grad_norm = optimizer_step(self.policy, self.actor_optimizer, self.config.grad_clip)
        critic_grad_norm = optimizer_step(self.critic, self.critic_optimizer, self.config.grad_clip)
        sums.add(step_counts(grad_norm=grad_norm, critic_grad_norm=critic_grad_norm))
        return sums

    def state_dict(self) -> dict[str, Any]:
        """Everything the saved policy folder lacks: both optimizers, the critic, the update counter."""
        return {
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "critic": self.critic.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.updates = state["updates"]

    def save_models(self, folder: Path) -> None:
        """The policy as an HF folder at `folder`, the critic in `folder/critic/`."""
        self.policy.save_pretrained(folder)
        (folder / CRITIC_DIR).mkdir(exist_ok=True)
        self.critic.save(folder / CRITIC_DIR)


def build(policy: PreTrainedModel, ref: torch.nn.Module | None, tokenizer: Any, config: RLConfig) -> PPO:
    """PPO for `policy` (the checkpoint just loaded; on resume `load_state_dict` then replaces the
    critic's weights). `ref` and `tokenizer` are unused: the reference log-probs come in the batch."""
    return PPO(policy, ValueModel.from_policy(policy), config)
