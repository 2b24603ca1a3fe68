"""The update skeleton PPO and GRPO share: which samples each optimizer step sees, micro-batches
trimmed to their longest row, global counts, and the optimizer step with its norm."""

from __future__ import annotations

import pytest
import torch

from echochamber.rl.rollout import RolloutBatch, micro_batch_rows
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
        attention_mask=attention, prompt_length=torch.ones(n, dtype=torch.long), response_mask=response,
        old_logp=-values, ref_logp=-2 * values,
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


def _grouped(prompts: list[list[int]], responses: list[list[int]], groups: list[int]) -> RolloutBatch:
    """A batch whose row i is prompts[groups[i]] + responses[i], right-padded with -1."""
    rows = [prompts[g] + r for g, r in zip(groups, responses, strict=True)]
    batch = _batch([len(r) for r in rows], width=max(len(r) for r in rows))
    batch.group = torch.tensor(groups)
    batch.prompt_length = torch.tensor([len(prompts[g]) for g in groups])
    batch.tokens = torch.tensor([r + [-1] * (batch.tokens.shape[1] - len(r)) for r in rows])
    return batch


def test_micro_batches_of_one_prompt_run_it_once_when_that_runs_fewer_tokens():
    # Two prompts of 6 tokens, four samples each, micro-batches of 4: by prompt the forward runs
    # 6 + 4 x 3 and 6 + 4 x 4 tokens (38); by length 4 x 10 twice (80).
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    responses = [[1], [2, 2, 2], [3, 3], [4], [5, 5, 5, 5], [6], [7, 7], [8]]
    batch = _grouped(prompts, responses, [0, 0, 0, 0, 1, 1, 1, 1])
    micro = list(micro_batches(batch, torch.arange(8), 4))
    assert [m.rows.tolist() for m in micro] == [[1, 2, 0, 3], [4, 6, 5, 7]]  # each prompt's rows, longest first
    assert [(m.cols, m.shared_prompt) for m in micro] == [(9, 6), (10, 6)]
    # A model that runs whole rows (PPO's critic) keeps the plan by length.
    whole = list(micro_batch_rows(batch, torch.arange(8), 4, share_prompts=False))
    assert [(rows.tolist(), shared) for rows, _, shared in whole] == [([4, 1, 2, 6], 0), ([0, 3, 5, 7], 0)]
    # Rows that only claim a group but start differently share nothing (group 0 now; group 1 still does).
    batch.tokens[3, 0] = 99
    assert [m.shared_prompt for m in micro_batches(batch, torch.arange(8), 4)] == [0, 6]
    # Rows with nothing after their prompt have nothing to run over a shared one.
    assert micro_batch_rows(_grouped([[1, 2]], [[], []], [0, 0]), torch.arange(2), 2)[0][2] == 0
    # One sample per prompt: a plan by prompt would need more micro-batches, so rows go by length.
    single = _grouped([[1, 2, 3]] * 3, [[1], [2, 2], [3]], [0, 1, 2])
    by_length = [(m.rows.tolist(), m.shared_prompt) for m in micro_batches(single, torch.arange(3), 2)]
    assert by_length == [([1, 0], 0), ([2], 0)]


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
