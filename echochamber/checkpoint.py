"""Training checkpoints: atomic folders holding an HF model, its tokenizer and the trainer state.

A checkpoint is `checkpoints/step_N/`: a `save_pretrained` model folder (loadable with no
echochamber code), the tokenizer files, and `trainer_state.pt` (optimizer, scheduler, every rank's
RNG state, the step/token counters that locate the data, the resolved config). It is written into a
hidden temp folder and renamed into place, so a kill at any moment leaves either the previous
checkpoint set or the new one, never a `step_N` that looks complete and is not. Old checkpoints are
renamed away before being deleted for the same reason.

All functions that touch model or optimizer state are collective under torch.distributed (every
rank calls them); only rank 0 touches the disk. The full-state-dict helpers of
`torch.distributed.checkpoint.state_dict` make the same code serve a plain module, DDP and FSDP2.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from echochamber import dist
from echochamber.errors import UserError
from echochamber.runlog import METRICS_FILE, read_metrics

CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"  # sole_writer's
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (collective)."""
    return dist.gather_objects(capture_rng_state())


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `out_dir/checkpoints`, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1][1] if checkpoints else None


def remove_partial_checkpoints(out_dir: str | Path) -> None:
    """Delete temp folders left by a process killed mid-write (rank 0 only)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if dist.rank() == 0 and root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(_TMP_PREFIX):
                shutil.rmtree(child)


def resume_point(
    out_dir: Path, resume: bool, stage: str, what: str
) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint, its trainer state) to continue from, (None, None) to start afresh. Without
    `resume`, a folder that already holds `what` (checkpoints, or `stage` lines in its metrics) is
    refused rather than overwritten; temp folders of a killed write are removed either way."""
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if not resume and (list_checkpoints(out_dir) or read_metrics(Path(out_dir) / METRICS_FILE, stage)):
        raise UserError(f"{out_dir} already holds {what}; pass --resume to continue it or choose another out")
    remove_partial_checkpoints(out_dir)
    if checkpoint is None:
        return None, None
    return checkpoint, load_trainer_state(checkpoint)


@contextmanager
def sole_writer(out: Path, rank: int) -> Iterator[None]:
    """Hold OUT/.lock (an flock, rank 0's) while a run writes `out`: two runs on one folder (a second
    terminal, a sweep beside a run) would interleave their steps and delete each other's outputs, so
    the second stops here in one line. The kernel releases an flock however its holder ends, so a
    killed run leaves nothing to clean up. Other ranks write under rank 0's hold."""
    if rank != 0:
        yield
        return
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = (out / LOCK_FILE).open("a+")
    except OSError as error:
        raise UserError(f"output folder {out} is not writable: {error.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UserError(f"{out} is being written by {handle.read().strip()}; wait for it or stop it first") from None
        handle.truncate(0)
        handle.write(f"echochamber pid {os.getpid()}")
        handle.flush()
        yield


def ensure_writable(out: Path, rank: int) -> None:
    """Fail early, on every rank, with one line if the run folder cannot be written."""
    probe = out / f".write-probe-{rank}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"output folder {out} is not writable: {error.strerror}") from None


def atomic_dir(final: Path) -> Path:
    """A fresh hidden temp folder beside `final`: write there, then `replace_dir` into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`; an existing `final` is moved aside first and deleted after."""
    old = None
    if final.exists():
        old = final.parent / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded model state dict on the CPU (collective under FSDP)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def write_folder(dest: Path, write: Callable[[Path], None], trainer_state: dict[str, Any] | None = None) -> None:
    """Rank 0: write `dest` atomically. `write` fills a fresh hidden folder, `trainer_state` goes in
    last as trainer_state.pt (a folder is a checkpoint only once it exists: see list_checkpoints),
    then the folder is renamed into place. Every checkpoint and final model is written this way."""
    tmp = atomic_dir(dest)
    tmp.mkdir()
    write(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / STATE_FILE)
    replace_dir(tmp, dest)


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Rank 0: delete all but the newest `keep` checkpoints, each renamed away first so that a kill
    never leaves a half-deleted `step_N` that still looks complete."""
    for _, stale in list_checkpoints(out_dir)[:-keep]:
        doomed = stale.parent / f"{_TMP_PREFIX}del-{stale.name}"
        stale.rename(doomed)
        shutil.rmtree(doomed)


def save_hf_folder(
    hf_model: Any, model_state: dict[str, torch.Tensor], tokenizer_dir: Path, dest: Path
) -> None:
    """Atomically write `dest` as an HF folder (model + tokenizer); rank 0 only."""
    write_folder(dest, partial(_write_hf, hf_model, model_state, tokenizer_dir))


def _write_hf(hf_model: Any, model_state: dict[str, torch.Tensor], tokenizer_dir: Path, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    # save_pretrained draws its own progress bar, which would break the training loop's bar.
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf_model.save_pretrained(folder, state_dict=model_state)
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, folder / item.name)


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    hf_model: Any,
    optimizer: torch.optim.Optimizer,
    tokenizer_dir: Path,
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write `checkpoints/step_<step>` atomically and keep only the newest `keep` (collective).

    `model` is what trains (possibly DDP/FSDP-wrapped); `hf_model` the bare HF module whose
    `save_pretrained` writes the folder. `trainer_state` gets `optimizer` and `rng` added.
    """
    model_state = full_model_state(model)
    optim_state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    rng_states = gather_rng_states()
    final = Path(out_dir) / CHECKPOINTS_DIR / f"step_{step}"
    if dist.rank() == 0:
        state = {**trainer_state, "optimizer": optim_state, "rng": rng_states}
        write_folder(final, partial(_write_hf, hf_model, model_state, tokenizer_dir), state)
        prune_checkpoints(out_dir, keep)
    dist.wait_for_rank0()  # rank 0 alone writes: a 1B model and its optimizer state can take minutes
    return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / STATE_FILE
    try:
        # weights_only=False: the state holds numpy/python RNG tuples; the file is our own output.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as error:
        raise UserError(f"cannot read checkpoint state {path}: {error}") from error


def restore_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state dict saved by `save_checkpoint` (collective under FSDP)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def restore_rank_rng(rng_states: list[dict[str, Any]]) -> None:
    """Restore this rank's RNG state; with a changed world size, ranks beyond the saved ones reuse
    rank 0's (the data order never depends on these, only stochastic layers would)."""
    rank = dist.rank()
    restore_rng_state(rng_states[rank] if rank < len(rng_states) else rng_states[0])
