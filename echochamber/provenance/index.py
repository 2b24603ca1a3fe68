"""The corpus index: train.bin's suffix array, and what turns a match into its sources, searched in batches.

Files, in SHARDS/provenance/ (built on first use, staged under a temporary name and renamed):

    suffix_array.npy   uint32 [N] (uint64 from 2^32 tokens): token positions, suffixes in sorted order
    rank_source.npy    uint8 [N]  the source of the document each sorted suffix starts in
    source_counts.npy  uint32 [N/32+1, S] how many sorted suffixes of each source precede every 32nd rank
    keys.npy           uint64 [N/2]  the first K tokens of every 2nd sorted suffix, packed into one
                       integer (K = 64 // bits per token: 6 at vocabulary 1024, 4 up to 65536)
    index.json         engine, format, and the shards it describes (spec hash, tokens)

About 4 + 1 + 4 + S/8 bytes a token (suffix array, rank_source, keys, counts for S sources).

All occurrences of a pattern are one contiguous range of ranks. A search for many patterns at once
finds the range of their first K tokens with one `np.searchsorted` over the keys (plus the keys of
the ranks between two samples), then runs binary searches in lockstep over numpy arrays, each step
comparing a few tokens per pattern and fetching more only for the patterns still equal
(`_compare`). Patterns never contain EOS (callers cut generations there), and every document of
train.bin ends with EOS, so no match can run from one document into the next: a match always lies
inside one document.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echochamber.data.docmap import DocumentMap
from echochamber.errors import UserError
from echochamber.provenance.engine import build_suffix_array, engine_name

INDEX_DIR = "provenance"
FORMAT = 1
_BLOCK = 32  # ranks per source-count block: a range's ends are scanned rank by rank, at most 2 blocks
# One packed key every this many ranks. 2: 4 bytes a token, one binary-search step left per bound;
# measured on the quickstart corpus, stride 8 (1 byte a token, 3 steps) traced 30 % fewer generations/s.
_KEY_STRIDE = 2
# Tokens `_compare` reads per pattern: a few first (most comparisons differ at once), then more per
# round for the patterns still equal (long verbatim matches). Measured on the quickstart corpus.
_FIRST_ROUND, _NEXT_ROUNDS = np.arange(4), np.arange(16)
_GATHER = 1 << 24  # ranks processed per step while building (bounds the build's memory)


@dataclass(frozen=True)
class CorpusIndex:
    """Searches over train.bin; every method takes and returns arrays, one row per pattern."""

    tokens: np.ndarray  # train.bin
    suffixes: np.ndarray  # suffix array
    rank_source: np.ndarray
    source_counts: np.ndarray
    keys: np.ndarray
    vocab: int

    @property
    def key_tokens(self) -> int:
        return _key_tokens(self.vocab)

    @property
    def n_sources(self) -> int:
        return self.source_counts.shape[1]

    def prefix_range(
        self, query: np.ndarray, starts: np.ndarray, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank ranges [lo, hi) of the suffixes starting with query[starts : starts + width], for
        width <= key_tokens. The pattern is packed like the keys, its unread tokens at their smallest
        (lower end) or largest (upper end); `np.searchsorted` over the sampled keys bounds each end to
        within `_KEY_STRIDE` ranks, and the keys of the ranks in between settle it."""
        k, bits, n = self.key_tokens, _bits(self.vocab), len(self.suffixes)
        tokens = query[starts[:, None] + np.arange(width)]
        fits = ((tokens >= 0) & (tokens < self.vocab)).all(axis=1)
        tokens = np.where(fits[:, None], tokens, 0).astype(np.uint64)
        shifts = np.uint64(bits) * np.arange(k - 1, k - 1 - width, -1, dtype=np.uint64)
        low = (tokens << shifts).sum(axis=1, dtype=np.uint64)
        high = low | np.uint64((1 << (bits * (k - width))) - 1)
        bounds = []
        for key, after in ((low, False), (high, True)):
            sample = np.searchsorted(self.keys, key, side="right" if after else "left").astype(np.int64)
            # The bound is in ((sample-1)*stride, sample*stride]: count the ranks in between still below.
            first = np.maximum((sample - 1) * _KEY_STRIDE + 1, 0)
            between = first[:, None] + np.arange(_KEY_STRIDE - 1)
            inside = between < np.minimum(sample * _KEY_STRIDE, n)[:, None]
            keys = _pack(self.tokens, self.suffixes[np.minimum(between, n - 1)].astype(np.int64), self.vocab)
            below = (keys <= key[:, None]) if after else (keys < key[:, None])
            bounds.append(np.where(fits, first + (below & inside).sum(axis=1), 0))
        return bounds[0], bounds[1]

    def ngram_ranges(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rank ranges [lo, hi) of the suffixes starting with each row of `grams` ([m, n]); hi == lo
        when the n-gram never occurs."""
        m, n = grams.shape
        flat = grams.reshape(-1).astype(np.int64)
        starts = np.arange(m, dtype=np.int64) * n
        known = min(n, self.key_tokens)
        lo, hi = self.prefix_range(flat, starts, known)
        if known == n:
            return lo, hi
        width, skip = np.full(m, n, dtype=np.int64), np.full(m, known, dtype=np.int64)
        first, _, _ = self._lower_bound(lo, hi, flat, starts, width, skip, after=False)
        return first, self._lower_bound(first, hi, flat, starts, width, skip, after=True)[0]

    def longest_prefix(
        self,
        query: np.ndarray,
        starts: np.ndarray,
        width: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        skip: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each pattern query[starts : starts + width] whose first `skip` tokens every suffix in
        ranks [lo, hi) shares: the longest prefix of it found in train.bin (within that range) and a
        train.bin position where it occurs (-1 when the range is empty).

        The suffix sharing most with a pattern is a neighbour of the pattern's place in sorted order,
        and the binary search already knows how much it shares with both neighbours.
        """
        place, below, above = self._lower_bound(lo, hi, query, starts, width, skip, after=False)
        # The neighbour below was compared only if the search moved `lo`; above only if it moved `hi`.
        has_below, has_above = place > lo, place < hi
        use_above = has_above & (~has_below | (above > below))
        rank = np.where(use_above, place, place - 1)
        best = np.where(use_above, above, np.where(has_below, below, 0))
        where = np.full(len(starts), -1, dtype=np.int64)
        ok = has_below | has_above
        where[ok] = self.suffixes[rank[ok]]
        return best, where

    def sources_in(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """[m, S] bool: whether ranks [lo, hi) hold a suffix of each source.

        Whole blocks of `_BLOCK` ranks inside the range are answered by the cumulative counts; the
        ragged ends (fewer than 2 blocks) are read rank by rank.
        """
        m = len(lo)
        present = np.zeros((m, self.n_sources), dtype=bool)
        first_full, last_full = -(-lo // _BLOCK), hi // _BLOCK
        full = first_full < last_full
        present[full] = self.source_counts[last_full[full]] > self.source_counts[first_full[full]]
        ends_lo = np.concatenate([lo, np.where(full, last_full * _BLOCK, hi)])
        ends_hi = np.concatenate([np.where(full, first_full * _BLOCK, hi), hi])
        lengths = np.maximum(ends_hi - ends_lo, 0)
        rows = np.repeat(np.tile(np.arange(m), 2), lengths)
        ranks = _ragged_arange(ends_lo, lengths)
        present[rows, self.rank_source[ranks]] = True
        return present

    def _lower_bound(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        query: np.ndarray,
        starts: np.ndarray,
        width: np.ndarray,
        skip: np.ndarray,
        *,
        after: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First rank in [lo, hi) whose suffix is >= the pattern (> it when `after`), comparing only
        `width` tokens, so a suffix the pattern is a prefix of counts as equal; and how many tokens
        the pattern shares with the suffixes just below and at that rank (when compared; else `skip`).

        Every suffix between two ranks shares with the pattern at least the smaller of what the two
        share with it (they are sorted), so each comparison starts there (Manber & Myers): a search
        reads each pattern token a few times, not once per step.
        """
        lo, hi = lo.astype(np.int64), hi.astype(np.int64)
        below, above = skip.copy(), skip.copy()
        active = np.flatnonzero(lo < hi)
        while active.size:
            mid = (lo[active] + hi[active]) // 2
            shared, sign = self._compare(
                self.suffixes[mid].astype(np.int64),
                query,
                starts[active],
                width[active],
                np.minimum(below[active], above[active]),
            )
            right = sign <= 0 if after else sign < 0
            moved_lo, moved_hi = active[right], active[~right]
            lo[moved_lo], below[moved_lo] = mid[right] + 1, shared[right]
            hi[moved_hi], above[moved_hi] = mid[~right], shared[~right]
            active = active[lo[active] < hi[active]]
        return lo, below, above

    def _compare(
        self, pos: np.ndarray, query: np.ndarray, starts: np.ndarray, width: np.ndarray, skip: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Compare train.bin[pos:] with query[starts : starts + width], from token `skip` on:
        (common prefix length, capped at width; sign of suffix - pattern at the first difference,
        0 when the first `width` tokens agree). Reads a few tokens a round, further rounds only for
        the rows still equal. Reads past train.bin's end are clamped to its last token, an EOS,
        which a pattern never holds, so they always differ."""
        lcp = width.copy()
        sign = np.zeros(len(pos), dtype=np.int8)
        rows = np.flatnonzero(width > skip)
        offset = skip[rows]
        last_text, last_query = len(self.tokens) - 1, len(query) - 1
        step = _FIRST_ROUND
        while rows.size:
            cols = offset[:, None] + step
            text = self.tokens[np.minimum(pos[rows, None] + cols, last_text)]
            pattern = query[np.minimum(starts[rows, None] + cols, last_query)]
            differ = (text != pattern) & (cols < width[rows, None])
            at = differ.argmax(axis=1)
            hit = differ[np.arange(len(rows)), at]
            at = at[hit]
            done = rows[hit]
            lcp[done] = offset[hit] + at
            sign[done] = np.where(text[hit, at] < pattern[hit, at], -1, 1)
            more = ~hit & (offset + len(step) < width[rows])
            rows, offset = rows[more], offset[more] + len(step)
            step = _NEXT_ROUNDS
        return lcp, sign


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate([arange(s, s + l) for s, l in zip(starts, lengths)]), without the loop."""
    total = int(lengths.sum())
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total)


def open_index(
    shards_dir: Path,
    manifest: dict[str, Any],
    doc_map: DocumentMap,
    *,
    say: Callable[[str], None] | None = None,
) -> CorpusIndex:
    """The index of a shards folder, built if missing or stale (once; about a second per million
    tokens on 2 cores)."""
    folder = Path(shards_dir) / INDEX_DIR
    expected = _description(manifest)
    if not _current(folder, expected):
        if say is not None:
            say(
                f"indexing {manifest['train_tokens']:,} training tokens for provenance (once per shards folder)"
            )
        _build(Path(shards_dir), manifest, doc_map, expected)
    # Plain arrays over the mapped files: numpy's memmap subclass costs ~0.2 ms on every fancy index.
    dtype = np.dtype(manifest["dtype"])
    tokens = np.asarray(
        np.memmap(Path(shards_dir) / "train.bin", dtype=dtype, mode="r", shape=(manifest["train_tokens"],))
    )
    arrays = {
        name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r"))
        for name in ("suffix_array", "rank_source", "source_counts", "keys")
    }
    return CorpusIndex(
        tokens=tokens,
        suffixes=arrays["suffix_array"],
        rank_source=arrays["rank_source"],
        source_counts=np.asarray(arrays["source_counts"]),
        keys=arrays["keys"],
        vocab=manifest["vocab_size"],
    )


def index_bytes(shards_dir: Path) -> int:
    """Bytes the index takes on disk (for benchmarks and docs)."""
    return sum(f.stat().st_size for f in (Path(shards_dir) / INDEX_DIR).iterdir() if f.is_file())


def _description(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "spec_hash": manifest.get("spec_hash"),
        "train_tokens": manifest["train_tokens"],
        "sources": list(manifest["sources"]),
        "key_tokens": _key_tokens(manifest["vocab_size"]),
        "key_stride": _KEY_STRIDE,
        "block": _BLOCK,
    }


def _current(folder: Path, expected: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return {key: recorded.get(key) for key in expected} == expected


def _build(
    shards_dir: Path, manifest: dict[str, Any], doc_map: DocumentMap, description: dict[str, Any]
) -> None:
    """Write every index file into a staging folder, then rename it into place."""
    if len(doc_map.sources) > 255:
        raise UserError(f"provenance handles up to 255 sources; this mixture has {len(doc_map.sources)}")
    staging = shards_dir / f".{INDEX_DIR}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise UserError(
            f"cannot write the provenance index into {shards_dir}: {exc.strerror or exc}"
        ) from None
    try:
        n, dtype = manifest["train_tokens"], np.dtype(manifest["dtype"])
        build_suffix_array(shards_dir / "train.bin", dtype, staging / "suffix_array.npy")
        suffixes = np.load(staging / "suffix_array.npy", mmap_mode="r")
        tokens = np.memmap(shards_dir / "train.bin", dtype=dtype, mode="r", shape=(n,))
        _write_sources(staging, suffixes, doc_map)
        np.save(staging / "keys.npy", _sampled_keys(tokens, suffixes, manifest["vocab_size"]))
        (staging / "index.json").write_text(
            json.dumps({**description, "engine": engine_name()}, indent=2) + "\n"
        )
        del suffixes, tokens
        final = shards_dir / INDEX_DIR
        if _current(final, description):  # another process (a DDP rank) finished the same index first
            return
        if final.exists():  # stale (another spec or format): replaced, never mixed
            shutil.rmtree(final)
        os.replace(staging, final)
    except OSError as exc:
        if _current(shards_dir / INDEX_DIR, description):  # another process finished the same index first
            return
        raise UserError(
            f"cannot write the provenance index into {shards_dir}: {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_sources(folder: Path, suffixes: np.ndarray, doc_map: DocumentMap) -> None:
    """rank_source (the source each sorted suffix starts in) and its cumulative counts per block."""
    n, n_sources = len(suffixes), len(doc_map.sources)
    token_sources = doc_map.token_sources()
    rank_source = np.lib.format.open_memmap(folder / "rank_source.npy", mode="w+", dtype=np.uint8, shape=(n,))
    for start in range(0, n, _GATHER):
        rank_source[start : start + _GATHER] = token_sources[suffixes[start : start + _GATHER]]
    del token_sources
    blocks = n // _BLOCK
    counts = np.zeros((blocks + 1, n_sources), dtype=np.uint32)
    per_block = np.asarray(rank_source[: blocks * _BLOCK]).reshape(blocks, _BLOCK)
    for s in range(n_sources):
        np.cumsum((per_block == s).sum(axis=1), out=counts[1:, s])
    np.save(folder / "source_counts.npy", counts)
    rank_source.flush()


def _bits(vocab: int) -> int:
    return max(1, (vocab - 1).bit_length())


def _key_tokens(vocab: int) -> int:
    """How many leading tokens one uint64 key holds."""
    return 64 // _bits(vocab)


def _sampled_keys(tokens: np.ndarray, suffixes: np.ndarray, vocab: int) -> np.ndarray:
    """The packed keys of every `_KEY_STRIDE`-th sorted suffix: sorted, as the suffixes are."""
    sampled = suffixes[::_KEY_STRIDE]
    keys = np.empty(len(sampled), dtype=np.uint64)
    for start in range(0, len(sampled), _GATHER):  # bounds the temporary arrays
        keys[start : start + _GATHER] = _pack(
            tokens, np.asarray(sampled[start : start + _GATHER], dtype=np.int64), vocab
        )
    return keys


def _pack(tokens: np.ndarray, positions: np.ndarray, vocab: int) -> np.ndarray:
    """The first `_key_tokens` tokens from each position, packed big-end first into one uint64, so
    keys compare as the token sequences do. Past train.bin's end a suffix reads 0s: a shorter suffix
    sorts first, and its zero-padded key is no larger than any key that follows it."""
    k, bits = _key_tokens(vocab), _bits(vocab)
    keys = np.zeros(positions.shape, dtype=np.uint64)
    for i in range(k):
        at = positions + i
        token = np.where(at < len(tokens), tokens[np.minimum(at, len(tokens) - 1)], 0).astype(np.uint64)
        keys |= token << np.uint64(bits * (k - 1 - i))
    return keys
