"""Log-probabilities of given tokens under [rows, vocab] logits, in chunks: the pretraining loss and
every RL log-prob pass (update, reference, Expert Iteration) run through `token_logprobs`.

A language model's last layer writes a [tokens, vocab] tensor that every later pass reads from
memory. log_softmax + gather writes a second one and its backward a third (plus a zero-filled one
for the gather's); here each chunk of rows is read once and worked on while it sits in cache, and
the backward writes the gradient directly (benchmarks/bench_logprobs.py, docs/performance.md).
"""

from __future__ import annotations

import torch

# Bytes of float32 logits per chunk. On a CPU: small enough that a chunk's passes after its first
# read hit the cache (2 MiB: twice Zen 4's L2, a small share of its L3), large enough that the
# per-chunk Python overhead stays small (measured on Zen 4 with benchmarks/bench_logprobs.py: 512 rows
# at a 1k vocabulary beat 64). On a GPU the passes are bandwidth-bound kernels whatever the size, and
# each chunk costs ~10 launches: a chunk is then a memory cap (a 16k-token micro-batch at a 32k
# vocabulary is 2 GiB of logits), not a cache fit.
CPU_CHUNK_BYTES = 2 << 20
ACCELERATOR_CHUNK_BYTES = 256 << 20


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, scale: float, entropy: bool = True, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """([R] log p(target) of each row of [R, vocab] logits at inverse temperature `scale`, [R] entropy
    of each row, or an empty tensor when `entropy` is False). Differentiable in the log-probs only.
    `chunk_rows` defaults to `chunk_rows_for(vocab, device)`."""
    chunk = chunk_rows or chunk_rows_for(logits.shape[-1], logits.device)
    return _TokenLogprobs.apply(logits, targets, scale, entropy, chunk)


def chunk_rows_for(vocab: int, device: torch.device) -> int:
    """Rows of float32 logits in one chunk on `device`."""
    chunk_bytes = CPU_CHUNK_BYTES if device.type == "cpu" else ACCELERATOR_CHUNK_BYTES
    return max(1, chunk_bytes // (4 * vocab))


class _TokenLogprobs(torch.autograd.Function):
    """Per chunk of `chunk` rows: z = scale·logits − max, e = exp(z), s = Σ e; then
    log p(target) = z_target − log s and entropy = log s − Σ e·z / s. Only the log-normaliser
    max + log s is kept for the backward, which recomputes p = exp(scale·logits − log-normaliser)
    chunk by chunk: ∂ log p(target) / ∂ logits = scale·(onehot(target) − p).

    Against log_softmax + gather + an entropy pass this takes two exps instead of three and no
    [rows, vocab] log-softmax is written: every pass after a chunk's first read hits the cache
    instead of memory. The [rows, vocab] passes were about a fifth of an RL update on tiny and a
    sixth of a pretraining step at a 4k vocabulary (docs/performance.md). The logits are saved as
    they are (the graph holds them anyway).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, scale: float, entropy: bool, chunk: int):  # type: ignore[override]
        rows, vocab = logits.shape
        work = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 when given it
        logp = logits.new_empty(rows, dtype=work)
        log_norm = torch.empty_like(logp)
        entropies = torch.empty_like(logp) if entropy else logp.new_empty(0)
        z_chunk = logits.new_empty(min(chunk, rows), vocab, dtype=work)
        e_chunk = torch.empty_like(z_chunk) if entropy else z_chunk
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            z, e = z_chunk[: end - start], e_chunk[: end - start]
            torch.mul(logits[start:end].to(work), scale, out=z)  # scaled in float32, not in bfloat16
            high = z.amax(dim=-1, keepdim=True)
            z.sub_(high)
            picked = z.gather(-1, targets[start:end, None]).squeeze(-1)  # before e may overwrite z
            torch.exp(z, out=e)
            total = e.sum(dim=-1)
            log_total = total.log()
            log_norm[start:end] = high.squeeze(-1) + log_total
            logp[start:end] = picked - log_total
            if entropy:
                entropies[start:end] = log_total - torch.linalg.vecdot(e, z) / total
        ctx.save_for_backward(logits, targets, log_norm)
        ctx.scale, ctx.chunk = scale, chunk
        ctx.mark_non_differentiable(entropies)
        return logp, entropies

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, _grad_entropy: torch.Tensor):  # type: ignore[override]
        logits, targets, log_norm = ctx.saved_tensors
        grad = torch.empty_like(logits, dtype=log_norm.dtype)
        weight = grad_logp * ctx.scale
        for start in range(0, len(logits), ctx.chunk):
            end = min(start + ctx.chunk, len(logits))
            chunk = grad[start:end]  # p, then the gradient, written in place
            torch.mul(logits[start:end].to(chunk.dtype), ctx.scale, out=chunk)
            chunk.sub_(log_norm[start:end, None]).exp_().mul_(-weight[start:end, None])
            chunk.scatter_add_(-1, targets[start:end, None], weight[start:end, None])
        return grad.to(logits.dtype), None, None, None, None
