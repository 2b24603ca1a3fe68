"""Which precision a run computes in: `dtype: auto` resolved against the hardware it runs on.

"auto" means bfloat16 compute (autocast; weights and optimiser state stay float32) where the
hardware multiplies bfloat16 natively, float32 everywhere else:
- CUDA: bfloat16 when the GPU supports it;
- CPU: bfloat16 when the cores have AMX or AVX512-BF16 *and* torch and oneDNN are allowed to use
  them. Elsewhere (AVX2-only CPUs, or AVX-512 ones forced down with `ATEN_CPU_CAPABILITY=avx2` /
  `ONEDNN_MAX_CPU_ISA=AVX2`) bfloat16 matmuls are emulated and slower than float32.

So "auto" gives different numbers on different machines by design: a run records the dtype it
resolved to (its config.yaml), and presets whose numbers are compared across machines (the
quickstart, the sweeps) pin float32.

`autocast` is the one place a dtype becomes compute: wrap each forward in it (never an optimizer
step: autocast caches the bfloat16 copies of the weights until the outermost context exits, so a
forward after a step inside one context would run on the old weights). `set_attention` gives a
model that trains or scores under a dtype the attention kernel that suits it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from transformers import PreTrainedModel

from echochamber.errors import UserError

DTYPES = ("auto", "float32", "bfloat16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bfloat16 dot products.
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10", "AMX", "ALL", "DEFAULT")


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 present and not masked off by the capability environment variables."""
    if not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):  # ATEN_CPU_CAPABILITY=avx2/default
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return not cap or any(cap.startswith(isa) for isa in _BF16_ISAS)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """What `dtype` ("auto", "float32" or "bfloat16") means on `device`: "float32" or "bfloat16"."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "float32"


def autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The compute `dtype` means on `device` (`resolve_dtype`): bfloat16 autocast (matmuls in
    bfloat16; reductions, norms and softmaxes in float32; weights and optimiser state stay float32)
    or nothing."""
    if resolve_dtype(dtype, device) == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_attention(model: PreTrainedModel, dtype: str, device: torch.device) -> PreTrainedModel:
    """`model` (in place) with the attention kernel for training under `dtype` on `device`: "eager"
    (matmul, float32 softmax, matmul) for bfloat16 on a CPU, "sdpa" everywhere else.

    PyTorch's CPU flash attention (what "sdpa" runs there) is slow in bfloat16: its backward took 2.4x
    as long as in float32 (small preset, 8 x 190 tokens, Zen 4), while eager attention's matmuls run
    at bfloat16's GEMM rate. A training forward + backward under bfloat16 autocast, eager against
    sdpa: 1.31x (small) and 1.81x (tiny) faster; in float32 sdpa is the faster (eager 0.89x / 0.96x),
    and on a GPU sdpa's fused kernels are. Not saved with a checkpoint (the config keeps no kernel).
    The RL policy is also what the sampler reads: our presets decode through their own attention
    (model/decoders.py), but a model without that fast path samples through HF's forward, i.e. with
    eager attention (in float32) during a bfloat16 CPU run: slower, the same numbers to float error.
    """
    eager = device.type == "cpu" and resolve_dtype(dtype, device) == "bfloat16"
    model.set_attn_implementation("eager" if eager else "sdpa")
    return model
