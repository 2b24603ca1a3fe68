"""The machine-limit bound beside the benchmarks' ratios (benchmarks/limits.py): what it counts must
match what the model and our sampler actually do, or the "largest ratio this CPU allows" is wrong."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from echochamber.model.decoders import OlmoDecoder
from echochamber.model.presets import build_model, flops_per_token
from echochamber.model.specs import get_spec

# Loaded from its file, so the benchmarks folder is not put on sys.path for every later test.
_SPEC = importlib.util.spec_from_file_location("limits", Path(__file__).parents[1] / "benchmarks" / "limits.py")
limits = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(limits)

VOCAB = 300


def test_kv_bytes_per_token_is_what_the_sampler_caches():
    model = build_model("tiny", VOCAB).eval()
    decoder = OlmoDecoder(model)
    rows, length = 3, 5
    with torch.inference_mode():
        decoder.prefill(torch.ones(rows, length, dtype=torch.long), torch.ones(rows, length, dtype=torch.bool), 16)
    cached = sum(t.nbytes for t in decoder.k_cache + decoder.v_cache)
    assert cached == limits.kv_bytes_per_token(get_spec("tiny")) * rows * length


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_matmul_part_counts_two_flops_per_weight_of_every_linear_layer(preset):
    spec = get_spec(preset)
    seconds = limits.sampling_limit_seconds(
        spec, VOCAB, prompt_tokens=10, rows=8, new_tokens=20, prefill_rows=2, gemm_gflops=1.0, read_gbs=math.inf
    )
    tokens = 10 * 2 + 20 * 8  # the prompts once each, every row's new tokens
    model = build_model(preset, VOCAB)  # its output layer is a Linear too (tied to the embedding)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert seconds * 1e9 == pytest.approx(2 * weights * tokens)


def test_an_update_counts_the_output_layer_over_responses_and_a_shared_prompt_once():
    spec = get_spec("tiny")
    work = {"prompt_tokens": 30, "response_tokens": 50, "rows": 8}
    flops = limits.rl_update_flops
    wider = flops(spec, 2 * VOCAB, prompts=1, **work) - flops(spec, VOCAB, prompts=1, **work)
    assert wider == pytest.approx(6 * VOCAB * spec.d_model * 50 * 8)  # no logits for prompt positions
    unshared = flops(spec, VOCAB, prompts=8, **work) - flops(spec, VOCAB, prompts=1, **work)
    layers = flops_per_token(spec, 80, vocab_size=VOCAB) - 6 * VOCAB * spec.d_model
    assert unshared == pytest.approx(7 * 30 * layers)  # seven more prompts through the layers


def test_kv_part_reads_the_mean_context_of_every_decoding_step():
    spec = get_spec("tiny")
    seconds = limits.sampling_limit_seconds(
        spec, VOCAB, prompt_tokens=10, rows=4, new_tokens=3, prefill_rows=4, gemm_gflops=math.inf, read_gbs=1.0
    )
    # Steps read 10, 11 and 12 cached tokens of each of 4 rows.
    assert seconds * 1e9 == pytest.approx(limits.kv_bytes_per_token(spec) * 4 * (10 + 11 + 12))


def test_measured_limits_are_finite_rates():
    model = build_model("tiny", VOCAB)
    rates = (
        limits.gemm_ceiling(model, rows=64, repeats=1),
        limits.square_gemm_rate(n=128, repeats=2),
        limits.read_bandwidth(8, repeats=2),
    )
    for rate in rates:
        assert 0 < rate < math.inf
