"""Per-generation provenance on a real world mixture and on hand-made corpora with planted overlap."""

from __future__ import annotations

import numpy as np
import pytest

from echochamber.config import from_dict
from echochamber.data.shards import open_shards
from echochamber.data.tokenizer import encode_documents, encode_prompt
from echochamber.data.world import WorldConfig, world_records
from echochamber.errors import UserError
from echochamber.provenance.tracer import Tracer, summarise

EOS = 0  # conftest's hand-made shards end every document with it


@pytest.fixture(scope="module")
def tracer(world_shards) -> Tracer:
    return Tracer(world_shards)


def _document(tracer: Tracer, index: int) -> np.ndarray:
    starts = tracer.doc_map.starts
    return np.asarray(tracer.index.tokens[starts[index] : starts[index + 1]]).astype(np.int64)


def test_a_document_copied_from_the_stream_is_traced_to_it(tracer, world_spec) -> None:
    world = from_dict(WorldConfig, world_spec["world"])
    for index in (0, 17, tracer.doc_map.n_documents - 1):
        doc = _document(tracer, index)
        source = tracer.sources[int(tracer.doc_map.source_of(np.array([index]))[0])]
        doc_id = tracer.doc_map.doc_id(index)
        record = next(r for r in world_records(world, "pretrain", source) if r.id == doc_id)
        # The solution as the model would write it after its prompt: the document's tokens after the prompt.
        solution = tracer.encode([record.solution])[0]
        prompt_length = len(encode_prompt(tracer.tokenizer, record.prompt))
        assert doc[prompt_length:-1].tolist() == solution
        p = tracer.trace_texts([record.solution])[0]
        m = p.longest_match
        assert (m.tokens, m.start, m.doc_offset) == (len(solution), 0, prompt_length)
        # Several documents can hold the same span (tinygsm repeats twice); each one named holds it.
        held = _document(tracer, _index_of(tracer, m.doc, m.source))
        assert held[m.doc_offset : m.doc_offset + m.tokens].tolist() == solution
        assert m.text == record.solution
        assert p.novelty == 0.0 and p.found[source] == p.ngrams > 0


def _index_of(tracer: Tracer, doc_id: str, source: str) -> int:
    sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
    for index in np.flatnonzero(sources == tracer.sources.index(source)):
        if tracer.doc_map.doc_id(int(index)) == doc_id:
            return int(index)
    raise AssertionError(f"{source} document {doc_id} is not in train.bin")


def test_shuffled_tokens_are_novel(tracer) -> None:
    rng = np.random.default_rng(0)
    docs = [_document(tracer, i)[:-1] for i in range(0, 200, 10)]
    traced = tracer.trace_ids([rng.permutation(d).tolist() for d in docs])
    assert summarise(traced).to_dict()["novelty"] > 0.97
    assert all(p.longest_match.tokens < tracer.n for p in traced)


def test_held_out_documents_are_attributed_to_their_own_source(tracer, world_shards) -> None:
    # val/<source>.bin: never trained on; its format's wording still echoes its own source most.
    shards = open_shards(world_shards)
    for name, stream in shards.val.items():
        stream = np.asarray(stream).astype(np.int64)
        docs = np.split(stream, np.flatnonzero(stream == tracer.eos)[:-1] + 1)
        share = summarise(tracer.trace_ids([d.tolist() for d in docs])).to_dict()["unique_share"]
        assert max(share, key=share.get) == name, share


def test_shares_by_source_with_planted_overlap(tmp_path, make_shards) -> None:
    # Token ranges never adjacent in the corpus: a-only 100.., b-only 200.., both 300.., novel 400..
    only_a, only_b, both, novel = ([base + i for i in range(20)] for base in (100, 200, 300, 400))
    folder = make_shards(
        tmp_path / "two", {"a": [only_a, both, [7, 8, 9]], "b": [only_b, both, [9, 8, 7]]}, vocab=512
    )
    p = Tracer(folder, n=4).trace_ids([only_a + only_b + both + novel])[0]
    # 17 n-grams inside each 20-token segment, 3 across each of the 3 joins (found nowhere).
    assert p.ngrams == 77
    assert p.found == {"a": 34, "b": 34} and p.only == {"a": 17, "b": 17}
    assert p.novel == 17 + 9
    assert p.source_share == {"a": 34 / 77, "b": 34 / 77} and p.novelty == 26 / 77
    m = p.longest_match
    assert (m.tokens, m.start, m.source, m.doc, m.doc_offset) == (20, 0, "a", "a-0", 0)


def test_eos_ends_a_segment(tmp_path, make_shards) -> None:
    # No match or n-gram runs across an EOS, as none could in train.bin (documents end with one).
    first, second = list(range(10, 30)), list(range(40, 55))
    folder = make_shards(tmp_path / "eos", {"a": [first, second]}, vocab=64)
    tracer = Tracer(folder, n=5)
    p = tracer.trace_ids([first + [EOS] + second])[0]
    assert p.ngrams == (20 - 4) + (15 - 4) and p.novel == 0
    assert (p.longest_match.tokens, p.longest_match.start) == (20, 0)
    # The corpus' own join (first's end, EOS, second's start) is not a match either.
    assert tracer.trace_ids([first[-3:] + [EOS] + second[:3]])[0].longest_match.tokens == 3


def test_short_and_repeated_generations(tmp_path, make_shards) -> None:
    folder = make_shards(tmp_path / "short", {"a": [list(range(1, 30))]}, vocab=64)
    tracer = Tracer(folder, n=8)
    short, long = [1, 2, 3], list(range(1, 21))
    traced = tracer.trace_ids([short, long, long, []])
    assert traced[0].ngrams == 0 and traced[0].novelty is None and traced[0].source_share == {"a": None}
    assert traced[0].longest_match.tokens == 3  # still exact below n
    assert traced[1] == traced[2] and traced[1].longest_match.tokens == 20
    assert traced[3].longest_match.tokens == 0 and traced[3].longest_match.source is None
    summary = summarise(traced).to_dict()
    assert summary["ngrams"] == 2 * 13 and summary["source_share"] == {"a": 1.0} and summary["novelty"] == 0.0
    assert summary["longest_match_mean"] == (3 + 20 + 20 + 0) / 4 and summary["longest_match_max"] == 20
    assert summarise([], sources=["a"]).to_dict()["novelty"] is None


def test_bad_n_is_refused(world_shards) -> None:
    with pytest.raises(UserError, match="n must be >= 1"):
        Tracer(world_shards, n=0)


def test_encode_matches_how_documents_are_encoded(tracer) -> None:
    texts = ["result = 5 + 3\nprint(result)", "  leading spaces", ""]
    assert tracer.encode(texts) == [ids[:-1] for ids in encode_documents(tracer.tokenizer, [""] * 3, texts)]
