"""Process groups under torchrun: the one home for rank, world size, collectives and barriers.

Every helper is a no-op (or the identity) in a single process, so training code calls them
unconditionally. Under `torchrun --nproc_per_node N`, `init` joins torchrun's default group (NCCL on
GPUs, gloo on the CPU) unless a caller already did (the study pipeline joins once for all its
stages; a stage then neither joins nor leaves).

Every wait in the project is ranks waiting for rank 0, which alone builds data, indexes the shards
for provenance, writes a checkpoint, or writes an evaluation's files and traces its generations: work
that can take longer than the default group's collective timeout (NCCL's is 10 minutes, and a
timed-out collective aborts the job). So `wait_for_rank0` meets on a separate gloo group with a
timeout of `WAIT_TIMEOUT`, not on the default group: gloo's barrier waits on the CPU, so no GPU
collective is pending (and no NCCL watchdog fires) while rank 0 works. Gathers that follow such work
(an evaluation's rounds: every rank generates its part, rank 0 also writes and traces) take
`patient=True` and meet on the same group. Collectives between ranks doing the same work
(`global_sum`, `sum_gradients`, the RL step's gathers) stay on the default group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

WAIT_TIMEOUT = timedelta(hours=24)

# The long-timeout gloo group of the current default group (new_group is collective: made once).
_waiting: dict[str, Any] = {"world": None, "group": None}


@dataclass(frozen=True)
class Process:
    """This process's place in the job: what `init` returns."""

    rank: int
    world: int
    device: torch.device  # cuda:LOCAL_RANK when there is a GPU, else the CPU
    owns_group: bool  # `init` created the default group, so `leave` destroys it


def init() -> Process:
    """Join torchrun's default process group (WORLD_SIZE > 1) unless one exists, pick this rank's
    device, and make the waiting group (collective: every rank calls `init` at the same point)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not initialized():
        tdist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    if initialized():
        _waiting_group()
    return Process(rank=int(os.environ.get("RANK", "0")), world=world, device=device, owns_group=owns)


def leave(process: Process) -> None:
    """Destroy the default group if `init` created it (a caller that joined first leaves it)."""
    if process.owns_group:
        _waiting.update(world=None, group=None)
        tdist.destroy_process_group()


def initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if initialized() else 1


def wait_for_rank0() -> None:
    """Every rank returns once all have called it, however long rank 0 took (the long-timeout group)."""
    if initialized():
        tdist.barrier(group=_waiting_group())


def _waiting_group() -> Any:
    # Keyed on the default group itself: a group destroyed and created again gets a new waiting group.
    if _waiting["world"] is not tdist.group.WORLD:
        _waiting.update(world=tdist.group.WORLD, group=tdist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    return _waiting["group"]


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """All-reduce sum in place (returns the tensor): loss normalisers use global counts so that an
    update over N processes equals the single-process one."""
    if world_size() > 1:
        tdist.all_reduce(value, op=tdist.ReduceOp.SUM)
    return value


def sum_gradients(module: torch.nn.Module) -> None:
    """Sum gradients over ranks (call after backward, before clipping). Each rank's loss must be
    normalised by global counts (`global_sum`), so the sum is the gradient of the global loss.
    One flat all-reduce; a parameter without a gradient contributes zeros so every rank sends the
    same layout."""
    if world_size() == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def rank_part(items: Sequence[Any]) -> list[Any]:
    """This rank's contiguous part of `items`: parts in rank order, their lengths differing by at most
    one (the first `len % world` ranks take one more), so concatenating them gives `items` back."""
    index, world = rank(), world_size()
    size, extra = divmod(len(items), world)
    start = index * size + min(index, extra)
    return list(items[start : start + size + (index < extra)])


def gather_objects(value: Any, *, patient: bool = False) -> list[Any]:
    """Every rank's picklable `value`, in rank order (`[value]` in one process). `patient`: meet on
    the long-timeout group, for a gather that ranks reach after rank 0 did work of its own."""
    world = world_size()
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, value, group=_waiting_group() if patient else None)
    return gathered


def gather_rows(rows: list[Any]) -> list[Any]:
    """Every rank's rows concatenated in rank order (a metrics line or file covers the whole job)."""
    return [row for part in gather_objects(rows) for row in part]


class Sums:
    """Named running sums (diagnostics), all-reduced once at the end: one collective, any rank count.

    Lives here rather than with RL because it knows nothing about RL: it batches scalar
    reductions, the way `global_sum` reduces one tensor."""

    def __init__(self, **values: torch.Tensor | float | int) -> None:
        self.values = {name: float(value) for name, value in values.items()}

    def add(self, other: Sums) -> None:
        for name, value in other.values.items():
            self.values[name] = self.values.get(name, 0.0) + value

    def global_totals(self, device: torch.device) -> dict[str, float]:
        names = sorted(self.values)
        totals = global_sum(torch.tensor([self.values[n] for n in names], dtype=torch.float64, device=device))
        return dict(zip(names, totals.tolist(), strict=True))
