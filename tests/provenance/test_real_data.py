"""Provenance on a mixture of real sources (GSM8K train, the OMI2 sample) and a world format: no format
rules anywhere, only the document map. Skips with a reason when shared/data is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from echochamber.config import from_dict
from echochamber.data.benchmarks import benchmark_records
from echochamber.data.mixture import MixtureConfig, build_shards
from echochamber.data.shards import open_shards
from echochamber.data.sources import load_source
from echochamber.provenance.tracer import Tracer, summarise


@pytest.fixture(scope="module")
def real_shards(shared_data: Path, tmp_path_factory) -> Path:
    spec = {
        "seed": 0,
        "world": {"n_pretrain": 600, "n_rl": 5, "n_test": 5, "n_hard": 5},
        "tokenizer": {"vocab_size": 1024},
        "val_docs": 16,
        "workers": 1,
        "sources": [
            {"dataset": "gsm8k", "path": str(shared_data / "gsm8k" / "train.jsonl"), "limit": 2000},
            {"dataset": "omi2", "path": str(shared_data / "samples" / "omi2.jsonl")},
            {"world": "tinygsm"},
        ],
    }
    out = tmp_path_factory.mktemp("real") / "shards"
    build_shards(from_dict(MixtureConfig, spec), out, progress=False)
    return out


def test_training_documents_trace_to_their_dataset_rows(real_shards, shared_data) -> None:
    tracer = Tracer(real_shards)
    sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
    files = {"gsm8k": shared_data / "gsm8k" / "train.jsonl", "omi2": shared_data / "samples" / "omi2.jsonl"}
    for name, file in files.items():
        records = {r.id: r for r in load_source(name, path=file)}
        for index in np.flatnonzero(sources == tracer.sources.index(name))[:5]:
            doc_id = tracer.doc_map.doc_id(int(index))
            record = records[doc_id]  # the map's id is the adapter's stable record id
            p = tracer.trace_texts([record.solution])[0]
            m = p.longest_match
            assert m.tokens == len(tracer.encode([record.solution])[0]) and m.start == 0
            assert (m.source, m.text) == (name, record.solution)
            assert p.source_share[name] == 1.0 and p.novelty == 0.0


def test_held_out_text_is_attributed_to_its_source(real_shards, shared_data) -> None:
    """GSM8K test solutions were never trained on; their n-grams still echo GSM8K's own wording
    (calculator annotations, `#### N`) more than the OMI2 sample's or TinyGSM's code."""
    tracer = Tracer(real_shards)
    test = [r.solution for r in benchmark_records("gsm8k", shared_data)[:300]]
    share = summarise(tracer.trace_texts(test)).to_dict()["unique_share"]
    # Measured: 13.6 % of their 8-grams are found in GSM8K train alone, 0.1 % in the OMI2 sample alone.
    assert share["gsm8k"] > 0.05 and share["gsm8k"] > 10 * max(share["omi2"], share["tinygsm"]), share
    for name, stream in open_shards(real_shards).val.items():  # each source's held-out documents
        stream = np.asarray(stream).astype(np.int64)
        docs = np.split(stream, np.flatnonzero(stream == tracer.eos)[:-1] + 1)
        share = summarise(tracer.trace_ids([d.tolist() for d in docs])).to_dict()["unique_share"]
        assert max(share, key=share.get) == name, (name, share)


def test_an_evaluation_on_real_sources_gets_provenance_per_source(
    real_shards, shared_data, planted_sampler, tmp_path
) -> None:
    """The integrated path (the eval suite with a tracer) on the real mixture: GSM8K test problems
    answered with GSM8K train and OMI2-sample solutions that are in train.bin get each row's source
    from the document map alone; no format rule is involved."""
    from echochamber.eval.config import EvalConfig
    from echochamber.eval.suite import evaluate
    from echochamber.provenance.records import pooled
    from echochamber.verify.grade import Grader

    tracer = Tracer(real_shards)
    sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
    planted = []
    for name, file in (("gsm8k", shared_data / "gsm8k" / "train.jsonl"), ("omi2", shared_data / "samples" / "omi2.jsonl")):
        records = {r.id: r for r in load_source(name, path=file)}
        for index in np.flatnonzero(sources == tracer.sources.index(name))[:3]:
            planted.append((name, records[tracer.doc_map.doc_id(int(index))].solution))
    sampler = planted_sampler(tracer, [text for _, text in planted])
    evaluation = EvalConfig(n=len(planted), limit=2, data=str(shared_data)).evaluation("gsm8k")
    with Grader(workers=1) as grader:
        results = evaluate(
            None, tracer.tokenizer, benchmark_records("gsm8k", shared_data), evaluation, grader=grader,
            sampler=sampler, out_dir=tmp_path, progress=False, tracer=tracer,
        )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    for row in rows:
        source, text = planted[sampler.solutions.index(row["text"])]
        assert row["provenance"]["dominant_source"] == source and row["provenance"]["longest_match"]["text"] == text
    sampled = results["sampled"]["provenance"]
    assert sampled == pooled([row for row in rows if row["mode"] == "sampled"])
    assert set(sampled["unique_share"]) == {"gsm8k", "omi2", "tinygsm"} and sampled["novelty"] == 0.0
    # Half the samples are GSM8K's, half the OMI2 sample's: each source holds a large unique share.
    assert min(sampled["unique_share"]["gsm8k"], sampled["unique_share"]["omi2"]) > 0.2, sampled
