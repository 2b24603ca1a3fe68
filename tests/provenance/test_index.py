"""The index against a naive scan: every count, source and longest match, on corpora built to repeat."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echochamber.provenance.index import INDEX_DIR
from echochamber.provenance.tracer import Tracer

EOS = 0  # conftest's hand-made shards end every document with it


def naive(
    stream: np.ndarray, doc_sources: np.ndarray, starts: np.ndarray, gen: list[int], n: int, n_sources: int
):
    """(n-grams, found per source, novel, longest match) by scanning every position of the stream."""
    doc_of = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    segments, current = [], []
    for t in gen:
        if t == EOS:
            segments.append(current)
            current = []
        else:
            current.append(t)
    segments.append(current)
    found, novel, grams, longest = [0] * n_sources, 0, 0, 0
    for seg in segments:
        for i in range(len(seg)):
            # The longest prefix of seg[i:] occurring in the stream (no EOS in it, so inside a document).
            length = 0
            while length < len(seg) - i and _occurrences(stream, seg[i : i + length + 1]).size:
                length += 1
            longest = max(longest, length)
            if len(seg) - i >= n:
                grams += 1
                where = _occurrences(stream, seg[i : i + n])
                hit = set(doc_sources[doc_of[where]].tolist())
                novel += not hit
                for s in hit:
                    found[s] += 1
    return grams, found, novel, longest


def _occurrences(stream: np.ndarray, pattern: list[int]) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(pattern))
    return np.flatnonzero((windows == np.array(pattern)).all(axis=1))


def random_corpus(rng: np.random.Generator, vocab: int, offset: int = 1):
    """Three sources of short documents over a tiny alphabet (so n-grams repeat across documents and
    sources), with some documents copied from one source into another."""
    sources = {name: [] for name in ("a", "b", "c")}
    for name in sources:
        for _ in range(40):
            sources[name].append((rng.integers(offset, offset + vocab, rng.integers(1, 30))).tolist())
    sources["b"][:5] = [list(d) for d in sources["a"][:5]]
    order = [(s, i) for s in sources for i in range(40)] + [("a", 3), ("c", 7)]  # two documents twice
    return sources, [order[i] for i in rng.permutation(len(order))]


@pytest.mark.parametrize(
    ("vocab", "offset", "n"), [(4, 1, 3), (6, 1, 2), (5, 1, 7), (4, 40_000, 7), (3, 70_000, 4)]
)
def test_tracing_matches_a_naive_scan(tmp_path, make_shards, vocab, offset, n) -> None:
    # offset 40,000: 16-bit tokens, 4 to a packed key, so n=7 searches past the key; offset 70,000:
    # uint32 tokens, 3 to a key.
    rng = np.random.default_rng(vocab * 100 + n)
    sources, order = random_corpus(rng, vocab, offset)
    folder = make_shards(tmp_path / "shards", sources, vocab=offset + vocab, order=order)
    tracer = Tracer(folder, n=n)
    stream = np.fromfile(folder / "train.bin", dtype=np.uint16 if offset + vocab <= 2**16 else np.uint32)
    doc_sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
    gens = [rng.integers(offset, offset + vocab, rng.integers(0, 40)).tolist() for _ in range(30)]
    gens += [sources["a"][3] + [EOS] + sources["c"][7], sources["b"][0][::-1], [EOS, EOS], []]
    traced = tracer.trace_ids(gens)
    for gen, p in zip(gens, traced, strict=True):
        grams, found, novel, longest = naive(stream, doc_sources, tracer.doc_map.starts, gen, n, 3)
        assert (p.ngrams, [p.found[s] for s in "abc"], p.novel) == (grams, found, novel), gen
        assert p.longest_match.tokens == longest, gen
        if longest:  # the document named holds the span at the offset named
            m = p.longest_match
            doc = int(np.flatnonzero([tracer.doc_map.doc_id(d) == m.doc for d in range(len(order))])[0])
            at = tracer.doc_map.starts[doc] + m.doc_offset
            assert stream[at : at + m.tokens].tolist() == gen[m.start : m.start + m.tokens]
            assert m.source == m.doc.split("-")[0]


def test_index_is_built_once_and_rebuilt_when_stale(tmp_path, make_shards) -> None:
    folder = make_shards(tmp_path / "shards", {"a": [[1, 2, 3]], "b": [[3, 2, 1]]}, vocab=8)
    Tracer(folder)
    record = folder / INDEX_DIR / "index.json"
    built = record.stat().st_mtime_ns
    assert Tracer(folder).trace_ids([[1, 2, 3]])[0].longest_match.tokens == 3
    assert record.stat().st_mtime_ns == built  # cached
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "spec_hash": "another"}))
    Tracer(folder)
    assert json.loads(record.read_text())["spec_hash"] == "another"
    assert not list(folder.glob(".provenance.partial-*"))  # staging folders never left behind
