"""The distribution the sampler draws from (model/sampling.py): counter-based uniforms, top-k/top-p
by HF's rules, and draws whose frequencies and log-probs match the filtered distribution."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from echochamber.model import sampling
from echochamber.model.sampling import sample_key, uniforms
from echochamber.model.sampling_params import SamplingParams


def test_uniforms_are_splitmix64_and_look_uniform():
    def splitmix(x: int) -> int:
        mask = (1 << 64) - 1
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    keys = [sample_key(0, "q1", i) for i in range(4)] + [-1, 0, 2**63 - 1]
    for step in (0, 1, 1000):
        got = uniforms(torch.tensor(keys), step).tolist()
        # The torch version adds (step+1)·golden to the key, then applies the standard finaliser.
        expected = [(splitmix((k + step * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 11) / 2**53 for k in keys]
        assert got == expected
    many = uniforms(torch.arange(20_000), 3)
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01
    assert sample_key(0, "a:1", 2) != sample_key(0, "a", 12)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, top_p=0.9),  # rejection from the tempered distribution
        SamplingParams(temperature=1.5, top_p=0.3),  # small nucleus: masked sampling
        SamplingParams(temperature=1.0, top_k=3),
    ],
    ids=["top-p 0.9", "top-p 0.3", "top-k 3"],
)
def test_sampled_frequencies_follow_the_filtered_distribution(params, filtered_logprobs):
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = filtered_logprobs(logits, params).exp()[0]
    n = 40_000
    tokens, logprobs = sampling.pick(logits.expand(n, -1), torch.arange(n), 0, params)
    counts = torch.bincount(tokens, minlength=6).double() / n
    assert counts[probs == 0].sum() == 0  # filtered tokens never drawn
    assert torch.allclose(counts, probs.double(), atol=0.01)
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-5)
    # Without log-probs the nucleus is tested by a masked sum instead of the histogram: same draws.
    unlogged, none = sampling.pick(logits.expand(n, -1), torch.arange(n), 0, replace(params, logprobs=False))
    assert none is None and torch.equal(unlogged, tokens)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_tokens_do_not_depend_on_whether_log_probs_are_asked_for(top_p, temperature):
    # Constructed rows: a peaked one (most draws pass the "heavier than 1 - top_p" shortcut), flat
    # ones (every draw needs the masked sum, and some are rejected and redrawn), and tie groups.
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(64, 300, generator=generator) * torch.linspace(0.05, 4.0, 64)[:, None]
    x[:8, :40] = x[:8, 40:41]
    x[8, 0] = 12.0
    params = SamplingParams(temperature=temperature, top_p=top_p)
    keys = torch.arange(64) * 7919
    probs = (x.double() / max(temperature, 1e-9)).softmax(-1)

    def margin(row: int, token: int) -> float:
        """How far the token's mass-above is from the top-p line, in float64."""
        return abs(probs[row][probs[row] > probs[row, token]].sum().item() - top_p)

    for step in range(20):
        tokens, logprobs = sampling.pick(x, keys, step, params)
        unlogged, none = sampling.pick(x, keys, step, replace(params, logprobs=False))
        assert none is None and logprobs is not None
        # The two tests sum float32 masses in different orders, so they may only part on a token
        # whose mass-above lies within rounding of top_p (rare: a CPU's rounding decides where).
        for row in (unlogged != tokens).nonzero().flatten().tolist():
            assert min(margin(row, int(tokens[row])), margin(row, int(unlogged[row]))) < 1e-5
        assert (unlogged != tokens).sum() <= 1


def brute_force_top_p(x: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = x.double().softmax(-1)
    keep = torch.zeros_like(x, dtype=torch.bool)
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            keep[r, i] = probs[r, i] > 0 and probs[r][probs[r] > probs[r, i]].sum() < top_p
    return keep


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0, 30.0])
def test_top_p_mask_matches_the_definition_including_ties(scale):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 60, generator=generator) * scale
    x[:, :4] = x[:, 4:5]  # a tie group in every row
    x[0] = 0.25  # a row of identical logits
    for top_p in (0.05, 0.5, 0.9, 0.95):
        for top_k in (0, 7):
            tempered = sampling._temper(x, SamplingParams(1.0, top_p=top_p, top_k=top_k))
            expected = brute_force_top_p(tempered.logits, top_p)
            nucleus = sampling._nucleus(tempered, top_p)
            assert torch.equal(nucleus.mask(tempered.logits), expected)
            kept = torch.where(expected, tempered.weights, 0).sum(-1, keepdim=True)
            assert torch.allclose(nucleus.kept_weight, kept, rtol=1e-5)
            rows, tokens = torch.meshgrid(torch.arange(10), torch.arange(60), indexing="ij")
            keeps = nucleus.keeps(rows.flatten(), tokens.flatten(), tempered.logits).view(10, 60)
            drawable = tempered.weights > 0  # keeps() is only asked about tokens that can be drawn
            assert torch.equal(keeps[drawable], expected[drawable])
            sorted_mask = sampling._nucleus_mask_sorted(tempered.logits, tempered.weights, top_p)
            assert torch.equal(sorted_mask, expected)
            total = tempered.weights.sum(-1)
            in_nucleus = sampling._in_nucleus(tempered, total, rows.flatten(), tokens.flatten(), top_p).view(10, 60)
            assert torch.equal(in_nucleus[drawable], expected[drawable])


def test_top_p_matches_hf_warpers_on_distinct_logits(filtered_logprobs):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = torch.randn(8, 500, generator=torch.Generator().manual_seed(1)) * 2
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.9)
    hf = TopPLogitsWarper(0.9)(None, TopKLogitsWarper(50)(None, TemperatureLogitsWarper(0.7)(None, x.clone())))
    assert torch.allclose(filtered_logprobs(x, params), torch.log_softmax(hf, -1))
