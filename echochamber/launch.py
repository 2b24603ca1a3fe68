"""`echochamber run --procs N`: N data-parallel ranks of one study on this machine, without torchrun.

Why ranks on one CPU: at a tiny model's widths (96) one process's threads wait on each other at
every small matmul, while ranks with a thread each run their own halves of a batch and meet once a
step. On 2 cores the quickstart's pretraining makes 21.7k tokens/s as two one-thread ranks against
18.2k as one two-thread process, and its evaluations and RL split the same way
(docs/performance.md). `make quickstart` runs the quickstart so.

What a rank needs is the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: `dist.init` joins through it) and a parent that stops
every rank when one fails. Each rank is a fresh interpreter (multiprocessing's spawn) that runs the
command's own entry point, so OMP_NUM_THREADS (this process's cores / N, at least 1, unless set)
takes effect and nothing but echochamber runs (architecture rule 3). torchrun stays the launcher
for GPUs and clusters (`sweep --emit torchrun`); here a failing rank ends the command with its own
one-line error and exit code rather than under torchrun's report of its agent. `end_with_parent` is
also what a sweep's cell processes call first (study/sweep.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

POLL_SECONDS = 0.2


def launch(main: Callable[[list[str]], int], argv: list[str], procs: int) -> int:
    """Run `main(argv)` (the command line's entry point) as `procs` ranks on this machine, each in a
    fresh interpreter. Returns 0 when every rank succeeds, else the exit code of the first rank that
    failed (the others are stopped)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // procs))
    shared = {
        "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": threads,
    }  # fmt: skip
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter reads OMP_NUM_THREADS at start
    ranks = [
        spawn.Process(
            target=_rank, args=(main, argv, {**shared, "RANK": str(rank), "LOCAL_RANK": str(rank)}, os.getpid())
        )
        for rank in range(procs)
    ]
    for rank in ranks:
        rank.start()
    try:
        while True:
            codes = [rank.exitcode for rank in ranks]
            failed = next((code for code in codes if code not in (None, 0)), None)
            if failed is not None:
                _stop(ranks)
                return failed if failed > 0 else 128 - failed  # killed by signal N: 128 + N, as a shell says
            if all(code == 0 for code in codes):
                return 0
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:  # the ranks got the terminal's SIGINT too: let them finish saying so
        _stop(ranks)
        raise


def _rank(main: Callable[[list[str]], int], argv: list[str], env: dict[str, str], launcher: int) -> None:
    """A rank's process: ended with the launcher, torchrun's environment, then the command."""
    end_with_parent(launcher)
    os.environ.update(env)
    sys.exit(main(argv))


def end_with_parent(parent: int) -> None:
    """Called first in a child process (a rank, a sweep's cell): on Linux the kernel sends it SIGTERM
    when `parent` dies, so a parent killed outright (SIGKILL, or SIGTERM, which ends Python before it
    can stop its children) leaves no child writing to a run folder behind it; the run resumes with
    --resume. Elsewhere a child outlives a killed parent."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stop(ranks: list[BaseProcess]) -> None:
    for rank in ranks:
        if rank.exitcode is None:
            rank.terminate()
    for rank in ranks:
        rank.join(timeout=30)
        if rank.exitcode is None:
            rank.kill()
            rank.join()


def _free_port() -> int:
    """A port free now for rank 0's rendezvous (the kernel's pick; torchrun --standalone does the same)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
