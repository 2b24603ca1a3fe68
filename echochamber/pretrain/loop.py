"""The pretraining loop: from scratch on packed shards, AdamW, warm-up + cosine, checkpoints, resume,
DDP/FSDP2 (the config is config.py's, the windows it reads windows.py's).

One function, `run_pretrain`, is the whole stage; under `torchrun --nproc_per_node N` the same call
trains data-parallel (gloo on CPU, NCCL on GPU). What makes a run resumable and independent of the
world size:
- the data is a pure function of (seed, step): global sample g of the run is window
  perm_epoch(g mod n) of the token stream, and step s takes samples [s·B, (s+1)·B) split across
  ranks, so neither a restart nor a different number of processes changes what is seen;
- `batch_size` is global; gradient accumulation = batch_size / (micro_batch_size × world size) (one
  micro-batch where a rank's share is smaller than micro_batch_size), and the loss is a token mean over
  the global batch, so 1 process × 2 accumulation steps and 2 processes × 1 give the same update;
- checkpoints (echochamber/checkpoint.py) hold model, optimizer, scheduler, every rank's RNG state
  and the step, and are written atomically; on resume, metrics a killed run logged past the checkpoint are
  dropped before being logged again.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from echochamber import dist
from echochamber.allocator import keep_large_tensors
from echochamber.checkpoint import (
    ensure_writable,
    full_model_state,
    restore_optimizer,
    restore_rank_rng,
    resume_point,
    save_checkpoint,
    save_hf_folder,
    sole_writer,
)
from echochamber.config import save_config, to_dict
from echochamber.data.shards import Shards, open_shards
from echochamber.errors import UserError
from echochamber.model.precision import autocast, resolve_dtype, set_attention
from echochamber.model.presets import build_model, load_model
from echochamber.pretrain.config import RUN_DEFINING_KEYS, PretrainConfig, lr_multiplier
from echochamber.pretrain.windows import WindowSampler, token_loss, validation_loss
from echochamber.runlog import MetricsWriter

STAGE = "pretrain"


def run_pretrain(config: PretrainConfig, *, resume: bool = False) -> Path:
    """Train (or continue, with `resume`) and return the final HF folder `out/final`."""
    config.validate()
    keep_large_tensors()  # each step's [tokens, vocab] logits reuse their pages (allocator.py)
    env = dist.init()
    try:
        with sole_writer(Path(config.out), env.rank):
            return _train(config, resume, env)
    finally:
        dist.leave(env)


def _train(config: PretrainConfig, resume: bool, env: dist.Process) -> Path:
    """Set up (shards, model, optimizer, logging), run `_Loop` step by step, write out/final."""
    # "auto" becomes the dtype this hardware computes in, so config.yaml records what was used.
    config = replace(config, dtype=resolve_dtype(config.dtype, env.device))
    shards = _open_shards(config.shards)
    config = config.for_shards(int(shards.manifest["train_tokens"]))  # a length in epochs becomes tokens
    out = Path(config.out)
    ensure_writable(out, env.rank)
    per_rank, micro = _rank_batches(config, env)
    checkpoint, state = resume_point(out, resume, STAGE, "a pretraining run")
    if checkpoint is not None:
        _check_resumable(config, state, shards.manifest, checkpoint, env.device)
    hf_model = _initial_model(config, shards.manifest, checkpoint, env)
    model = _wrap(hf_model, config, env)
    optimizer, scheduler, start_step = _optimizer(model, config, env, state)
    writer = None
    if env.rank == 0:
        save_config(config, out / "config.yaml")
        writer = MetricsWriter(
            out, STAGE, tensorboard=config.tensorboard, wandb_project=config.wandb_project, run_name=out.name,
            config=to_dict(config),
            # A resume drops what a killed run logged after its checkpoint (all of it if none).
            resume_step=start_step if resume else None,
        )  # fmt: skip
    bar = tqdm(
        total=config.total_steps(), initial=start_step, desc=STAGE, unit="step",
        disable=not (config.progress and env.rank == 0), dynamic_ncols=True,
    )  # fmt: skip
    try:
        loop = _Loop(config, env, shards, model, hf_model, optimizer, scheduler, (per_rank, micro), out)
        for step in range(start_step, config.total_steps()):
            row = loop.step(step)
            if writer is not None:
                writer.log(step + 1, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            loop.maybe_checkpoint(step + 1)
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


class _Loop:
    """One optimizer step at a time: train, measure validation loss when due, checkpoint when due."""

    def __init__(
        self,
        config: PretrainConfig,
        env: dist.Process,
        shards: Shards,
        model: torch.nn.Module,
        hf_model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batches: tuple[int, int],  # (sequences per step on this rank, per forward): `_rank_batches`
        out: Path,
    ) -> None:
        self.config, self.env, self.shards, self.out = config, env, shards, out
        self.model, self.hf_model, self.optimizer, self.scheduler = model, hf_model, optimizer, scheduler
        self.per_rank, self.micro = batches
        self.total = config.total_steps()
        self.windows = WindowSampler(shards.train, config.seq_len, config.seed)
        self.autocast = autocast(config.dtype, env.device)
        self.tokens_per_step = config.batch_size * config.seq_len

    def step(self, step: int) -> dict[str, Any]:
        """Optimizer step `step` (0-based) and its metrics line (validation losses when due)."""
        config, env = self.config, self.env
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        # This rank's samples of the step: [s·B + rank·per_rank, ...), one micro-batch at a time.
        first = step * config.batch_size + env.rank * self.per_rank
        micro_batches = [
            self.windows.windows(first + index * self.micro, self.micro) for index in range(self.per_rank // self.micro)
        ]
        mean_loss, grad_norm = _train_step(self.model, micro_batches, self.optimizer, config.grad_clip, env, self.autocast)
        self.scheduler.step()
        if not math.isfinite(mean_loss):
            raise UserError(f"training diverged at step {step + 1}: loss is {mean_loss} (try a lower lr)")
        done = step + 1
        elapsed = time.perf_counter() - started
        row: dict[str, Any] = {
            "tokens": done * self.tokens_per_step,
            "loss": mean_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens_per_step / elapsed,
        }
        if done % config.eval_every == 0 or done == self.total:
            val = validation_loss(
                self.model, self.shards.val, seq_len=config.seq_len, micro_batch_size=config.micro_batch_size,
                eval_batches=config.eval_batches, env=env, autocast=self.autocast,
            )  # fmt: skip
            row.update({f"val_loss/{source}": loss for source, loss in val.items()})
            if val:
                row["val_loss"] = sum(val.values()) / len(val)
        return row

    def maybe_checkpoint(self, done: int) -> None:
        config = self.config
        if not (done % config.checkpoint_every == 0 or done == self.total):
            return
        manifest = self.shards.manifest
        save_checkpoint(
            self.out, done, model=self.model, hf_model=self.hf_model, optimizer=self.optimizer,
            tokenizer_dir=Path(self.shards.tokenizer_path), keep=config.keep_checkpoints,
            trainer_state={
                "tokenizer_hash": manifest.get("tokenizer_hash"), "spec_hash": manifest.get("spec_hash"),
                "world_size": self.env.world, "step": done, "tokens": done * self.tokens_per_step,
                "samples": done * config.batch_size, "scheduler": self.scheduler.state_dict(),
                "config": to_dict(config),
            },
        )  # fmt: skip


def _optimizer(
    model: torch.nn.Module, config: PretrainConfig, env: dist.Process, state: dict[str, Any] | None
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, int]:
    """AdamW, its warm-up + cosine schedule and the step to start at: restored from `state` (every
    RNG with them), or fresh at step 0 with this rank's RNGs seeded."""
    optimizer = _build_optimizer(model, config)
    schedule = partial(
        lr_multiplier, warmup_steps=config.warmup_steps, total_steps=config.total_steps(),
        min_lr_ratio=config.min_lr_ratio,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if state is None:
        _seed_everything(config.seed + env.rank)
        return optimizer, scheduler, 0
    restore_optimizer(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rank_rng(state["rng"])
    return optimizer, scheduler, state["step"]


def _rank_batches(config: PretrainConfig, env: dist.Process) -> tuple[int, int]:
    """(sequences per step on this rank, sequences per forward). The global batch must split evenly
    over the ranks, and a rank's part into micro-batches of micro_batch_size, or be no larger than
    one (then it is one micro-batch: 32 sequences over 2 ranks are 16 per forward, whatever the cap)."""
    per_rank, remainder = divmod(config.batch_size, env.world)
    micro = min(config.micro_batch_size, per_rank)
    if remainder or per_rank % micro:
        raise UserError(
            f"batch_size {config.batch_size} does not split into {env.world} process(es) × micro_batch_size {config.micro_batch_size}"
        )
    return per_rank, micro


def _initial_model(config: PretrainConfig, manifest: dict[str, Any], checkpoint: Path | None, env: dist.Process) -> Any:
    """The checkpoint's model, or a fresh one seeded by config.seed; on this rank's device, training."""
    if checkpoint is not None:
        hf_model = load_model(checkpoint)
    else:
        hf_model = build_model(
            config.model, manifest["vocab_size"], max_seq_len=config.context(),
            seed=config.seed, pad_token_id=manifest.get("pad_token_id"), eos_token_id=manifest.get("eos_token_id"),
        )  # fmt: skip
    set_attention(hf_model.to(env.device).train(), config.dtype, env.device)
    if config.compile:
        hf_model.compile()  # in place: parameter names (and so checkpoints) stay unchanged
    return hf_model


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
                loss = token_loss(model, windows.to(env.device, non_blocking=True))
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(dist.global_sum(loss_sum / len(micro_batches)) / env.world), float(grad_norm)


def _open_shards(path: str) -> Shards:
    shards = open_shards(path)
    for source, tokens in shards.val.items():
        if len(tokens) < 2:
            raise UserError(f"validation stream of source {source!r} has {len(tokens)} tokens; need at least 2")
    return shards


def _check_resumable(
    config: PretrainConfig, state: dict[str, Any], manifest: dict[str, Any], checkpoint: Path,
    device: torch.device,
) -> None:  # fmt: skip
    saved = dict(state["config"])
    if saved.get("dtype") == "auto":
        # Checkpoints written before "auto" was resolved at the start: it meant bfloat16 on GPUs
        # that support it and float32 on every CPU.
        saved["dtype"] = resolve_dtype("auto", device) if device.type == "cuda" else "float32"
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
