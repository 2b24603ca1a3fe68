"""Provenance as a run folder records it: one object per generation, one summary per batch.

The report reads run folders only (it never opens the index), so the stages that generate write
down what it shows. Each generation row (an evaluation's generations.jsonl, RL's
rollouts/step_N.jsonl.gz) gets a `provenance` object:

    n, ngrams, source_share, unique_share, novelty     Provenance.to_dict()
    longest_match {tokens, start, source, doc, doc_offset}
    dominant_source    the source the most of its n-grams are found in alone (None: no n-gram is
                       in one source only: all novel, all shared, or fewer than n tokens)

and, where the row's text is given (evaluation rows: what the report's generation browser shows),
the longest match also holds

    text               the span, decoded
    chars              [a, b]: the span is text[a:b] of the row (None if the tokenizer's decoding of
                       a prefix is not a prefix of the text's, which byte-level BPE never does)
    context            {before, after, cut_before, cut_after}: up to DOCUMENT_CONTEXT tokens of the
                       matched training document on each side of the span, decoded, and whether the
                       document goes on past them (the page stays bounded whatever the documents' size)

A batch (results.json per mode, every RL metrics line) carries `pooled(rows)`: the rows' objects
pooled by `summarise`, so a resumed evaluation's results stay a function of its file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from echochamber.errors import UserError
from echochamber.provenance.tracer import LongestMatch, Provenance, Tracer, summarise

DOCUMENT_CONTEXT = 48  # tokens of the matched document kept on each side of the span


def dominant_source(p: Provenance) -> str | None:
    """The source holding the largest share of the generation's n-grams that no other source holds
    (`unique_share`: world formats render the same questions, so `source_share` alone would credit
    every source with the question's words). Ties go to the source holding more of its n-grams,
    then to the first in manifest order; None when no n-gram is unique to one source."""
    best = max(p.only, key=lambda s: (p.only[s], p.found[s]), default=None)
    return best if best is not None and p.only[best] > 0 else None


def trace_generations(
    tracer: Tracer,
    token_ids: Sequence[Sequence[int]],
    texts: Sequence[str] | None = None,
    *,
    context: int = DOCUMENT_CONTEXT,
) -> list[dict[str, Any]]:
    """One `provenance` object per generation (sampled token ids: EOS ends a segment). With `texts`
    (each generation's decoded text, as its row holds it), the longest match also says where it is
    in the text and carries the training document around it (see the module docstring)."""
    traced = tracer.trace_ids(token_ids)
    records = []
    for index, p in enumerate(traced):
        record = p.to_dict()
        record["dominant_source"] = dominant_source(p)
        if texts is not None and p.longest_match.tokens:
            span = _span(tracer, p.longest_match, list(token_ids[index]), texts[index], context)
            record["longest_match"].update(span)
        records.append(record)
    return records


def pooled(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The batch's `summarise(...).to_dict()` from its rows' `provenance` objects. None when a row has
    none (untraced, or written before provenance): a share of part of a batch would read as the
    whole batch's."""
    objects = [row.get("provenance") for row in rows]
    if not objects or any(item is None for item in objects):
        return None
    return summarise([Provenance.from_dict(item) for item in objects]).to_dict()


def check_tokenizer(tracer: Tracer, tokenizer: Any, model: str) -> None:
    """Token ids can be traced only against shards encoded by the same tokenizer: else a one-line
    error before any generation is spent."""
    if tokenizer.get_vocab() != tracer.tokenizer.get_vocab():
        raise UserError(
            f"{model}'s tokenizer is not the one of the shards it is traced against "
            f"({tracer.tokenizer_path}): give the shards the model was pretrained on"
        )


def _span(tracer: Tracer, match: LongestMatch, ids: list[int], text: str, context: int) -> dict[str, Any]:
    """The span's text and place in `text`, and the matched document's tokens around it, decoded."""
    span = _decode(tracer, ids[match.start : match.start + match.tokens])
    before = len(_decode(tracer, ids[: match.start]))
    if text[before : before + len(span)] != span:
        found = text.find(span)
        before = found if found >= 0 else None
    assert match.position is not None  # a match of at least one token has its train.bin position
    document = int(tracer.doc_map.document_at(np.array([match.position]))[0])
    first = int(tracer.doc_map.starts[document])
    last = int(tracer.doc_map.starts[document + 1]) - 1  # the document's EOS
    end = match.position + match.tokens
    lo, hi = max(first, match.position - context), min(last, end + context)
    tokens = tracer.index.tokens
    return {
        "text": span,
        "chars": [before, before + len(span)] if before is not None else None,
        "context": {
            "before": _decode(tracer, tokens[lo : match.position].tolist()),
            "after": _decode(tracer, tokens[end:hi].tolist()),
            "cut_before": lo > first,
            "cut_after": hi < last,
        },
    }


def _decode(tracer: Tracer, ids: list[int]) -> str:
    # As the sampler decodes (model.sampler.decode_texts), so the span's text is the row's text.
    return tracer.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
