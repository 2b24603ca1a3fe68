"""glibc's malloc kept from returning large tensors to the kernel: a process setting of pretraining
and sampling.

PyTorch allocates a CPU tensor with the C library's malloc. glibc serves a request above its mmap
threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, and trims the heap's free top
once it passes twice that threshold, so tensors of MiBs made again and again — a pretraining step's
[tokens, vocab] logits and their gradient (64 MiB each at 4,096 tokens and a 4k vocabulary), the KV
cache the sampler copies whenever it drops finished rows (a layer's keys or values: 128 rows × 4
heads × ~230 slots × 24 floats ≈ 11 MiB for the tiny model) — come back as new pages that the
kernel zero-fills one fault at a time.
`keep_large_tensors` turns glibc's mmap off (M_MMAP_MAX 0: every block comes from the heap) and its
trimming (M_TRIM_THRESHOLD: the heap's free top stays mapped), so after a few steps every step
reuses the same pages.

Measured (docs/performance.md; a 2-core AMD EPYC Zen 3, one thread): bench_pretrain's shape, minor
page faults 44–47k a tiny pretraining step → 7.5k, tokens/s 1.10–1.11× (tiny) and, with the same
settings through GLIBC_TUNABLES, 1.07–1.09× (small); the process keeps its peak heap (RSS 732–751
→ 806–812 MiB at tiny). Sampling as an evaluation does (the quickstart's pretrained model, its 128
world-test prompts × 8 samples, ≤ 192 new tokens, rows dropped as they finish): 938–941k → 43k minor
faults in a process making two generations, 1.15–1.28× faster, peak RSS +8 MiB. Not moved: the
quickstart's pretraining (1k vocabulary, 4 MiB of logits a rank: glibc already reuses its heap
below the threshold), 0.97–1.01×, and a GRPO step of a random model (its micro-batches' logits are
~33 MiB, and no row finishes early), 0.94–1.05×. `run_pretrain` and the torch sampler set it
(bench_pretrain, bench_sampler and bench_grpo_vs_trl for both of their sides). Process-wide; only
glibc has these knobs, and with any other C library (musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_large_tensors() -> bool:
    """Keep freed memory, large blocks included, in glibc's heap for reuse; True when set (glibc
    on Linux), False where this C library has no such knobs. Idempotent."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
