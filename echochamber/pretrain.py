"""Pretraining from scratch on packed shards: AdamW, warm-up + cosine, checkpoints, resume, DDP/FSDP2.

One function, `run_pretrain`, is the whole stage; under `torchrun --nproc_per_node N` the same call
trains data-parallel (gloo on CPU, NCCL on GPU). What makes a run resumable and independent of the
world size:
- the data is a pure function of (seed, step): global sample g of the run is window
  perm_epoch(g mod n) of the token stream, and step s takes samples [s·B, (s+1)·B) split across
  ranks, so neither a restart nor a different number of processes changes what is seen;
- `batch_size` is global; gradient accumulation = batch_size / (micro_batch_size × world size), and
  the loss is a token mean over the global batch, so 1 process × 2 accumulation steps and
  2 processes × 1 give the same update;
- checkpoints (see checkpoint.py) hold model, optimizer, scheduler, every rank's RNG state and the
  step, and are written atomically; on resume, metrics a killed run logged past the checkpoint are
  dropped before being logged again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from echochamber import dist
from echochamber.checkpoint import (
    ensure_writable,
    full_model_state,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    remove_partial_checkpoints,
    restore_optimizer,
    restore_rank_rng,
    save_checkpoint,
    save_hf_folder,
)
from echochamber.config import load_config, save_config, to_dict
from echochamber.data.mixture import Shards, open_shards
from echochamber.errors import UserError
from echochamber.model.presets import build_model, get_spec, load_model
from echochamber.runlog import METRICS_FILE, MetricsWriter, read_metrics

STAGE = "pretrain"

# Keys that define what a run computes; resuming with any of them changed would splice two runs.
RUN_DEFINING_KEYS = (
    "model", "seq_len", "batch_size", "max_steps", "max_tokens", "lr", "weight_decay", "betas",
    "warmup_steps", "min_lr_ratio", "grad_clip", "seed", "dtype",
)  # fmt: skip


@dataclass
class PretrainConfig:
    """One pretraining run. Exactly one of `max_steps` / `max_tokens` sets its length."""

    shards: str  # folder written by the mixture stage (manifest.json, train.bin, val/, tokenizer/)
    out: str  # run folder: config.yaml, metrics.jsonl, tb/, checkpoints/step_N/, final/
    model: str = "tiny"  # a MODEL_PRESETS name
    seq_len: int = 256  # tokens per training window (the model sees seq_len+1 with the target shift)
    batch_size: int = 32  # GLOBAL sequences per optimizer step, whatever the number of processes
    micro_batch_size: int = 32  # sequences per forward/backward on one process (memory knob)
    max_steps: int | None = None  # optimizer steps to train for
    max_tokens: int | None = None  # or a token budget: steps = ceil(max_tokens / (batch_size·seq_len))
    lr: float = 1e-3
    weight_decay: float = 0.1  # on matrices only; embeddings and 1-D parameters are not decayed (OLMo)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio·lr at the last step
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global gradient norm; null disables clipping (norm still logged)
    eval_every: int = 100  # steps between validation-loss evaluations (and always at the last step)
    eval_batches: int = 4  # validation windows per source = eval_batches × micro_batch_size
    checkpoint_every: int = 200  # steps between checkpoints (and always at the last step)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # autocast; auto = bf16 on GPUs that have it
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
        if (self.max_steps is None) == (self.max_tokens is None):
            raise UserError("set exactly one of max_steps and max_tokens")
        if (self.max_steps if self.max_steps is not None else self.max_tokens) < 1:
            raise UserError("max_steps / max_tokens must be at least 1")
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

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        assert self.max_tokens is not None
        return math.ceil(self.max_tokens / (self.batch_size * self.seq_len))


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based): linear warm-up, cosine to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _autocast(config: PretrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = config.dtype == "bfloat16" or (
        config.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    # CPU "auto" stays float32: without AMX/AVX512-BF16 (most CPUs) bf16 matmuls are slower.
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _grad_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    yield


def _token_loss(model: torch.nn.Module, windows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten(), reduction=reduction)


def _train_step(
    model: torch.nn.Module,
    micro_batches: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    env: dist.Process,
    autocast: contextlib.AbstractContextManager[Any],
) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches; returns (global mean loss, gradient norm)."""
    loss_sum = torch.zeros((), device=env.device)
    for index, windows in enumerate(micro_batches):
        with _grad_sync(model, enabled=index == len(micro_batches) - 1):
            with autocast:
                loss = _token_loss(model, windows.to(env.device, non_blocking=True))
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(dist.global_sum(loss_sum / len(micro_batches)) / env.world), float(grad_norm)


@torch.no_grad()
def evaluate(
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
                loss_sum = _token_loss(model, windows.to(env.device), reduction="sum")
            totals[0] += weight * loss_sum.double()
            totals[1] += weight * chunk.size * (length - 1)
        totals = dist.global_sum(totals)
        losses[source] = float(totals[0] / totals[1])
    model.train()
    return losses


def _open_shards(path: str) -> Shards:
    shards = open_shards(path)
    for source, tokens in shards.val.items():
        if len(tokens) < 2:
            raise UserError(f"validation stream of source {source!r} has {len(tokens)} tokens; need at least 2")
    return shards


def _check_resumable(config: PretrainConfig, state: dict[str, Any], manifest: dict[str, Any], checkpoint: Path) -> None:
    saved = state["config"]
    for key in RUN_DEFINING_KEYS:
        if saved.get(key) != to_dict(config)[key]:
            raise UserError(
                f"cannot resume from {checkpoint}: config key '{key}' was {saved.get(key)!r}, now {to_dict(config)[key]!r}"
            )
    ckpt_vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    if ckpt_vocab != manifest["vocab_size"]:
        raise UserError(
            f"checkpoint {checkpoint} has vocabulary size {ckpt_vocab} but the shards' tokenizer has {manifest['vocab_size']}"
        )
    if state["tokenizer_hash"] != manifest.get("tokenizer_hash"):
        raise UserError(f"checkpoint {checkpoint} was trained with a different tokenizer than the one in {config.shards}")
    if state["spec_hash"] != manifest.get("spec_hash"):
        raise UserError(f"checkpoint {checkpoint} was trained on different shards than {config.shards}")


def _wrap(model: torch.nn.Module, config: PretrainConfig, env: dist.Process) -> torch.nn.Module:
    if env.world == 1:
        return model
    if config.parallel == "fsdp":
        # Shard each decoder block, then the root (embeddings, final norm, head): FSDP2's usual unit.
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def _build_optimizer(model: torch.nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embed_tokens" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel is several times faster than the per-tensor loop torch uses on the CPU by
    # default; FSDP's sharded (DTensor) parameters take the default path.
    fused = None if config.parallel == "fsdp" and dist.initialized() else True
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.betas[0], config.betas[1]), fused=fused)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_pretrain(config: PretrainConfig, *, resume: bool = False) -> Path:
    """Train (or continue, with `resume`) and return the final HF folder `out/final`."""
    config.validate()
    env = dist.init()
    try:
        return _train(config, resume, env)
    finally:
        dist.leave(env)


def _train(config: PretrainConfig, resume: bool, env: dist.Process) -> Path:
    shards = _open_shards(config.shards)
    manifest = shards.manifest
    out = Path(config.out)
    ensure_writable(out, env.rank)
    total_steps = config.total_steps()
    per_rank, remainder = divmod(config.batch_size, env.world)
    if remainder or per_rank % config.micro_batch_size:
        raise UserError(
            f"batch_size {config.batch_size} does not split into {env.world} process(es) × micro_batch_size {config.micro_batch_size}"
        )
    accum = per_rank // config.micro_batch_size

    checkpoint = latest_checkpoint(out) if resume else None
    if not resume and (list_checkpoints(out) or read_metrics(out / METRICS_FILE, STAGE)):
        raise UserError(f"{out} already holds a pretraining run; pass --resume to continue it or choose another out")
    remove_partial_checkpoints(out)

    state: dict[str, Any] | None = None
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        _check_resumable(config, state, manifest, checkpoint)
        hf_model = load_model(checkpoint)
    else:
        hf_model = build_model(
            config.model, manifest["vocab_size"], max_seq_len=max(config.seq_len, get_spec(config.model).max_seq_len),
            seed=config.seed, pad_token_id=manifest.get("pad_token_id"), eos_token_id=manifest.get("eos_token_id"),
        )  # fmt: skip
    hf_model.to(env.device).train()
    if config.compile:
        hf_model.compile()  # in place: parameter names (and so checkpoints) stay unchanged
    model = _wrap(hf_model, config, env)
    optimizer = _build_optimizer(model, config)
    schedule = partial(
        lr_multiplier, warmup_steps=config.warmup_steps, total_steps=total_steps, min_lr_ratio=config.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_step = 0
    if state is not None:
        restore_optimizer(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rank_rng(state["rng"])
        start_step = state["step"]
    else:
        _seed_everything(config.seed + env.rank)

    sampler = WindowSampler(shards.train, config.seq_len, config.seed)
    autocast = _autocast(config, env.device)
    tokens_per_step = config.batch_size * config.seq_len
    writer = None
    if env.rank == 0:
        save_config(config, out / "config.yaml")
        writer = MetricsWriter(
            out,
            STAGE,
            tensorboard=config.tensorboard,
            wandb_project=config.wandb_project,
            run_name=out.name,
            config=to_dict(config),
            # A resume drops what a killed run logged after its checkpoint (all of it if none).
            resume_step=start_step if resume else None,
        )
    bar = tqdm(
        total=total_steps, initial=start_step, desc=STAGE, unit="step",
        disable=not (config.progress and env.rank == 0), dynamic_ncols=True,
    )  # fmt: skip
    trainer_state = {
        "tokenizer_hash": manifest.get("tokenizer_hash"),
        "spec_hash": manifest.get("spec_hash"),
        "world_size": env.world,
    }
    try:
        for step in range(start_step, total_steps):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            micro_batches = [
                sampler.windows(step * config.batch_size + env.rank * per_rank + micro * config.micro_batch_size,
                                config.micro_batch_size)
                for micro in range(accum)
            ]  # fmt: skip
            mean_loss, grad_norm = _train_step(model, micro_batches, optimizer, config.grad_clip, env, autocast)
            scheduler.step()
            if not math.isfinite(mean_loss):
                raise UserError(f"training diverged at step {step + 1}: loss is {mean_loss} (try a lower lr)")
            done = step + 1
            elapsed = time.perf_counter() - started
            row: dict[str, Any] = {
                "tokens": done * tokens_per_step,
                "loss": mean_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_step / elapsed,
            }
            if done % config.eval_every == 0 or done == total_steps:
                val = evaluate(
                    model, shards.val, seq_len=config.seq_len, micro_batch_size=config.micro_batch_size,
                    eval_batches=config.eval_batches, env=env, autocast=autocast,
                )  # fmt: skip
                row.update({f"val_loss/{source}": loss for source, loss in val.items()})
                if val:
                    row["val_loss"] = sum(val.values()) / len(val)
            if writer is not None:
                writer.log(done, row)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            if done % config.checkpoint_every == 0 or done == total_steps:
                save_checkpoint(
                    out, done, model=model, hf_model=hf_model, optimizer=optimizer,
                    tokenizer_dir=Path(shards.tokenizer_path), keep=config.keep_checkpoints,
                    trainer_state={
                        **trainer_state, "step": done, "tokens": done * tokens_per_step,
                        "samples": done * config.batch_size, "scheduler": scheduler.state_dict(),
                        "config": to_dict(config),
                    },
                )  # fmt: skip
        final_state = full_model_state(model)
        final = out / "final"
        if env.rank == 0:
            save_hf_folder(hf_model, final_state, Path(shards.tokenizer_path), final)
        dist.wait_for_rank0()
        return final
    finally:
        bar.close()
        if writer is not None:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m echochamber.pretrain CONFIG [--set k=v] [--resume]` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="echochamber pretrain")
    parser.add_argument("config", help="YAML PretrainConfig")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out/")
    args = parser.parse_args(argv)
    try:
        final = run_pretrain(load_config(PretrainConfig, args.config, args.set), resume=args.resume)
    except UserError as error:
        print(f"echochamber: error: {error}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(f"pretrained model written to {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
