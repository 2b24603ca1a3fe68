"""What pretraining reads: windows as a pure function of the sample index, one permutation per epoch."""

from __future__ import annotations

import numpy as np
import torch

from echochamber.pretrain.windows import WindowSampler


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
