"""What a sampler is asked for: the draw settings and the precision it computes in.

Plain data, apart from `sampling.py` (the draws) and `sampler.py` (the model's forward), so that the
evaluation and RL configs validate them without importing torch: a config error is reported in a
fraction of a second instead of after the ~8 s torch and transformers take to import (2-core Zen 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from echochamber.errors import UserError

# The precision a sampler computes in: "auto" is the weights' own dtype (sampler.sampler_precision).
SAMPLER_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    max_new_tokens: int = 256
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    # False where nobody reads the sampled tokens' log-probs (evaluations): top-p then needs no
    # normaliser, so the nucleus histogram is skipped for a masked sum per draw (see `sampling.pick`).
    logprobs: bool = True

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
