"""What these cores can do, measured in the same run as a benchmark, and the fastest a phase of ours
could run at it: the yardstick beside every ratio to a peer (docs/performance.md, issue 15).

Three measured limits:
- `gemm_ceiling`: GFLOP/s of a model's own linear layers (forward, grad-input, grad-weight) at a
  number of rows, back to back: the practical ceiling for those layer shapes on this CPU;
- `square_gemm_rate`: GFLOP/s of one large square product, the best torch's GEMM does on this core
  (on a 2-core Zen 3 over two sessions: 62-86, against 44-80 for the tiny and small presets' shapes;
  every limit moves from minute to minute on a shared host, hence measured in the same run);
- `read_bandwidth`: GB/s of reading a tensor far larger than the caches once (a sum: one load per
  float and almost no arithmetic), the rate at which decoding can stream a KV cache.

And one bound, `sampling_limit_seconds`: a generation's time with each of its operations at its own
limit, one after the other (a single thread does one at a time): the layers' matmuls (prefill and
decoding) at a GEMM rate, and the KV cache read by every decoding step at the read bandwidth.
Everything else a sampler does (norms, RoPE, the softmax and top-p over the vocabulary, cache
writes, Python) counts as free, and the weights as read from cache. The benchmarks pass the best
GEMM rate they measured (the layers' shapes or the square product), so an implementation of the
same arithmetic in float32 with torch's GEMM is not faster: a ratio to a peer above
`peer / limit` needs less arithmetic, fewer bytes (a bfloat16 cache), matmul kernels beyond torch's
for these shapes, or other hardware.
"""

from __future__ import annotations

import math
import time

import torch

from echochamber.model.presets import flops_per_token
from echochamber.model.specs import ModelSpec


def gemm_ceiling(model: torch.nn.Module, rows: int, repeats: int, dtype: str = "float32") -> float:
    """GFLOP/s of the model's linear-layer matmuls (forward, grad-input, grad-weight) at `rows` tokens."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    operands = []
    kind = getattr(torch, dtype)
    for n_in, n_out in shapes:
        x, w, g = (torch.randn(rows, n_in, dtype=kind), torch.randn(n_out, n_in, dtype=kind),
                   torch.randn(rows, n_out, dtype=kind))  # fmt: skip
        operands.append((x, w, g))
    flops = sum(6 * rows * n_in * n_out for n_in, n_out in shapes)

    def one_pass() -> None:
        for x, w, g in operands:
            x @ w.t()  # forward
            g @ w  # gradient of the input
            g.t() @ x  # gradient of the weight

    one_pass()
    started = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    return flops * repeats / (time.perf_counter() - started) / 1e9


def square_gemm_rate(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """GFLOP/s of an n x n by n x n product (best of `repeats`): the rate torch's GEMM reaches when the
    shapes are no obstacle."""
    kind = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of reading a `megabytes` float32 tensor once (its sum), best of `repeats`."""
    source = torch.ones(megabytes * 2**20 // 4)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - started)
    return source.numel() * 4 / best / 1e9


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a large tensor copy (one read and one write per byte), best of `repeats`."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best / 1e9


def sampling_limit_seconds(
    spec: ModelSpec, vocab: int, *, prompt_tokens: float, rows: int, new_tokens: float, prefill_rows: int,
    gemm_gflops: float, read_gbs: float,
) -> float:  # fmt: skip
    """Seconds to prefill `prefill_rows` prompts of `prompt_tokens` and decode `new_tokens` for each
    of `rows` rows, each op at its limit: 2 FLOPs per matmul weight and token (a third of
    `flops_per_token` without attention) at `gemm_gflops` (pass the best GEMM rate measured: a prefill
    can be cut into any number of rows), and every decoding step reading its rows' cached keys and
    values (float32, 2·layers·d_model per token) at `read_gbs`. Attention's own FLOPs are left out."""
    tokens = prompt_tokens * prefill_rows + new_tokens * rows
    matmuls = flops_per_token(spec, 0, vocab_size=vocab) / 3 * tokens / (gemm_gflops * 1e9)
    # Step t reads the prompt and the t tokens before it: on average prompt + (new_tokens - 1) / 2.
    cached = prompt_tokens + (new_tokens - 1) / 2
    kv_read = kv_bytes_per_token(spec) * cached * rows * new_tokens / (read_gbs * 1e9)
    return matmuls + kv_read


def kv_bytes_per_token(spec: ModelSpec) -> int:
    """Bytes one cached token of one row takes: a float32 key and value of d_model in every layer."""
    return 2 * spec.n_layers * spec.d_model * 4


def rl_update_flops(
    spec: ModelSpec, vocab: int, *, prompt_tokens: float, prompts: int, response_tokens: float, rows: int
) -> float:
    """Forward + backward FLOPs of an RL update over `rows` responses of `response_tokens` to `prompts`
    prompts of `prompt_tokens`, counting the work that is needed: each prompt through the layers once
    (its group shares it: rollout.micro_batch_rows), every response token through the layers and the
    output layer (nothing reads the prompt's logits: rollout.sequence_logprobs). A no-grad pass (the
    reference's) is a third of it."""
    head = 6.0 * vocab * spec.d_model
    layers = flops_per_token(spec, int(prompt_tokens + response_tokens), vocab_size=vocab) - head
    return layers * (prompt_tokens * prompts + response_tokens * rows) + head * response_tokens * rows
