"""`echochamber run --procs N`: N data-parallel ranks of one study on this machine, without torchrun.

Why ranks on one CPU: at a tiny model's widths (96) one process's threads wait on each other at
every small matmul, while ranks with a thread each run their own halves of a batch and meet once a
step. On 2 cores the quickstart's pretraining makes 21.7k tokens/s as two one-thread ranks against
18.2k as one two-thread process, and its evaluations and RL split the same way
(docs/performance.md). `make quickstart` runs the quickstart so.

What a rank needs is the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: `dist.init` joins through it) and a parent that stops
every rank when one fails. torchrun stays the launcher for GPUs and clusters (`sweep --emit
torchrun`); here a failing rank ends the command with its own one-line error and exit code rather
than under torchrun's report of its agent. Each rank gets OMP_NUM_THREADS = this process's cores / N
(at least 1) unless the variable is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

POLL_SECONDS = 0.2


def launch(argv: list[str], procs: int) -> int:
    """Run `echochamber ARGV` as `procs` ranks on this machine. Returns 0 when every rank succeeds,
    else the exit code of the first rank that failed (the others are stopped)."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // procs))
    shared = {
        "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": threads,
    }  # fmt: skip
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "echochamber", *argv],
            env={**os.environ, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in range(procs)
    ]
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = next((code for code in codes if code not in (None, 0)), None)
            if failed is not None:
                _stop(ranks)
                return failed
            if all(code == 0 for code in codes):
                return 0
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:  # the ranks got the terminal's SIGINT too: let them finish saying so
        _stop(ranks)
        raise


def _stop(ranks: list[subprocess.Popen]) -> None:
    for rank in ranks:
        if rank.poll() is None:
            rank.terminate()
    for rank in ranks:
        try:
            rank.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def _free_port() -> int:
    """A port free now for rank 0's rendezvous (the kernel's pick; torchrun --standalone does the same)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
