"""A mixture's documents, before any token: each source's distinct documents (rendered world problems,
or a dataset's rows kept Arrow-backed), which of them are held out for validation, and how many times
each training document appears (`copy_counts`: repeat factor or token budget). Every draw here is seeded
per (mixture seed, purpose, source name), so the order sources are listed in changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from echochamber.data.docmap import encode_ids
from echochamber.data.world import generate_world
from echochamber.errors import UserError
from echochamber.formats.render import solution_text

if TYPE_CHECKING:
    import datasets

    from echochamber.data.mixture import MixtureConfig, SourceConfig

READ_BATCH = 16384  # documents read per Arrow batch (bounds the memory of one batch)


@dataclass
class Rendered:
    """A world source's documents (plain lists: an Arrow table built from them would import pandas)."""

    prompts: list[str]
    solutions: list[str]
    ids: list[str]  # the problems' ids, for the document map

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class SourceDocuments:
    """One source's distinct documents: its held-out ones, then its unique training ones."""

    config: SourceConfig
    documents: Rendered | datasets.Dataset  # a dataset's rows stay Arrow-backed (memory-mapped)
    val_count: int

    @property
    def train_count(self) -> int:
        return len(self.documents) - self.val_count


def document_texts(documents: Rendered | datasets.Dataset, positions: np.ndarray) -> tuple[list[str], list[str]]:
    """The prompts and solutions of some of a source's documents."""
    if isinstance(documents, Rendered):
        return [documents.prompts[i] for i in positions], [documents.solutions[i] for i in positions]
    table = documents.select(positions).with_format("arrow")[:]
    return table.column("prompt").to_pylist(), table.column("solution").to_pylist()


def load_sources(config: MixtureConfig, progress: bool) -> list[SourceDocuments]:
    loaded = []
    for source in config.sources:
        if source.world is not None:
            # Only the pool's size is needed to split it; render just the documents that get used.
            pool = generate_world(config.world, ("pretrain",))["pretrain"]
            val, train = _split(config, source, len(pool))
            chosen = [pool[i] for i in np.concatenate([val, train])]
            documents = Rendered(
                [p.question for p in chosen],
                [solution_text(p, source.world) for p in chosen],
                [p.id for p in chosen],
            )
            n, empty = len(pool), documents.solutions.count("")
        else:
            table, empty = _dataset_table(source, config, progress)
            val, train = _split(config, source, len(table))
            documents, n = table.select(np.concatenate([val, train])), len(table)
        if empty:
            raise UserError(f"source '{source.label}': {empty} of {n} records have no solution text")
        loaded.append(SourceDocuments(source, documents, len(val)))
    return loaded


def _dataset_table(
    source: SourceConfig, config: MixtureConfig, progress: bool
) -> tuple[datasets.Dataset, int]:
    """A dataset source's records (columns prompt, solution) and how many have no solution."""
    import pyarrow.compute as pc

    # Real corpora stay Arrow-backed (memory-mapped) end to end; only dataset mixtures need the adapters.
    from echochamber.data.sources import load_dataset_rows, records_dataset

    with progress_bars(progress):
        path, hub = config.location(source)
        rows = load_dataset_rows(source.dataset, path=path, hub=hub, split=source.split, limit=source.limit)
        workers = config.worker_count()
        table = records_dataset(source.dataset, rows, num_proc=workers if workers > 1 else None)
    table = table.select_columns(["id", "prompt", "solution"])  # ids go into the document map
    empty = sum(
        pc.sum(pc.equal(pc.utf8_length(batch.column("solution")), 0)).as_py() or 0
        for batch in table.with_format("arrow").iter(batch_size=READ_BATCH)
    )
    return table, empty


def _split(config: MixtureConfig, source: SourceConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the held-out documents and of the (subset of) training documents, ascending."""
    if n <= config.val_docs:
        raise UserError(
            f"source '{source.label}' has {n} documents; at least val_docs+1 = {config.val_docs + 1} needed"
        )
    # The held-out draw depends only on (seed, pool size): world formats render one shared pool, so
    # the same problems are held out of every format and none leaks into training via another.
    order = np.random.default_rng([config.seed, 0]).permutation(n)
    rest = order[config.val_docs :]
    keep = max(1, round(source.subset * len(rest)))
    rest = source_rng(config.seed, 1, source.label).permutation(rest)[:keep]
    return np.sort(order[: config.val_docs]), np.sort(rest)


def source_rng(seed: int, stream: int, label: str) -> np.random.Generator:
    """A generator per (seed, purpose, source name): independent of the order sources are listed in."""
    return np.random.default_rng([seed, stream, int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)])


def document_ids(sources: list[SourceDocuments]) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct document's id, in `_tokenize`'s order, as the map's (offsets, UTF-8 bytes)."""
    ids: list[str] = []
    for source in sources:
        documents = source.documents
        if isinstance(documents, Rendered):
            ids.extend(documents.ids)
            continue
        for batch in documents.select_columns(["id"]).with_format("arrow").iter(batch_size=READ_BATCH):
            ids.extend(batch.column("id").to_pylist())
    return encode_ids(ids)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """`datasets` progress bars on or off for a block (its switch is global)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def copy_counts(source: SourceConfig, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How many times each unique training document appears in train.bin.

    `repeat` r: floor(r) passes, then a seeded round(frac(r) * n) documents once more. `tokens` B:
    whole passes while they fit, then documents in a seeded order while the running total stays
    <= B (so the source gets at most B tokens, and exactly B when the documents happen to fit).
    """
    n = len(lengths)
    part_order = rng.permutation(n)
    if source.tokens is None:
        repeat = 1.0 if source.repeat is None else source.repeat
        copies = np.full(n, int(repeat), dtype=np.int64)
        copies[part_order[: round((repeat - int(repeat)) * n)]] += 1
        return copies
    pass_tokens = int(lengths.sum())
    copies = np.full(n, source.tokens // pass_tokens, dtype=np.int64)
    remainder = source.tokens - int(copies[0]) * pass_tokens
    fits = int(np.searchsorted(np.cumsum(lengths[part_order]), remainder, side="right"))
    copies[part_order[:fits]] += 1
    return copies
