"""The document map: which document, of which source, every token of train.bin belongs to.

train.bin is every training document, shuffled, each ending in EOS; nothing in the bytes says where
one came from. The mixture build knows, and writes it next to the shards as `doc_map/`:

    starts.npy        int64 [D+1]  where each of train.bin's D documents starts (starts[D] = tokens)
    documents.npy     int64 [D]    each one's distinct-document number (a repeated document, k passes,
                                   appears k times with the same number)
    source_first.npy  int64 [S+1]  distinct documents are numbered source after source (manifest
                                   order, each source's held-out documents first): source s owns
                                   numbers source_first[s] .. source_first[s+1]-1
    id_offsets.npy    int64 [U+1]  the stable id of distinct document u is
    id_bytes.npy      uint8        id_bytes[id_offsets[u]:id_offsets[u+1]] (UTF-8)

Ids are the record ids of the sources (`world-pretrain-000123` for a world problem, `gsm8k-17` or a
dataset's own `unique_id` for real data; see echochamber.data.sources), so a user can find the
original. The map is part of the shards folder's format (shards.py), which is why it lives here;
provenance reads it, and rebuilds it for folders built before it existed (provenance/rebuild.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from echochamber.errors import UserError

DOC_MAP_DIR = "doc_map"
_ARRAYS = ("starts", "documents", "source_first", "id_offsets", "id_bytes")


@dataclass(frozen=True)
class DocumentMap:
    """train.bin's documents, their sources and ids (see the module docstring for the arrays)."""

    sources: tuple[str, ...]
    starts: np.ndarray
    documents: np.ndarray
    source_first: np.ndarray
    id_offsets: np.ndarray
    id_bytes: np.ndarray

    @property
    def n_documents(self) -> int:
        return len(self.documents)

    def document_at(self, positions: np.ndarray) -> np.ndarray:
        """The train.bin document (0..D-1) holding each token position."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def source_of(self, documents: np.ndarray) -> np.ndarray:
        """The source index (manifest order) of train.bin documents."""
        return np.searchsorted(self.source_first, self.documents[documents], side="right") - 1

    def doc_id(self, document: int) -> str:
        """The stable id of train.bin document `document`."""
        u = int(self.documents[document])
        return bytes(self.id_bytes[self.id_offsets[u] : self.id_offsets[u + 1]]).decode()

    def token_sources(self) -> np.ndarray:
        """The source index of every train.bin token (uint8; one byte a token)."""
        lengths = np.diff(self.starts)
        return np.repeat(self.source_of(np.arange(self.n_documents)).astype(np.uint8), lengths)


def write_document_map(
    folder: Path,
    starts: np.ndarray,
    documents: np.ndarray,
    source_first: np.ndarray,
    ids: tuple[np.ndarray, np.ndarray],
) -> None:
    """Write the map's arrays into `folder` (created). np.save, not savez: a zip records the time,
    and shards must be byte-identical whenever the spec is."""
    folder.mkdir(parents=True, exist_ok=True)
    id_offsets, id_bytes = ids
    arrays = {
        "starts": starts.astype(np.int64),
        "documents": documents.astype(np.int64),
        "source_first": source_first.astype(np.int64),
        "id_offsets": id_offsets.astype(np.int64),
        "id_bytes": id_bytes.astype(np.uint8),
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)


def encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (offsets [len+1], UTF-8 bytes), the map's compact id column."""
    encoded = [i.encode() for i in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


def load_document_map(shards_dir: Path, manifest: dict[str, Any]) -> DocumentMap:
    """The map of a shards folder, checked against its manifest."""
    folder = Path(shards_dir) / DOC_MAP_DIR
    missing = [name for name in _ARRAYS if not (folder / f"{name}.npy").is_file()]
    if missing:
        raise UserError(f"{folder} is incomplete (no {missing[0]}.npy); delete it to have it rebuilt")
    arrays = {name: np.load(folder / f"{name}.npy") for name in _ARRAYS}
    doc_map = DocumentMap(sources=tuple(manifest["sources"]), **arrays)
    if (
        doc_map.starts[-1] != manifest["train_tokens"]
        or doc_map.n_documents != manifest["train_documents"]
        or len(doc_map.source_first) != len(doc_map.sources) + 1
    ):
        raise UserError(f"{folder} does not describe this train.bin; delete it to have it rebuilt")
    return doc_map
