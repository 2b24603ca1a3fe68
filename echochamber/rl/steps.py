"""What each kind of RL does in one step, behind one interface (`Steps`) that core.py's loop drives.

PPO, GRPO and REINFORCE (`PolicyGradientSteps`) sample a seeded slice of the prompts at the rollout
temperature, pad the samples with the reference's log-probs (none at KL 0) and call their `Algorithm.update`
(ppo.py, grpo.py, reinforce.py); Expert Iteration (`ExpertIterationSteps`) samples every prompt with
its own settings and runs `ei.run_round`. Everything else (grading, logging, checkpoints, evaluation)
is the same for all of them and lives in core.py. This module is the only one that knows every
algorithm; they never import each other.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from echochamber import dist
from echochamber.checkpoint import restore_rank_rng
from echochamber.data.records import Record
from echochamber.model.sampling_params import SamplingParams
from echochamber.rl.config import RLConfig
from echochamber.rl.engine import logprob_gap
from echochamber.rl.losses import KL_ESTIMATORS, kl_estimate
from echochamber.rl.rollout import Rollout, RolloutBatch, build_batch, rank_share, step_prompts


class Algorithm(Protocol):
    name: str

    def update(self, batch: RolloutBatch) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_models(self, folder: Path) -> None: ...


def sample_seed(seed: int, step: int) -> int:
    """The sampler seed of step (or EI round) `step`: fresh samples when a prompt comes back next epoch."""
    return int.from_bytes(hashlib.blake2b(f"rl:{seed}:{step}".encode(), digest_size=4).digest(), "little")


def rollout_kl(batch: RolloutBatch) -> torch.Tensor | None:
    """[sum of k1, k2, k3 over response tokens, token count] of the sampling policy vs the reference
    (None without a reference pass)."""
    if batch.ref_logp is None:
        return None
    mask = batch.response_mask
    sums = [kl_estimate(batch.old_logp, batch.ref_logp, mask, name).sum() for name in KL_ESTIMATORS]
    return torch.stack([*sums, mask.sum()]).double()


class Steps(Protocol):
    """What one kind of RL does each step; core.py does the rest (sampling, logging, checkpoints, eval)."""

    policy: Any  # the model that samples the next step (EI replaces it every round)

    def sampling(self, step: int) -> tuple[list[Record], int, SamplingParams]:
        """(this rank's prompts, samples per prompt, sampling params) of step `step`."""
        ...

    def update(
        self, step: int, rollouts: list[Rollout], seconds: dict[str, float]
    ) -> tuple[list[float] | None, dict[str, Any]]:
        """Learn from the step's graded rollouts; returns (KL sums vs the reference or None, the
        diagnostics for the metrics line) and adds time_reference and time_update to `seconds`."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def save_models(self, folder: Path) -> None: ...


class PolicyGradientSteps:
    """PPO, GRPO and REINFORCE: each step a seeded slice of the prompts, G samples each at the rollout
    temperature, padded with the reference's log-probs, then one `Algorithm.update`."""

    def __init__(
        self, algo: str, config: RLConfig, policy: Any, ref: Any, tokenizer: Any, records: list[Record],
        state: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        self.config, self.policy, self.ref, self.tokenizer, self.records = config, policy, ref, tokenizer, records
        self.algorithm = _build_algorithm(algo, policy, ref, tokenizer, config)
        if state is not None:
            self.algorithm.load_state_dict(state["algorithm"])
            restore_rank_rng(state["rng"])

    def sampling(self, step: int) -> tuple[list[Record], int, SamplingParams]:
        rollout, seed = self.config.rollout, self.config.seed
        prompts = rank_share(step_prompts(self.records, step, rollout.prompts_per_step, seed))
        params = SamplingParams(
            temperature=rollout.temperature, max_new_tokens=rollout.max_new_tokens, seed=sample_seed(seed, step)
        )
        return prompts, rollout.samples_per_prompt, params

    def update(
        self, step: int, rollouts: list[Rollout], seconds: dict[str, float]
    ) -> tuple[list[float] | None, dict[str, Any]]:
        config = self.config
        batch, seconds["time_reference"] = build_batch(
            rollouts, tokenizer=self.tokenizer, ref=self.ref, temperature=config.rollout.temperature,
            truncation=config.rollout.truncation, micro_batch_size=config.micro_batch_size,
            device=next(self.policy.parameters()).device, dtype=config.dtype,
        )  # fmt: skip
        sums = rollout_kl(batch)
        kl = dist.global_sum(sums).tolist() if sums is not None else None
        gap: dict[str, float | None] = {"logprob_gap_mean": None, "logprob_gap_max": None}
        if config.rollout.backend != "torch":  # samples from another engine: how far from the trainer's forward
            started = time.perf_counter()
            gap = logprob_gap(self.policy, batch, config.rollout.temperature, config.micro_batch_size, dtype=config.dtype)
            seconds["time_reference"] += time.perf_counter() - started
        started = time.perf_counter()
        diagnostics = self.algorithm.update(batch)
        seconds["time_update"] = time.perf_counter() - started
        return kl, {**gap, **diagnostics}

    def state_dict(self) -> dict[str, Any]:
        return self.algorithm.state_dict()

    def save_models(self, folder: Path) -> None:
        self.algorithm.save_models(folder)


class ExpertIterationSteps:
    """Expert Iteration: each round every prompt (whole prompts per rank; the few left over when the
    set does not split evenly sit out), `ei.samples_per_prompt` samples, then `ei.run_round`."""

    def __init__(
        self, config: RLConfig, policy: Any, tokenizer: Any, records: list[Record], state: dict[str, Any] | None
    ) -> None:
        if state is not None:
            restore_rank_rng(state["rng"])
        self.config, self.policy, self.tokenizer = config, policy, tokenizer
        self.records = rank_share(records[: len(records) - len(records) % dist.world_size()])

    def sampling(self, step: int) -> tuple[list[Record], int, SamplingParams]:
        ei = self.config.ei
        params = SamplingParams(
            temperature=ei.temperature, top_p=ei.top_p,
            max_new_tokens=ei.max_new_tokens or self.config.rollout.max_new_tokens,
            seed=sample_seed(self.config.seed, step),
        )  # fmt: skip
        return self.records, ei.samples_per_prompt, params

    def update(
        self, step: int, rollouts: list[Rollout], seconds: dict[str, float]
    ) -> tuple[list[float] | None, dict[str, Any]]:
        from echochamber.rl import ei

        seconds["time_reference"] = 0.0  # EI has no reference pass
        started = time.perf_counter()
        self.policy, diagnostics = ei.run_round(step, self.policy, rollouts, self.tokenizer, self.config)
        seconds["time_update"] = time.perf_counter() - started
        return None, diagnostics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def save_models(self, folder: Path) -> None:
        self.policy.save_pretrained(folder)


def build_steps(
    algo: str, config: RLConfig, policy: Any, ref: Any, tokenizer: Any, records: list[Record],
    state: dict[str, Any] | None,
) -> Steps:  # fmt: skip
    """The steps of `algo`, restored from a checkpoint's `state` (its RNG states included) if given."""
    if algo == "ei":
        return ExpertIterationSteps(config, policy, tokenizer, records, state)
    return PolicyGradientSteps(algo, config, policy, ref, tokenizer, records, state)


def _build_algorithm(algo: str, policy: Any, ref: Any, tokenizer: Any, config: RLConfig) -> Algorithm:
    if algo == "grpo":
        from echochamber.rl import grpo

        return grpo.build(policy, ref, tokenizer, config)
    if algo == "reinforce":
        from echochamber.rl import reinforce

        return reinforce.build(policy, ref, tokenizer, config)
    from echochamber.rl import ppo

    return ppo.build(policy, ref, tokenizer, config)
