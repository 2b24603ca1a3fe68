"""A declared pretraining mixture -> tokenized, packed, shuffled shards with exact token counts.

A mixture names its sources (world formats or real-dataset adapters), how much of each to use (a
repeat factor — the paper's k× passes, fractions allowed — or a token budget) and a seed. Building
it writes one shards folder (its layout and reader: shards.py; its document map: docmap.py).

The folder is built under a temporary name, manifest last, then renamed: a crash never leaves a
folder that looks complete. The same spec gives byte-identical files whatever the worker count.
Tokenization (`DocumentEncoder`, which reuses the ids of repeated text) runs in this process for up
to `_IN_PROCESS_MAX_DOCS` documents — a world mixture builds in seconds — and through `datasets`'
multi-process `map` above that; packing and shuffling are vectorised numpy over document offsets,
so millions of documents never pass through a per-document loop. `datasets` is imported only for
dataset sources and the multi-process path (its import alone takes over a second).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from echochamber import __version__
from echochamber.config import config_hash, load_config, preset_names, read_preset, to_dict
from echochamber.data.adapters import SOURCES
from echochamber.data.docmap import DOC_MAP_DIR, write_document_map
from echochamber.data.documents import (
    Rendered,
    SourceDocuments,
    copy_counts,
    document_ids,
    document_texts,
    load_sources,
    progress_bars,
    source_rng,
)
from echochamber.data.shards import open_shards, read_manifest, write_stream
from echochamber.data.tokenizer import (
    PROMPT_SEPARATOR,
    DocumentEncoder,
    TokenizerConfig,
    check_round_trip,
    encode_to_file,
    encode_to_file_in_workers,
    load_tokenizer,
    pad_token_id,
    tokenizer_hash,
    train_bpe,
)
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.formats.render import RENDER_STYLES

if TYPE_CHECKING:
    pass

MIXTURE_PRESETS: tuple[str, ...] = preset_names("mixtures")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # a source name is also a file name (val/<name>.bin)
_ROUND_TRIP_CHECKS = 8  # documents per source decoded back to text before building
_ENCODE_DOCS = 8192  # documents per DocumentEncoder call (bounds the batch's memory)
# Up to this many distinct documents are tokenized in this process: the encoder's cache then serves
# every source, and starting worker processes would cost more than it saves (a default-world mixture
# has ~60k documents and encodes in 1-2 s). Larger mixtures use `workers` processes.
_IN_PROCESS_MAX_DOCS = 200_000


@dataclass
class SourceConfig:
    """One source of documents: a world format or a real-dataset adapter, and how much of it."""

    world: str | None = None  # a world format (tinygsm, omi1, omi2, gsm8k), drawn from the pretrain pool
    dataset: str | None = None  # or an adapter of echochamber.data.adapters (tinygsm, omi1, omi2, gsm8k, ...)
    path: str | None = None  # local file/folder for `dataset`
    hub: str | None = None  # hub id for `dataset` (needs a network)
    split: str | None = None  # dataset split to read (default: the adapter's usual one)
    limit: int | None = None  # read only the first this many dataset rows
    name: str | None = None  # label in the manifest and val/<name>.bin; defaults to `world` or `dataset`
    subset: float = 1.0  # fraction of the source's problems used (seeded), to mirror relative dataset sizes
    repeat: float | None = None  # passes over the source (paper's k×); the fraction takes a seeded part-pass
    tokens: int | None = None  # or a token budget: whole passes, then a seeded part-pass up to the budget

    @property
    def label(self) -> str:
        return self.name or self.world or self.dataset or ""

    def validate(self) -> None:
        if (self.world is None) == (self.dataset is None):
            raise UserError("each mixture source needs exactly one of 'world' or 'dataset'")
        if self.world is not None and self.world not in RENDER_STYLES:
            raise UserError(f"unknown world format '{self.world}' (choose from {', '.join(RENDER_STYLES)})")
        if self.world is not None and (self.path or self.hub or self.limit is not None):
            raise UserError(f"source '{self.label}': path/hub/limit apply to 'dataset' sources only")
        if not _NAME.match(self.label):
            raise UserError(f"source name {self.label!r} must be letters, digits and _.+- (it names a file)")
        if not 0.0 < self.subset <= 1.0:
            raise UserError(f"source '{self.label}': subset must be in (0, 1], got {self.subset}")
        if self.repeat is not None and self.tokens is not None:
            raise UserError(f"source '{self.label}': give 'repeat' or 'tokens', not both")
        if self.repeat is not None and self.repeat <= 0:
            raise UserError(f"source '{self.label}': repeat must be > 0, got {self.repeat}")
        if self.tokens is not None and self.tokens <= 0:
            raise UserError(f"source '{self.label}': tokens must be > 0, got {self.tokens}")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"source '{self.label}': limit must be > 0, got {self.limit}")


@dataclass
class MixtureConfig:
    """A pretraining mixture: sources, the world they draw from, the tokenizer, held-out docs, seed."""

    sources: list[SourceConfig]
    seed: int = 0  # drives the held-out split, subsets, part-passes and the shuffle
    world: WorldConfig = field(default_factory=WorldConfig)  # the controlled world the world sources render
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    val_docs: int = 64  # documents held out per source for validation loss (from the pretrain pool)
    # Local copies by dataset adapter name, read instead of the hub (or of a source's own `path`) by
    # every source of that dataset: `--set mixture.paths.omi1=/data/omi1` (a file, a folder of files
    # or a save_to_disk folder). Datasets the mixture does not use may be listed (one list, many mixtures).
    paths: dict[str, str] = field(default_factory=dict)
    # Tokenizer processes (0: one per CPU core). Changes speed, never bytes: left out of the spec hash.
    workers: int = 0

    def validate(self) -> None:
        if not self.sources:
            raise UserError("a mixture needs at least one source")
        labels = [s.label for s in self.sources]
        duplicate = next((name for name in labels if labels.count(name) > 1), None)
        if duplicate is not None:
            raise UserError(f"two mixture sources are named '{duplicate}'; set 'name' to tell them apart")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}")
        if self.val_docs < 0:
            raise UserError(f"val_docs must be >= 0, got {self.val_docs}")
        if self.workers < 0:
            raise UserError(f"workers must be >= 0 (0: one per CPU core), got {self.workers}")
        unknown = sorted(set(self.paths) - set(SOURCES))
        if unknown:
            raise UserError(f"mixture.paths: unknown dataset {unknown[0]!r} (known: {', '.join(SOURCES)})")

    def location(self, source: SourceConfig) -> tuple[str | None, str | None]:
        """(local path, hub id) a dataset source is read from: `paths` wins over the source's own."""
        assert source.dataset is not None
        if source.dataset in self.paths:
            return self.paths[source.dataset], None
        return source.path, source.hub

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def mixture_preset(name: str) -> dict[str, Any]:
    """The raw YAML mapping of a packaged preset (see MIXTURE_PRESETS)."""
    return read_preset("mixtures", name, "mixture")


def spec_hash(config: MixtureConfig) -> str:
    """Identifies the data a spec produces; the worker count changes speed, not bytes."""
    spec = to_dict(config)
    spec.pop("workers")
    if not spec["paths"]:  # added later: mixtures without local copies keep the hash they had
        spec.pop("paths")
    return config_hash(spec)


def build_from_spec(
    spec: str, out_dir: Path, overrides: list[str] | None = None, *, progress: bool = True
) -> dict:
    """What `echochamber data mixture SPEC_OR_PRESET --out DIR [--set k=v]` runs: a preset name or a
    YAML file, plus overrides, built into `out_dir`. Returns the manifest."""
    if spec in MIXTURE_PRESETS:
        config = load_config(MixtureConfig, None, overrides, base=mixture_preset(spec))
    elif Path(spec).is_file():
        config = load_config(MixtureConfig, spec, overrides)
    else:
        raise UserError(
            f"'{spec}' is neither a mixture file nor a preset (presets: {', '.join(MIXTURE_PRESETS)})"
        )
    return build_shards(config, out_dir, progress=progress)


def build_shards(config: MixtureConfig, out_dir: Path, *, progress: bool = True) -> dict:
    """Build the mixture into `out_dir` and return its manifest.

    An `out_dir` already holding this spec's shards is reused as is; one holding anything else is an
    error (never overwritten).
    """
    out_dir = Path(out_dir)
    expected_hash = spec_hash(config)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        existing = read_manifest(out_dir) if (out_dir / "manifest.json").is_file() else {}
        if existing.get("spec_hash") == expected_hash and existing.get("echochamber_version") == __version__:
            open_shards(out_dir)  # reuse only if every shard is intact
            return existing
        raise UserError(f"output folder {out_dir} already exists and holds other data; choose another --out")
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot write the output folder {out_dir}: {exc.strerror or exc}") from None
    try:
        manifest = _build_into(config, staging, expected_hash, progress)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build_into(config: MixtureConfig, folder: Path, expected_hash: str, progress: bool) -> dict:
    sources = load_sources(config, progress)
    tokenizer_dir = folder / "tokenizer"
    if config.tokenizer.path is not None:
        tokenizer = load_tokenizer(config.tokenizer.path, hub=True)
    else:
        texts = _training_texts(sources, config.tokenizer.train_docs, config.seed)
        tokenizer = train_bpe(texts, config.tokenizer.vocab_size, config.tokenizer.min_frequency)
    tokenizer.save_pretrained(str(tokenizer_dir))
    for source in sources:
        checked = np.arange(source.val_count, len(source.documents))[:_ROUND_TRIP_CHECKS]
        for prompt, solution in zip(*document_texts(source.documents, checked), strict=True):
            check_round_trip(tokenizer, prompt, solution)
    vocab_size = len(tokenizer)
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)

    # Every distinct document, flat, source after source (each: held-out ones, then training ones).
    tokens_file = folder / "_documents.bin"
    lengths = _tokenize(tokenizer, sources, dtype, config.worker_count(), tokens_file, progress)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.memmap(tokens_file, dtype=dtype, mode="r")

    train_docs, stats, first = [], {}, 0
    for source in sources:
        val_ids = np.arange(first, first + source.val_count)
        unique_ids = np.arange(first + source.val_count, first + len(source.documents))
        first += len(source.documents)
        copies = copy_counts(source.config, lengths[unique_ids], source_rng(config.seed, 2, source.config.label))
        if copies.sum() == 0:
            raise UserError(
                f"source '{source.config.label}' contributes no documents; raise its repeat or tokens"
            )
        train_docs.append(np.repeat(unique_ids, copies))
        pass_tokens = int(lengths[unique_ids].sum())
        source_tokens = int((lengths[unique_ids] * copies).sum())
        val_tokens = 0
        if len(val_ids):
            (folder / "val").mkdir(exist_ok=True)
            val_tokens = write_stream(
                tokens, starts, lengths, val_ids, folder / "val" / f"{source.config.label}.bin"
            )
        kind = f"world:{source.config.world}" if source.config.world else f"dataset:{source.config.dataset}"
        stats[source.config.label] = {
            "kind": kind,
            "documents": int(copies.sum()),
            "unique_documents": len(unique_ids),
            "tokens": source_tokens,
            "repeat": round(source_tokens / pass_tokens, 6),
            "token_budget": source.config.tokens,
            "val_documents": len(val_ids),
            "val_tokens": val_tokens,
        }
    order = np.random.default_rng([config.seed, 3]).permutation(np.concatenate(train_docs))
    train_tokens = write_stream(tokens, starts, lengths, order, folder / "train.bin")
    write_document_map(
        folder / DOC_MAP_DIR,
        starts=np.concatenate([[0], np.cumsum(lengths[order])]),
        documents=order,
        source_first=np.concatenate([[0], np.cumsum([len(s.documents) for s in sources])]),
        ids=document_ids(sources),
    )
    for s in stats.values():
        s["token_share"] = round(s["tokens"] / train_tokens, 6)

    del tokens
    tokens_file.unlink()
    manifest = {
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad_token_id(tokenizer),
        "train_tokens": train_tokens,
        "train_documents": len(order),
        "sources": stats,
        "document": f"prompt + {PROMPT_SEPARATOR!r} + solution + EOS",
        "tokenizer_hash": tokenizer_hash(tokenizer_dir),
        "spec_hash": expected_hash,
        "seed": config.seed,
        "echochamber_version": __version__,
    }
    # Written last: its presence is what marks the folder complete.
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _training_texts(sources: list[SourceDocuments], sample: int | None, seed: int) -> Iterator[list[str]]:
    """BPE training text, in batches: a seeded sample of `sample` unique training documents (all of
    them when None), each cut the way it is encoded (prompt with its separator, solution alone)."""
    sizes = np.array([s.train_count for s in sources])
    picked = np.arange(sizes.sum())
    if sample is not None and sample < len(picked):
        picked = np.sort(np.random.default_rng([seed, 4]).choice(len(picked), sample, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for i, source in enumerate(sources):
        mine = picked[(picked >= bounds[i]) & (picked < bounds[i + 1])] - bounds[i]
        prompts, solutions = document_texts(source.documents, source.val_count + mine)
        for start in range(0, len(prompts), 1000):
            batch = slice(start, start + 1000)
            yield [p + PROMPT_SEPARATOR for p in prompts[batch] if p] + solutions[batch]


def _tokenize(
    tokenizer: Any, sources: list[SourceDocuments], dtype: np.dtype, workers: int, tokens_file: Path, progress: bool
) -> np.ndarray:
    """Tokenize every source's documents, in order, into one flat file; return each one's length."""
    encoder = DocumentEncoder(tokenizer)
    if workers == 1 or sum(len(s.documents) for s in sources) <= _IN_PROCESS_MAX_DOCS:
        batches = (
            document_texts(s.documents, np.arange(start, min(start + _ENCODE_DOCS, len(s.documents))))
            for s in sources
            for start in range(0, len(s.documents), _ENCODE_DOCS)
        )
        return encode_to_file(encoder, batches, dtype, tokens_file)
    import datasets

    docs = datasets.concatenate_datasets(
        [
            datasets.Dataset.from_dict({"prompt": s.documents.prompts, "solution": s.documents.solutions})
            if isinstance(s.documents, Rendered)
            else s.documents.select_columns(["prompt", "solution"])
            for s in sources
        ]
    )
    with progress_bars(progress):
        return encode_to_file_in_workers(encoder, docs, dtype, workers, tokens_file, _ENCODE_DOCS)
