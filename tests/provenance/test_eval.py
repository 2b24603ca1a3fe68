"""The eval suite with a tracer: every generation row carries its provenance and each mode's results
the rows' pooled shares; without one, both are None. The sampler is planted with training documents'
solutions (each a known source), so every expected attribution is known by construction."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from echochamber.config import from_dict
from echochamber.data.world import WorldConfig, world_records
from echochamber.eval.config import EvalConfig
from echochamber.eval.store import GENERATIONS_FILE, RESULTS_FILE
from echochamber.eval.suite import evaluate
from echochamber.provenance.records import pooled
from echochamber.provenance.tracer import Tracer, summarise
from echochamber.verify.grade import Grader


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def tracer(world_shards) -> Tracer:
    return Tracer(world_shards)


def _trained_solutions(tracer: Tracer, world: WorldConfig) -> list[tuple[str, str]]:
    """(source, solution) of a few train.bin documents per source."""
    sources = tracer.doc_map.source_of(np.arange(tracer.doc_map.n_documents))
    picked = []
    for index, name in enumerate(tracer.sources):
        records = {r.id: r for r in world_records(world, "pretrain", name)}
        for document in np.flatnonzero(sources == index)[:2]:
            picked.append((name, records[tracer.doc_map.doc_id(int(document))].solution))
    return picked


def test_rows_and_results_carry_provenance(tracer, world_spec, grader, planted_sampler, tmp_path) -> None:
    world = from_dict(WorldConfig, world_spec["world"])
    planted = _trained_solutions(tracer, world)
    sampler = planted_sampler(tracer, [text for _, text in planted])
    evaluation = EvalConfig(n=len(planted), limit=3).evaluation("world-test", world)
    records = world_records(world, "test", "gsm8k")
    results = evaluate(
        None, tracer.tokenizer, records, evaluation, grader=grader, sampler=sampler, out_dir=tmp_path / "traced",
        progress=False, tracer=tracer,
    )  # fmt: skip

    rows = [json.loads(line) for line in (tmp_path / "traced" / GENERATIONS_FILE).read_text().splitlines()]
    assert len(rows) == 3 * (1 + len(planted))
    for row in rows:
        source, text = planted[sampler.solutions.index(row["text"])]
        p = row["provenance"]
        # A training document's solution is found whole, in a document of its own source.
        assert p["dominant_source"] == source and p["novelty"] == 0.0
        assert p["longest_match"]["tokens"] == row["n_tokens"] - 1  # all of it but the EOS
        assert p["longest_match"]["chars"] == [0, len(text)] and p["longest_match"]["text"] == text
    for mode in ("greedy", "sampled"):
        mine = [row for row in rows if row["mode"] == mode]
        expected = summarise(tracer.trace_ids([sampler.ids[sampler.solutions.index(r["text"])] for r in mine]))
        assert results[mode]["provenance"] == pooled(mine) == expected.to_dict()
    assert json.loads((tmp_path / "traced" / RESULTS_FILE).read_text()) == results

    # The same evaluation without a tracer: no provenance anywhere, and no crash.
    plain = evaluate(
        None, tracer.tokenizer, records, evaluation, grader=grader, sampler=sampler, out_dir=tmp_path / "plain",
        progress=False,
    )  # fmt: skip
    assert plain["greedy"]["provenance"] is None and plain["sampled"]["provenance"] is None
    lines = (tmp_path / "plain" / GENERATIONS_FILE).read_text().splitlines()
    assert all("provenance" not in json.loads(line) for line in lines)
