"""Who draws a step's samples (`rollout.backend`), and how far its log-probs are from the trainer's.

torch: the policy itself, through the project's sampler (a fresh sampler over the current policy
each step: nothing to synchronise). vllm: one colocated engine for the whole run (model/sampler_vllm.py),
built from the starting policy and given the policy's weights in memory after every update (`sync`),
so step N samples exactly the weights update N-1 produced, with no checkpoint written or read.

Either way the log-probs the ratio uses as `old_logp` are the ones the sampler reports, those of
the distribution the tokens were drawn from (model/sampler.py). The trainer's own forward gives
slightly different numbers when the sampler is another engine (other kernels, another dtype):
`logprob_gap` measures that difference on each step's samples, mean and max |Δ| per response token,
for the metrics line. A large gap means the first ratio of an update is not 1 by the engine's doing,
not the policy's: clipping then acts on noise (see docs/gpu.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from echochamber import dist
from echochamber.model.sampler import Sampler, build_sampler
from echochamber.rl.config import RolloutConfig
from echochamber.rl.rollout import RolloutBatch, batch_logprobs


class RolloutEngine:
    """The sampler of every step of one RL run (`rollout.backend`)."""

    def __init__(self, config: RolloutConfig, tokenizer: Any) -> None:
        self.config, self.tokenizer = config, tokenizer
        self._vllm: Any = None  # the colocated engine, built at the first step
        if config.backend == "vllm":
            from echochamber.model.sampler_vllm import check_vllm

            check_vllm()  # before any model is loaded

    def sampler(self, policy: torch.nn.Module) -> Sampler:
        """The sampler of this step: over `policy` (torch), or the colocated engine (vllm), built from
        `policy` the first time and kept in step with it by `sync` after that."""
        if self.config.backend == "torch":
            return build_sampler(policy, self.tokenizer, batch_size=self.config.batch_size)
        if self._vllm is None:
            from echochamber.model.sampler_vllm import build_vllm_sampler

            settings = self.config.vllm
            self._vllm = build_vllm_sampler(
                policy, self.tokenizer, False, dtype=settings.dtype, colocate_memory=settings.memory
            )
        return self._vllm

    def sync(self, policy: torch.nn.Module) -> float:
        """After an update: give the engine the policy's new weights; returns the seconds it took (0
        for torch, whose sampler reads the policy itself)."""
        if self._vllm is None:
            return 0.0
        started = time.perf_counter()
        self._vllm.push_weights(policy)
        return time.perf_counter() - started


def logprob_gap(
    policy: torch.nn.Module, batch: RolloutBatch, temperature: float, micro_batch_size: int, dtype: str = "float32"
) -> dict[str, float | None]:
    """{"logprob_gap_mean", "logprob_gap_max"}: |trainer log p - sampler log p| per response token
    of `batch` (all ranks), the trainer's from `policy`'s forward at the sampling temperature in the
    run's precision `dtype`, before any update; None without response tokens. Costs one forward
    pass of the policy over the batch."""
    was_training = policy.training
    policy.eval()
    trainer = batch_logprobs(policy, batch, temperature, micro_batch_size, dtype=dtype)
    policy.train(was_training)
    gap = (trainer - batch.old_logp).abs()[batch.response_mask > 0]
    total, count = float(gap.sum()), float(gap.numel())
    largest = float(gap.max()) if gap.numel() else 0.0
    parts = dist.gather_objects((total, largest, count))
    count = sum(part[2] for part in parts)
    if count == 0:
        return {"logprob_gap_mean": None, "logprob_gap_max": None}
    return {
        "logprob_gap_mean": sum(part[0] for part in parts) / count,
        "logprob_gap_max": max(part[1] for part in parts),
    }
