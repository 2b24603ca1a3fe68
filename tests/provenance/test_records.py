"""What a run folder records of provenance: the span's place in a row's text, the matched document
around it, the dominant source, and batches pooled again from rows."""

from __future__ import annotations

import numpy as np
import pytest

from echochamber.data.tokenizer import train_bpe
from echochamber.errors import UserError
from echochamber.provenance.records import check_tokenizer, dominant_source, pooled, trace_generations
from echochamber.provenance.tracer import Tracer, summarise

EOS = 0  # conftest's hand-made shards end every document with it


@pytest.fixture(scope="module")
def tracer(world_shards) -> Tracer:
    return Tracer(world_shards)


def _document(tracer: Tracer, index: int) -> list[int]:
    starts = tracer.doc_map.starts
    return np.asarray(tracer.index.tokens[starts[index] : starts[index + 1]]).astype(np.int64).tolist()


def _decode(tracer: Tracer, ids: list[int]) -> str:
    return tracer.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_an_eval_row_locates_its_span_and_the_document_around_it(tracer) -> None:
    """Generations as the sampler returns them (token ids ending in EOS, text decoded without it):
    a training document's second half after some text of its own, and a whole document."""
    doc = _document(tracer, 5)[:-1]  # without its EOS
    half = doc[len(doc) // 2 :]
    own = tracer.encode(["zq zq zq zq"])[0]
    generations = [own + half + [tracer.eos], doc + [tracer.eos]]
    texts = [_decode(tracer, g[:-1]) for g in generations]
    records = trace_generations(tracer, generations, texts, context=12)

    for generation, text, record in zip(generations, texts, records, strict=True):
        match = record["longest_match"]
        a, b = match["chars"]
        assert text[a:b] == match["text"] == _decode(tracer, generation[match["start"] : match["start"] + match["tokens"]])
        # The context is the matched document's own text on both sides of the span, 12 tokens at most.
        held = next(i for i in range(tracer.doc_map.n_documents) if tracer.doc_map.doc_id(i) == match["doc"])
        body = _document(tracer, held)[:-1]
        start, end = match["doc_offset"], match["doc_offset"] + match["tokens"]
        assert body[start:end] == generation[match["start"] : match["start"] + match["tokens"]]
        context = match["context"]
        assert context["before"] == _decode(tracer, body[max(0, start - 12) : start])
        assert context["after"] == _decode(tracer, body[end : end + 12])
        assert (context["cut_before"], context["cut_after"]) == (start > 12, len(body) - end > 12)
    # The copied half is found whole, after the generation's own tokens; the whole document is the span.
    assert records[0]["longest_match"]["start"] == len(own) and records[0]["longest_match"]["tokens"] >= len(half)
    assert records[1]["longest_match"]["tokens"] == len(doc) and records[1]["longest_match"]["context"] == {
        "before": "", "after": "", "cut_before": False, "cut_after": False,
    }  # fmt: skip


def test_rows_without_text_carry_the_object_alone(tracer) -> None:
    doc = _document(tracer, 3)
    (record,) = trace_generations(tracer, [doc])
    assert set(record["longest_match"]) == {"tokens", "start", "source", "doc", "doc_offset"}
    assert record["novelty"] == 0.0 and record["dominant_source"] is not None


def test_dominant_source_is_the_one_most_n_grams_are_unique_to(tmp_path, make_shards) -> None:
    only_a, only_b, both = ([base + i for i in range(20)] for base in (100, 200, 300))
    folder = make_shards(tmp_path / "two", {"a": [only_a, both], "b": [only_b, both]}, vocab=512)
    tracer = Tracer(folder, n=4)
    shuffled = [401, 402, 403, 404, 405, 406]
    traced = tracer.trace_ids([only_a[:10] + only_b, both, shuffled, [100, 101]])
    assert [dominant_source(p) for p in traced] == ["b", None, None, None]
    assert traced[1].found == {"a": 17, "b": 17}  # all shared: no source is the dominant one


def test_a_batch_pools_the_same_from_its_rows_as_from_the_tracer(tracer) -> None:
    rng = np.random.default_rng(0)
    generations = [_document(tracer, i) for i in (1, 2, 40)] + [rng.integers(1, 300, 50).tolist(), [7]]
    rows = [{"provenance": record} for record in trace_generations(tracer, generations)]
    assert pooled(rows) == summarise(tracer.trace_ids(generations)).to_dict()
    assert pooled(rows[:2] + [{"text": "untraced"}]) is None and pooled([]) is None


def test_a_model_with_another_tokenizer_is_refused(tracer) -> None:
    check_tokenizer(tracer, tracer.tokenizer, "the model")
    other = train_bpe(["an unrelated corpus of words"] * 20, vocab_size=300)
    with pytest.raises(UserError, match="the model's tokenizer is not the one of the shards"):
        check_tokenizer(tracer, other, "the model")
