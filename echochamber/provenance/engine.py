"""The suffix-array engine: the one module that knows which library sorts the suffixes of train.bin.

Everything else sees a suffix array as a plain array of token positions (uint32 below 2^32 tokens,
else uint64), sorted so that the suffixes `tokens[sa[0]:] < tokens[sa[1]:] < ...` compare as
sequences of token ids. Swapping the engine means rewriting `build_suffix_array` only; the choice
and the licences of the candidates are in docs/provenance.md.

The engine is `tokengrams` (EleutherAI, MIT): a Rust parallel sort over a memory-mapped u16/u32
token file that writes the suffix table to disk as little-endian u64 positions, so building never
needs the table in memory. It is converted here to the narrowest dtype that holds every position
(halving the index for corpora under 4 billion tokens) and saved as .npy so it memory-maps with numpy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np

from echochamber.errors import UserError

_CONVERT_CHUNK = 1 << 24  # positions converted u64 -> u32 per step (128 MiB of u64)


def engine_name() -> str:
    """The engine and its version, recorded with every index built by it."""
    return f"tokengrams {version('tokengrams')}"


def build_suffix_array(tokens_file: Path, dtype: np.dtype, out_file: Path) -> None:
    """Sort the suffixes of the token file (`dtype` uint16 or uint32) into `out_file` (.npy).

    Cost: O(N log N) suffix comparisons on all cores, each as long as the common prefix of the two
    suffixes (short for shuffled documents; a document repeated k times costs its length per
    comparison). Disk: 8 bytes a token while sorting, 4 (or 8) bytes a token after.
    """
    from tokengrams import MemmapIndex

    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise UserError(f"the suffix-array engine reads uint16 or uint32 tokens, not {dtype.name}")
    n = tokens_file.stat().st_size // dtype.itemsize
    raw = out_file.with_name(out_file.name + ".u64")
    # tokengrams picks u16 for vocab <= 2^16 and u32 above; the vocabulary plays no other part here.
    vocab = 2**16 if dtype == np.uint16 else 2**32
    with _quiet_stdout():  # it prints "Sorting indices..." whatever `verbose` says
        MemmapIndex.build(str(tokens_file), str(raw), vocab=vocab, verbose=False)
    table = np.memmap(raw, dtype="<u8", mode="r", shape=(n,))
    narrow = np.uint32 if n < 2**32 else np.uint64
    out = np.lib.format.open_memmap(out_file, mode="w+", dtype=narrow, shape=(n,))
    for start in range(0, n, _CONVERT_CHUNK):
        out[start : start + _CONVERT_CHUNK] = table[start : start + _CONVERT_CHUNK]
    out.flush()
    del out, table
    raw.unlink()


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for a block: a library's native prints would otherwise
    land in the middle of `echochamber trace`'s JSON lines when they go to stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
