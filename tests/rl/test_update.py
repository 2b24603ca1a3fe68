"""The update skeleton PPO and GRPO share: which samples each optimizer step sees, micro-batches
trimmed to their longest row, global counts, and the optimizer step with its norm."""

from __future__ import annotations

import pytest
import torch

from echochamber.rl.rollout import RolloutBatch
from echochamber.rl.update import global_counts, micro_batches, minibatch_indices, optimizer_step, step_counts


def _batch(lengths: list[int], width: int = 6) -> RolloutBatch:
    """Right-padded rows of the given lengths; the response is everything after column 0."""
    n = len(lengths)
    attention = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        attention[i, :length] = 1
    response = attention.float()
    response[:, 0] = 0
    values = torch.arange(n * width, dtype=torch.float).view(n, width)
    return RolloutBatch(
        prompt_ids=[f"p{i}" for i in range(n)], sample_index=[0] * n, group=torch.arange(n), texts=[""] * n,
        formats=["other"] * n, statuses=["ok"] * n, correct=torch.zeros(n, dtype=torch.bool),
        rewards=torch.zeros(n), truncated=torch.zeros(n, dtype=torch.bool), tokens=values.long(),
        attention_mask=attention, response_mask=response, old_logp=-values, ref_logp=-2 * values,
    )  # fmt: skip


def test_minibatches_cover_every_sample_once_per_epoch_in_a_seeded_order():
    def steps(**kwargs: int) -> list[list[int]]:
        settings = {"epochs": 2, "minibatches": 3, "seed": 5, "updates": 0, **kwargs}
        return [i.tolist() for i in minibatch_indices(10, device=torch.device("cpu"), **settings)]

    shuffled = steps()
    assert len(shuffled) == 6 and [len(i) for i in shuffled] == [4, 4, 2] * 2
    for epoch in (shuffled[:3], shuffled[3:]):
        assert sorted(sum(epoch, [])) == list(range(10))
    assert shuffled[:3] != shuffled[3:]  # each epoch its own order
    assert shuffled == steps() and shuffled != steps(updates=1) and shuffled != steps(seed=6)
    assert steps(minibatches=1) == [list(range(10))] * 2  # one minibatch: in order, no shuffle


def test_micro_batches_hold_rows_of_similar_length_cut_to_their_longest_and_counts_are_global_sums():
    batch = _batch([2, 5, 3, 1, 6])
    micro = list(micro_batches(batch, torch.tensor([0, 2, 1, 3]), 2))
    # Longest first: [1 (5), 2 (3)] and [0 (2), 3 (1)], 14 columns of forward instead of the given
    # order's [0, 2] and [1, 3] at 3 and 5 (16).
    assert [m.rows.tolist() for m in micro] == [[1, 2], [0, 3]] and [m.cols for m in micro] == [5, 2]
    assert torch.equal(micro[0].old_logp, batch.old_logp[[1, 2], :5])
    assert torch.equal(micro[1].ref_logp, batch.ref_logp[[0, 3], :2])
    assert torch.equal(micro[1].tokens, batch.tokens[[0, 3], :2])
    # Equal lengths keep the given order (a stable sort), so every rank and a resumed run agree.
    ties = list(micro_batches(_batch([3, 3, 3, 4]), torch.tensor([2, 0, 1, 3]), 2))
    assert [m.rows.tolist() for m in ties] == [[3, 2], [0, 1]]
    tokens, sequences = global_counts(batch, torch.tensor([1, 4]))
    assert (tokens.item(), sequences.item()) == (4 + 5, 2) and tokens.dtype == sequences.dtype == torch.float64


def test_optimizer_step_clips_to_the_global_norm_and_reports_it_unclipped():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    assert optimizer_step(layer, optimizer, grad_clip=1.0) == pytest.approx(5.0)
    assert layer.weight.detach().tolist() == [pytest.approx([-0.6, -0.8])]  # the step of the clipped gradient
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    assert optimizer_step(layer, optimizer, grad_clip=None) == pytest.approx(5.0)
    counts = step_counts(grad_norm=5.0)
    assert counts.values == {"grad_norm": 5.0, "steps": 1.0}  # one process: each rank's share is all of it
