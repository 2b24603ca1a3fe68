"""A shards folder: streams gathered document by document, and a reader that checks every file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from echochamber.data.shards import describe_manifest, open_shards, write_stream
from echochamber.errors import UserError


def _folder(tmp_path: Path) -> tuple[Path, list[list[int]]]:
    """Three documents (ids 0-2) gathered as train.bin in the order 2, 0, 2, and document 1 held out."""
    documents = [[5, 6, 1], [7, 1], [8, 9, 10, 1]]
    tokens = np.array([t for d in documents for t in d], dtype=np.uint16)
    lengths = np.array([len(d) for d in documents])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    folder = tmp_path / "shards"
    (folder / "val").mkdir(parents=True)
    (folder / "tokenizer").mkdir()
    train = write_stream(tokens, starts, lengths, np.array([2, 0, 2]), folder / "train.bin")
    val = write_stream(tokens, starts, lengths, np.array([1]), folder / "val" / "text.bin")
    manifest = {
        "dtype": "uint16", "vocab_size": 11, "train_tokens": train, "sources": {"text": {
            "documents": 3, "unique_documents": 2, "repeat": 1.5, "tokens": train, "token_share": 1.0,
            "val_documents": 1, "val_tokens": val}},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, documents


def test_streams_are_the_documents_in_the_order_given_and_read_back_intact(tmp_path: Path) -> None:
    folder, documents = _folder(tmp_path)
    shards = open_shards(folder)
    assert shards.train.tolist() == documents[2] + documents[0] + documents[2]
    assert shards.val["text"].tolist() == documents[1]
    assert "text: 3 docs (2 unique, 1.5 passes), 11 tokens (100.0%)" in describe_manifest(shards.manifest)


def test_open_shards_checks_every_file(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    with pytest.raises(UserError, match="not found"):
        open_shards(tmp_path / "nothing")
    (folder / "val" / "text.bin").write_bytes((folder / "val" / "text.bin").read_bytes()[:-2])
    with pytest.raises(UserError, match="text.bin has 2 bytes"):
        open_shards(folder)
    (folder / "val" / "text.bin").unlink()
    with pytest.raises(UserError, match="missing shard"):
        open_shards(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest.json"):
        open_shards(folder)
