"""The pretraining stage's config: one run's model, data, optimiser and schedule (`PretrainConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from echochamber.errors import UserError
from echochamber.model.specs import get_spec

# Keys that define what a run computes; resuming with any of them changed would splice two runs.
RUN_DEFINING_KEYS = (
    "model", "seq_len", "batch_size", "max_steps", "max_tokens", "epochs", "lr", "weight_decay", "betas",
    "warmup_steps", "min_lr_ratio", "grad_clip", "seed", "dtype",
)  # fmt: skip


@dataclass
class PretrainConfig:
    """One pretraining run. Its length: `max_steps` or `max_tokens` (not both), else `epochs`."""

    shards: str  # folder written by the mixture stage (manifest.json, train.bin, val/, tokenizer/)
    out: str  # run folder: config.yaml, metrics.jsonl, tb/, checkpoints/step_N/, final/
    model: str = "tiny"  # a MODEL_PRESETS name
    seq_len: int = 256  # tokens per training window (the model sees seq_len+1 with the target shift)
    batch_size: int = 32  # GLOBAL sequences per optimizer step, whatever the number of processes
    micro_batch_size: int = 32  # at most this many sequences per forward/backward on one process (memory knob)
    max_steps: int | None = None  # optimizer steps to train for
    max_tokens: int | None = None  # or a token budget: steps = ceil(max_tokens / (batch_size·seq_len))
    # Or passes over the shards' train.bin (when neither is set): a mixture's repeat factors are already
    # the paper's k x passes, so the paper presets pretrain for 1 epoch of the mixture as built.
    epochs: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1  # on matrices only; embeddings and 1-D parameters are not decayed (OLMo)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio·lr at the last step
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global gradient norm; null disables clipping (norm still logged)
    eval_every: int = 100  # steps between validation-loss measurements (and always at the last step)
    eval_batches: int = 4  # validation windows per source = eval_batches × micro_batch_size
    checkpoint_every: int = 200  # steps between checkpoints (and always at the last step)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    # Compute precision (bfloat16 = autocast, weights stay float32); auto = bfloat16 where the hardware
    # has it natively (model/precision.py), float32 elsewhere. The run's config.yaml records the result.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False  # torch.compile the model (pays off on GPU and for long CPU runs)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP, or FSDP2 sharding (for 1B)
    seed: int = 0  # model init, data order, RNG streams
    tensorboard: bool = True  # also write out/tb/
    wandb_project: str | None = None  # also log to this W&B project (needs `pip install wandb`)
    progress: bool = True  # progress bar with tokens/s on stderr

    def validate(self) -> None:
        get_spec(self.model)  # unknown preset -> UserError listing the known ones
        for name in ("seq_len", "batch_size", "micro_batch_size", "eval_every", "eval_batches",
                     "checkpoint_every", "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_tokens is not None:
            raise UserError("set max_steps or max_tokens, not both")
        if self.max_steps is None and self.max_tokens is None and self.epochs is None:
            raise UserError("set the run's length: max_steps, max_tokens or epochs")
        if any(value is not None and value < 1 for value in (self.max_steps, self.max_tokens)):
            raise UserError("max_steps / max_tokens must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise UserError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size % self.micro_batch_size:
            raise UserError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise UserError("lr must be > 0, weight_decay and warmup_steps >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UserError(f"grad_clip must be > 0 or null, got {self.grad_clip}")

    def context(self) -> int:
        """The context of the model this run builds: the preset's, or seq_len when that is longer."""
        return max(self.seq_len, get_spec(self.model).max_seq_len)

    def for_shards(self, train_tokens: int) -> PretrainConfig:
        """This config with its length in tokens: `epochs` passes over `train_tokens` become
        `max_tokens` (max_steps and max_tokens, when set, win over epochs)."""
        if self.max_steps is not None or self.max_tokens is not None:
            return self
        assert self.epochs is not None
        return replace(self, max_tokens=max(1, math.ceil(self.epochs * train_tokens)))

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.max_tokens is None:
            raise ValueError("a length in epochs needs the shards' size first (for_shards)")
        return math.ceil(self.max_tokens / (self.batch_size * self.seq_len))


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based): linear warm-up, cosine to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
