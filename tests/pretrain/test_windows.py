"""What pretraining reads: windows as a pure function of the sample index, one permutation per epoch;
and the loss it trains on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from echochamber.model.presets import build_model
from echochamber.pretrain.windows import WindowSampler, token_loss


def test_window_sampler_is_a_pure_function_of_the_sample_index():
    tokens = np.arange(1001, dtype=np.uint16)
    sampler = WindowSampler(tokens, seq_len=10, seed=3)
    assert sampler.n_windows == 100
    whole = sampler.windows(95, 10)  # crosses the epoch boundary at sample 100
    split = torch.cat([WindowSampler(tokens, 10, 3).windows(95, 4), WindowSampler(tokens, 10, 3).windows(99, 6)])
    assert torch.equal(whole, split)
    epoch0 = sampler.windows(0, 100)
    assert sorted(epoch0[:, 0].tolist()) == list(range(0, 1000, 10))  # every window once per epoch
    assert torch.equal(epoch0[:, 1:] - epoch0[:, :-1], torch.ones(100, 10, dtype=torch.int64))  # contiguous
    assert not torch.equal(epoch0, sampler.windows(100, 100))  # a new permutation each epoch
    assert not torch.equal(epoch0, WindowSampler(tokens, 10, seed=4).windows(0, 100))


def test_token_loss_is_cross_entropy_with_its_gradient():
    """The chunked loss against F.cross_entropy on a real model: mean and sum, and every weight's
    gradient (the loss the optimiser sees must not change with the chunking)."""
    model = build_model("tiny", 61, max_seq_len=32, seed=2)
    windows = torch.randint(0, 61, (3, 17), generator=torch.Generator().manual_seed(5))
    plain = F.cross_entropy(model(input_ids=windows[:, :-1]).logits.flatten(0, 1), windows[:, 1:].flatten())
    plain.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = token_loss(model, windows)
    loss.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(token_loss(model, windows, reduction="sum"), plain.detach() * 3 * 16, rtol=1e-6, atol=0)
