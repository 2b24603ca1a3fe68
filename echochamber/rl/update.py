"""The update skeleton PPO, GRPO and REINFORCE share, as plain functions (cleanrl's loop, written once).

One update consumes one RolloutBatch: `epochs` passes over it, each cut into `minibatches`
optimizer steps (`minibatch_indices`). An optimizer step runs its samples in micro-batches
(`micro_batches`: rows of similar length or of one prompt, each trimmed to its longest), every
micro-batch's loss normalised by the minibatch's global token and sequence counts
(`global_counts`, see losses.micro_batch_loss) so that the shares of all micro-batches on all
ranks sum to the minibatch's loss; then the gradients are summed over ranks, clipped and applied
(`optimizer_step`). Diagnostics are summed once over ranks at the end (`dist.Sums`; `step_counts`
for the numbers every rank holds alike; `update_diagnostics`).
A critic-free algorithm (GRPO, REINFORCE) hands `policy_step` its loss for one micro-batch and gets
the whole optimizer step. What is an algorithm's own (advantages, losses, what it logs) stays in
grpo.py, ppo.py and reinforce.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from echochamber import dist
from echochamber.dist import Sums
from echochamber.rl.config import RLConfig
from echochamber.rl.losses import approx_kl
from echochamber.rl.rollout import RolloutBatch, micro_batch_rows, sequence_logprobs


def minibatch_indices(
    n: int, *, epochs: int, minibatches: int, seed: int, updates: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """The sample indices of each optimizer step of one update: `epochs` passes over the n samples,
    each cut into `minibatches` parts, shuffled when there is more than one. The shuffle is seeded by
    (seed, updates so far), so every rank and a resumed run draw the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + updates)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if minibatches > 1 else torch.arange(n)
        for indices in order.chunk(minibatches):
            yield indices.to(device)


@dataclass(frozen=True)
class MicroBatch:
    """Rows `rows` of a RolloutBatch, every tensor cut to the longest of them ([m, cols])."""

    rows: torch.Tensor
    cols: int
    shared_prompt: int  # prompt tokens every row starts with, run once (rollout.micro_batch_rows); 0: none
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None  # None without a reference pass (KL 0)


def micro_batches(batch: RolloutBatch, indices: torch.Tensor, size: int) -> Iterator[MicroBatch]:
    """`indices` in micro-batches of at most `size` rows, each trimmed to its longest row, as
    `rollout.micro_batch_rows` plans them (by length, or by prompt with the prompt run once)."""
    for rows, cols, shared in micro_batch_rows(batch, indices, size):
        yield MicroBatch(
            rows, cols, shared, batch.tokens[rows, :cols], batch.attention_mask[rows, :cols],
            batch.response_mask[rows, :cols], batch.old_logp[rows, :cols],
            batch.ref_logp[rows, :cols] if batch.ref_logp is not None else None,
        )  # fmt: skip


def global_counts(batch: RolloutBatch, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(response tokens, sequences) of the minibatch `indices` over all ranks, as float64 scalars."""
    tokens = dist.global_sum(batch.response_mask[indices].sum().double())
    sequences = dist.global_sum(torch.tensor(float(len(indices)), dtype=torch.float64, device=indices.device))
    return tokens, sequences


def global_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """losses.masked_whiten with the mean and variance of every rank's tokens (OpenRLHF's
    all-reduced normalisation), so an update over N processes equals the single-process one."""
    mask = mask.to(values.dtype)
    stats = dist.global_sum(
        torch.stack([mask.sum(), (values * mask).sum(), (values.pow(2) * mask).sum()]).double()
    )
    n = stats[0].clamp(min=1.0)
    mean = stats[1] / n
    var = (stats[2] / n - mean.pow(2)).clamp(min=0.0)
    return ((values - mean) * torch.rsqrt(var + eps)).to(values.dtype) * mask


def optimizer_step(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
) -> float:
    """Sum the gradients over ranks, clip them to `grad_clip` (None: only measure), step; returns the
    global gradient norm before clipping."""
    dist.sum_gradients(module)
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip or math.inf)
    optimizer.step()
    return float(grad_norm)


def step_counts(**norms: float) -> Sums:
    """One optimizer step's gradient norms and the step itself, for Sums: every rank holds the same
    (global) values, so each rank adds its 1/world share and the global sum counts them once."""
    share = 1.0 / dist.world_size()
    return Sums(**{name: norm * share for name, norm in norms.items()}, steps=share)


def kl_sums(kl_to_ref: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A micro-batch's summed KL to the reference for Sums; nothing without a reference pass, so
    that kl_loss is reported as None (not measured), never as 0."""
    return {} if kl_to_ref is None else {"kl_to_ref": (kl_to_ref * mask).sum()}


MicroLoss = Callable[
    ["MicroBatch", torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
]
"""(micro-batch, its log-probs [m, cols], the minibatch's global tokens, sequences) -> (loss share,
clipped [m, cols], kl_to_ref [m, cols] or None without a reference pass): what a critic-free
algorithm supplies to `policy_step`."""


def policy_step(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    indices: torch.Tensor,
    config: RLConfig,
    micro_loss: MicroLoss,
) -> Sums:
    """One optimizer step of a critic-free update (GRPO, REINFORCE) on the samples `indices`: each
    micro-batch's log-probs at the sampling temperature, its loss share from the algorithm's
    `micro_loss`, backward; then `optimizer_step`. Returns this rank's sums: entropy, clipped tokens,
    approx_kl (vs the sampling policy) and kl_to_ref per response token, the loss, the step."""
    total_tokens, total_sequences = global_counts(batch, indices)
    sums = Sums()
    optimizer.zero_grad(set_to_none=True)
    for micro in micro_batches(batch, indices, config.micro_batch_size):
        mask = micro.response_mask
        logp, entropy = sequence_logprobs(
            policy, micro.tokens, micro.attention_mask, config.rollout.temperature, wanted=mask,
            shared_prompt=micro.shared_prompt, dtype=config.dtype,
        )
        assert entropy is not None
        loss, clipped, kl_to_ref = micro_loss(micro, logp, total_tokens, total_sequences)
        loss.backward()
        with torch.no_grad():
            sums.add(
                Sums(
                    entropy=(entropy * mask).sum(), clipped=(clipped * mask).sum(),
                    approx_kl=approx_kl(logp, micro.old_logp, mask).sum(),
                    tokens=mask.sum(), loss=loss, **kl_sums(kl_to_ref, mask),
                )
            )  # fmt: skip
    sums.add(step_counts(grad_norm=optimizer_step(policy, optimizer, config.grad_clip)))
    return sums


def update_diagnostics(sums: Sums, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """(what every PPO/GRPO update reports, the global totals of `sums` for the rest). Per optimizer
    step: the loss and the gradient norm; per response token of the update's forwards: the entropy,
    the clipped fraction, approx_kl (vs the sampling policy) and kl_loss (the estimator vs the
    reference; None without a reference pass)."""
    total = sums.global_totals(device)
    tokens, steps = max(total["tokens"], 1.0), max(total["steps"], 1.0)
    line = {
        "loss": total["loss"] / steps,
        "entropy": total["entropy"] / tokens,
        "clip_fraction": total["clipped"] / tokens,
        "approx_kl": total["approx_kl"] / tokens,
        "kl_loss": total["kl_to_ref"] / tokens if "kl_to_ref" in total else None,
        "grad_norm": total["grad_norm"] / steps,
    }
    return line, total
