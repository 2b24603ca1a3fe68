"""What the model reads: training windows as a pure function of (seed, sample), and the fixed
validation windows its loss is measured on (`validation_loss`; "evaluation" is the eval stage's word,
the benchmark suite, and is not used for this)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal

import numpy as np
import torch

from echochamber import dist
from echochamber.errors import UserError
from echochamber.model.logprobs import token_logprobs


class WindowSampler:
    """Global sample g -> a window of seq_len+1 tokens, stateless in (seed, g).

    The stream is cut into non-overlapping windows (each shares its last token with the next
    window's first, so every token is a target once per epoch); each epoch visits them in a fresh
    seeded permutation.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"the training stream has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}")
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._epoch = epoch
        return self._perm

    def windows(self, start: int, count: int) -> torch.Tensor:
        """Samples start..start+count-1 of the run as an int64 tensor [count, seq_len+1]."""
        rows = []
        for g in range(start, start + count):
            window = int(self._permutation(g // self.n_windows)[g % self.n_windows])
            rows.append(self.tokens[window * self.seq_len : window * self.seq_len + self.seq_len + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def token_loss(model: torch.nn.Module, windows: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Cross-entropy of each window's tokens 1.. given the tokens before them (their mean or sum),
    through the chunked log-prob pass (model.logprobs): F.cross_entropy's log-softmax, its backward
    and the gather's zero-filled gradient were a sixth of a tiny model's step at a 4k vocabulary."""
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    logp, _ = token_logprobs(logits.flatten(0, 1), windows[:, 1:].flatten(), 1.0, entropy=False)
    return -(logp.sum() if reduction == "sum" else logp.mean())


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    val: dict[str, np.ndarray],
    *,
    seq_len: int,
    micro_batch_size: int,
    eval_batches: int,
    env: dist.Process,
    autocast: contextlib.AbstractContextManager[Any],
) -> dict[str, float]:
    """Mean token loss per validation source on fixed, evenly spaced windows (the same every call
    and for every world size). Every rank runs the same number of forwards (FSDP needs that); a rank
    with no window left runs a dummy one with zero weight."""
    model.eval()
    losses = {}
    for source, tokens in val.items():
        length = min(seq_len + 1, len(tokens))
        n_windows = (len(tokens) - 1) // (length - 1)
        wanted = min(n_windows, eval_batches * micro_batch_size)
        starts = np.unique(np.linspace(0, n_windows - 1, wanted).round().astype(np.int64)) * (length - 1)
        mine = starts[env.rank :: env.world]
        per_rank = math.ceil(len(starts) / env.world)
        totals = torch.zeros(2, dtype=torch.float64, device=env.device)
        for batch_start in range(0, per_rank, micro_batch_size):
            chunk = mine[batch_start : batch_start + micro_batch_size]
            weight = 1.0 if len(chunk) else 0.0
            chunk = chunk if len(chunk) else starts[:1]
            windows = torch.from_numpy(np.stack([tokens[s : s + length] for s in chunk]).astype(np.int64))
            with autocast:
                loss_sum = token_loss(model, windows.to(env.device), reduction="sum")
            totals[0] += weight * loss_sum.double()
            totals[1] += weight * chunk.size * (length - 1)
        totals = dist.global_sum(totals)
        losses[source] = float(totals[0] / totals[1])
    model.train()
    return losses
