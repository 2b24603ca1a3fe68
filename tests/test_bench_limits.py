"""The machine-limit bound beside the benchmarks' ratios (benchmarks/limits.py): what it counts must
match what the model and our sampler actually do, or the "largest ratio this CPU allows" is wrong."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from echochamber.model.decoders import OlmoDecoder
from echochamber.model.presets import build_model, flops_per_token, get_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from limits import (  # noqa: E402
    gemm_ceiling,
    kv_bytes_per_token,
    read_bandwidth,
    sampling_limit_seconds,
    square_gemm_rate,
)

VOCAB = 300


def test_kv_bytes_per_token_is_what_the_sampler_caches():
    model = build_model("tiny", VOCAB).eval()
    decoder = OlmoDecoder(model)
    rows, length = 3, 5
    with torch.inference_mode():
        decoder.prefill(torch.ones(rows, length, dtype=torch.long), torch.ones(rows, length, dtype=torch.bool), 16)
    cached = sum(t.nbytes for t in decoder.k_cache + decoder.v_cache)
    assert cached == kv_bytes_per_token(get_spec("tiny")) * rows * length


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_matmul_part_counts_two_flops_per_weight_and_token(preset):
    spec = get_spec(preset)
    seconds = sampling_limit_seconds(
        spec, VOCAB, prompt_tokens=10, rows=8, new_tokens=20, prefill_rows=2, gemm_gflops=1.0, read_gbs=math.inf
    )
    tokens = 10 * 2 + 20 * 8  # the prompts once each, every row's new tokens
    # A forward is a third of training's 6 FLOPs per matmul weight (attention's own FLOPs at length 0).
    assert seconds * 1e9 == pytest.approx(flops_per_token(spec, 0, vocab_size=VOCAB) / 3 * tokens)


def test_kv_part_reads_the_mean_context_of_every_decoding_step():
    spec = get_spec("tiny")
    seconds = sampling_limit_seconds(
        spec, VOCAB, prompt_tokens=10, rows=4, new_tokens=3, prefill_rows=4, gemm_gflops=math.inf, read_gbs=1.0
    )
    # Steps read 10, 11 and 12 cached tokens of each of 4 rows.
    assert seconds * 1e9 == pytest.approx(kv_bytes_per_token(spec) * 4 * (10 + 11 + 12))


def test_measured_limits_are_finite_rates():
    model = build_model("tiny", VOCAB)
    rates = (gemm_ceiling(model, rows=64, repeats=1), square_gemm_rate(n=128, repeats=2), read_bandwidth(8, repeats=2))
    for rate in rates:
        assert 0 < rate < math.inf
