"""Shards for provenance tests: a small world mixture built once, and hand-made folders whose
documents (plain token lists) are planted so every expected count is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from echochamber.config import from_dict
from echochamber.data.docmap import DOC_MAP_DIR, encode_ids, write_document_map
from echochamber.data.mixture import MixtureConfig, build_shards
from echochamber.model.sampler import Sample
from echochamber.provenance.tracer import Tracer

EOS = 0  # the hand-made folders' end-of-document id
WORLD_SPEC = {
    "seed": 7,
    "world": {"n_pretrain": 300, "n_rl": 5, "n_test": 5, "n_hard": 5, "seed": 3},
    "tokenizer": {"vocab_size": 400},
    "val_docs": 10,
    "workers": 1,
    "sources": [
        {"world": "tinygsm", "repeat": 2},
        {"world": "omi1", "repeat": 0.5, "subset": 0.5},
        {"world": "omi2", "tokens": 9000},
    ],
}


@pytest.fixture(scope="session")
def world_spec() -> dict:
    """The spec `world_shards` is built from."""
    return WORLD_SPEC


@pytest.fixture(scope="session")
def world_shards(tmp_path_factory) -> Path:
    """A three-source world mixture (tinygsm twice over, half of omi1, a token budget of omi2)."""
    out = tmp_path_factory.mktemp("provenance") / "shards"
    build_shards(from_dict(MixtureConfig, WORLD_SPEC), out, progress=False)
    return out


@pytest.fixture(scope="session")
def planted_sampler():
    """`planted_sampler(tracer, solutions)`: a sampler returning those solutions (see PlantedSampler)."""
    return PlantedSampler


class PlantedSampler:
    """Sample i of every prompt is solutions[i % len(solutions)], as the sampler would return it:
    its token ids (a continuation after the prompt, ending in EOS) and its text."""

    def __init__(self, tracer: Tracer, solutions: list[str]) -> None:
        self.ids = [ids + [tracer.eos] for ids in tracer.encode(solutions)]
        self.solutions = solutions

    def generate_tokens(self, prompt_token_ids, prompt_ids, n, params):
        pick = [(i + (0 if params.greedy else 1)) % len(self.solutions) for i in range(n)]
        return [
            [Sample(pid, i, self.ids[j], self.solutions[j], [0.0] * len(self.ids[j]), False) for i, j in enumerate(pick)]
            for pid in prompt_ids
        ]


@pytest.fixture(scope="session")
def make_shards():
    """`make_shards(folder, sources, vocab, order=None)`: see `_make_shards`; documents end in EOS = 0."""
    return _make_shards


def _make_shards(
    folder: Path, sources: dict[str, list[list[int]]], vocab: int, order: list[tuple[str, int]] | None = None
) -> Path:
    """A shards folder holding `sources`' documents (token lists without EOS; id `<source>-<i>`), each
    ending in EOS, in `order` ((source, index) pairs; default: source after source)."""
    names = list(sources)
    first = np.concatenate([[0], np.cumsum([len(sources[s]) for s in names])])
    order = order or [(s, i) for s in names for i in range(len(sources[s]))]
    docs = [sources[s][i] + [EOS] for s, i in order]
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    stream = np.array([t for d in docs for t in d], dtype=dtype)
    folder.mkdir(parents=True)
    stream.tofile(folder / "train.bin")
    (folder / "tokenizer").mkdir()
    write_document_map(
        folder / DOC_MAP_DIR,
        starts=np.concatenate([[0], np.cumsum([len(d) for d in docs])]),
        documents=np.array([first[names.index(s)] + i for s, i in order]),
        source_first=first,
        ids=encode_ids([f"{s}-{i}" for s in names for i in range(len(sources[s]))]),
    )
    manifest = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_token_id": EOS,
        "pad_token_id": EOS,
        "train_tokens": len(stream),
        "train_documents": len(docs),
        "sources": {s: {"val_tokens": 0} for s in names},
        "spec_hash": "hand-made",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
