"""The RL update's [rows, vocab] passes: `model.logprobs.token_logprobs` (chunked, two exps, no log-softmax
written) against what `sequence_logprobs` did before it (log_softmax + gather, and an entropy pass),
forward and backward, on the logits of one micro-batch.

    python benchmarks/bench_logprobs.py                        # 8 x 192 rows, 1k and 4k vocabularies
    python benchmarks/bench_logprobs.py --rows 1536 --vocabs 4096 --repeats 9 --threads 1

Rows = sequences x positions of one micro-batch (the CPU preset's 8 sequences of up to ~192 tokens).
Both sides get the same logits, targets and upstream gradient; their outputs are checked equal before
timing. Each side's best of --repeats (interleaved), the ratio, the CPU and torch's kernels are printed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from machine import cpu_model

from echochamber.model.logprobs import chunk_rows_for, token_logprobs


def before(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sequence_logprobs' [rows, vocab] work until this lever: one log-softmax for both outputs."""
    logp_all = torch.log_softmax(logits.float() * scale, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def ours(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs(logits, targets, scale)


def timed(side, logits, targets, scale, upstream) -> float:
    x = logits.detach().requires_grad_()
    start = time.perf_counter()
    logp, _ = side(x, targets, scale)
    logp.backward(upstream)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8 * 192, help="logits rows (sequences x positions)")
    parser.add_argument("--vocabs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per side, interleaved; the best is kept")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{'rows':>6} {'vocab':>6} {'chunk':>6} {'before ms':>10} {'ours ms':>8} {'ratio':>6}")
    gen = torch.Generator().manual_seed(0)
    for vocab in args.vocabs:
        logits = torch.randn(args.rows, vocab, generator=gen) * 4
        targets = torch.randint(vocab, (args.rows,), generator=gen)
        upstream = torch.randn(args.rows, generator=gen)
        scale = 1 / 0.7
        outputs = []
        for side in (before, ours):  # same values and gradients before anything is timed
            x = logits.clone().requires_grad_()
            logp, entropy = side(x, targets, scale)
            logp.backward(upstream)
            outputs.append((logp.detach(), entropy, x.grad))
        for a, b in zip(*outputs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for _ in range(3):  # warm the allocator and caches for both sides: the first calls are slower
            for side in (before, ours):
                timed(side, logits, targets, scale, upstream)
        best = {before: float("inf"), ours: float("inf")}
        for _ in range(args.repeats):
            for side in best:
                best[side] = min(best[side], timed(side, logits, targets, scale, upstream))
        chunk = min(args.rows, chunk_rows_for(vocab, torch.device("cpu")))
        print(f"{args.rows:>6} {vocab:>6} {chunk:>6} {best[before] * 1e3:>10.2f} {best[ours] * 1e3:>8.2f} "
              f"{best[before] / best[ours]:>5.2f}x")


if __name__ == "__main__":
    main()
