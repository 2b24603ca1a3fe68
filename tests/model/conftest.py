"""Shared by the model tests: the distribution a sampler should draw from, computed over the whole
vocabulary (the oracle the sampler's draws and log-probs are checked against)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from echochamber.model import sampling
from echochamber.model.sampling_params import SamplingParams


def _filtered_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs (..., vocab) after temperature, then top-k, then top-p, renormalised; filtered tokens
    get -inf. Greedy (temperature 0): the untempered log-probs. Built with a full mask per row
    (`_top_p_mask`), which test_sampling.py checks against a brute-force top-p and HF's warpers."""
    shape = logits.shape
    if params.greedy:
        return torch.log_softmax(logits.float(), dim=-1)
    t = sampling._temper(logits.reshape(-1, shape[-1]), params)
    x = t.logits if params.top_p >= 1 else t.logits.masked_fill(~sampling._top_p_mask(t, params.top_p), -math.inf)
    return torch.log_softmax(x, dim=-1).reshape(shape)


@pytest.fixture(scope="session")
def filtered_logprobs() -> Callable[[torch.Tensor, SamplingParams], torch.Tensor]:
    return _filtered_logprobs
