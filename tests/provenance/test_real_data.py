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


def test_a_study_on_real_sources_records_provenance_per_source(
    shared_data, planted_sampler, tmp_path, monkeypatch
) -> None:
    """The study path (run_study: data -> pretrain -> base evaluation, the tracer built from RUN/shards)
    on a mixture of GSM8K train, the OMI2 sample and a world format. The model answers with GSM8K and
    OMI2-sample solutions that are in train.bin (planted: a briefly trained model's text echoes
    nothing); each row gets its source and dataset row from the document map alone, and results.json
    the shares per real source. No format rule is involved."""
    from echochamber.eval import suite
    from echochamber.provenance.records import pooled
    from echochamber.study import pipeline
    from echochamber.study.config import load_study

    files = {"gsm8k": shared_data / "gsm8k" / "train.jsonl", "omi2": shared_data / "samples" / "omi2.jsonl"}
    mixture = ", ".join(f"{{dataset: {name}, path: '{file}', limit: 400}}" for name, file in files.items())
    study = load_study(preset="smoke", overrides=[
        f"mixture.sources=[{mixture}, {{world: tinygsm}}]", "formats=[tinygsm, omi1, omi2, gsm8k]",
        "pretrain.max_steps=2", "eval.benchmarks=[world-test]", "eval.limit=2", "eval.n=6",
    ])  # fmt: skip
    run, planted = tmp_path / "run", []  # (source, row id, solution)

    def plant(*args, **kwargs):
        """At the base evaluation, shards/ exists: three training documents of each real source."""
        tracer, planted[:] = Tracer(run / "shards"), []
        sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
        for name, file in files.items():
            records = {r.id: r for r in load_source(name, path=file)}
            for index in np.flatnonzero(sources == tracer.sources.index(name))[:3]:
                record = records[tracer.doc_map.doc_id(int(index))]
                planted.append((name, record.id, record.solution))
        planted[:] = [planted[i // 2 + 3 * (i % 2)] for i in range(6)]  # alternating sources
        return planted_sampler(tracer, [solution for *_, solution in planted])

    monkeypatch.setattr(suite, "build_sampler", plant)
    monkeypatch.setattr(pipeline, "STAGES", pipeline.STAGES[:3])  # RL traces through the same tracer
    pipeline.run_study(study, run, progress=False)

    folder = run / "eval" / "base" / "world-test"
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (1 + 6)
    for row in rows:
        source, doc, solution = next(p for p in planted if p[2] == row["text"])
        provenance = row["provenance"]
        assert provenance["dominant_source"] == source and provenance["novelty"] == 0.0
        assert (provenance["longest_match"]["doc"], provenance["longest_match"]["text"]) == (doc, solution)
    results = json.loads((folder / "results.json").read_text())
    for mode in ("greedy", "sampled"):
        assert results[mode]["provenance"] == pooled([row for row in rows if row["mode"] == mode])
    shares = results["sampled"]["provenance"]["unique_share"]
    assert set(shares) == {"gsm8k", "omi2", "tinygsm"}
    # Half the samples are GSM8K rows, half OMI2-sample rows: each holds a large unique share, and
    # every n-gram is in its own source, so none is TinyGSM's alone.
    assert min(shares["gsm8k"], shares["omi2"]) > 0.2 and shares["tinygsm"] == 0.0, shares
