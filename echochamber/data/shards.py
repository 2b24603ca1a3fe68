"""A built mixture folder: what it holds, reading it back, writing its token streams.

    tokenizer/            HF tokenizer files (AutoTokenizer.from_pretrained loads them)
    train.bin             flat token stream: every training document, shuffled, each ending in EOS
    val/<source>.bin      held-out documents of one source (never in train.bin), for per-source loss
    doc_map/              where each train.bin document starts, its source and its stable id (docmap.py)
    manifest.json         exact documents and tokens per source, tokenizer hash, spec hash, seed

mixture.py builds it (manifest last: its presence marks the folder complete); pretraining and
provenance read it through `open_shards`, which checks every stream against the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echochamber.errors import UserError

_GATHER_DOCS = 16384  # documents copied per vectorised gather (bounds the index arrays' memory)


@dataclass
class Shards:
    """A built mixture, memory-mapped read-only."""

    train: np.memmap
    val: dict[str, np.memmap]
    manifest: dict[str, Any]
    tokenizer_path: Path


def open_shards(path: str | Path) -> Shards:
    """Memory-map a built mixture, checking every file against the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"shards folder not found: {path}")
    manifest = read_manifest(path)
    dtype = np.dtype(manifest["dtype"])
    train = _open_stream(path / "train.bin", manifest["train_tokens"], dtype)
    val = {
        name: _open_stream(path / "val" / f"{name}.bin", source["val_tokens"], dtype)
        for name, source in manifest["sources"].items()
        if source["val_tokens"] > 0
    }
    tokenizer_path = path / "tokenizer"
    if not tokenizer_path.is_dir():
        raise UserError(f"shards folder {path} has no tokenizer/ folder")
    return Shards(train=train, val=val, manifest=manifest, tokenizer_path=tokenizer_path)


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    if not file.is_file():
        raise UserError(f"{path} has no manifest.json (not a built mixture, or the build did not finish)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{file} is not valid JSON") from None


def _open_stream(file: Path, tokens: int, dtype: np.dtype) -> np.memmap:
    if not file.is_file():
        raise UserError(f"missing shard {file}")
    size = file.stat().st_size
    if size != tokens * dtype.itemsize:
        raise UserError(f"shard {file} has {size} bytes; the manifest says {tokens} {dtype.name} tokens")
    return np.memmap(file, dtype=dtype, mode="r", shape=(tokens,))


def describe_manifest(manifest: dict[str, Any]) -> str:
    """A few lines for the terminal: per-source documents, tokens and share of the training stream."""
    lines = [
        f"{manifest['train_tokens']:,} training tokens ({manifest['dtype']}, vocab {manifest['vocab_size']})"
    ]
    for name, s in manifest["sources"].items():
        lines.append(
            f"  {name}: {s['documents']:,} docs ({s['unique_documents']:,} unique, {s['repeat']:g} passes), "
            f"{s['tokens']:,} tokens ({s['token_share']:.1%}), val {s['val_documents']} docs / {s['val_tokens']:,} tokens"
        )
    return "\n".join(lines)


def write_stream(
    tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, doc_ids: np.ndarray, path: Path
) -> int:
    """Concatenate documents `doc_ids` (in that order) into a flat token file; return its length."""
    total = int(lengths[doc_ids].sum())
    out = np.memmap(path, dtype=tokens.dtype, mode="w+", shape=(total,))
    pos = 0
    for i in range(0, len(doc_ids), _GATHER_DOCS):
        ids = doc_ids[i : i + _GATHER_DOCS]
        lens = lengths[ids]
        n = int(lens.sum())
        # Token k of this block comes from its document's start plus its offset inside the document.
        shift = np.repeat(starts[ids] - (np.cumsum(lens) - lens), lens)
        out[pos : pos + n] = tokens[shift + np.arange(n)]
        pos += n
    out.flush()
    del out
    return total
