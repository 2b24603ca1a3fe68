"""The document map written with the shards, and its rebuild for folders built before it existed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from echochamber.config import from_dict
from echochamber.data.docmap import DOC_MAP_DIR, load_document_map
from echochamber.data.mixture import MixtureConfig
from echochamber.data.shards import open_shards
from echochamber.data.tokenizer import encode_document
from echochamber.data.world import WorldConfig, world_records
from echochamber.errors import UserError
from echochamber.provenance.rebuild import ensure_document_map


def test_every_document_is_where_the_map_says(world_shards, world_spec) -> None:
    shards = open_shards(world_shards)
    doc_map = load_document_map(world_shards, shards.manifest)
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(shards.tokenizer_path))
    world = from_dict(WorldConfig, world_spec["world"])
    records = {s: {r.id: r for r in world_records(world, "pretrain", s)} for s in doc_map.sources}
    sources = doc_map.source_of(np.arange(doc_map.n_documents))
    counts = np.bincount(sources, minlength=len(doc_map.sources))
    for i, name in enumerate(doc_map.sources):
        assert counts[i] == shards.manifest["sources"][name]["documents"]
    stream = np.asarray(shards.train)
    for index in range(0, doc_map.n_documents, 7):  # every 7th: each one re-encoded from its record
        record = records[doc_map.sources[sources[index]]][doc_map.doc_id(index)]
        expected = encode_document(tokenizer, record.prompt, record.solution)
        assert stream[doc_map.starts[index] : doc_map.starts[index + 1]].tolist() == expected
    # A document repeated k times keeps one number: tinygsm (2 passes) has each id exactly twice.
    tinygsm = doc_map.documents[sources == 0]
    assert set(np.bincount(tinygsm)[np.unique(tinygsm)]) == {2}


@pytest.fixture
def old_style(world_shards, tmp_path):
    """A copy of the shards as built before the document map existed."""
    copy = tmp_path / "old"
    shutil.copytree(world_shards, copy, ignore=shutil.ignore_patterns("provenance"))
    shutil.rmtree(copy / DOC_MAP_DIR)
    return copy


def test_an_old_folder_gets_its_map_rebuilt_from_the_spec(old_style, world_shards, world_spec) -> None:
    manifest = open_shards(old_style).manifest
    rebuilt = ensure_document_map(old_style, manifest, from_dict(MixtureConfig, world_spec))
    original = load_document_map(world_shards, manifest)
    for name in ("starts", "documents", "source_first", "id_offsets", "id_bytes"):
        assert np.array_equal(getattr(rebuilt, name), getattr(original, name)), name
    assert sorted(p.name for p in old_style.parent.iterdir()) == ["old"]  # no scratch folder left


def test_an_old_folder_without_its_spec_is_a_one_line_error(old_style, world_spec) -> None:
    manifest = open_shards(old_style).manifest
    with pytest.raises(UserError, match=r"no document map .*echochamber data mixture SPEC --out") as info:
        ensure_document_map(old_style, manifest, None)
    assert "\n" not in str(info.value)
    other = from_dict(MixtureConfig, {**world_spec, "seed": 8})
    with pytest.raises(UserError, match="builds other shards"):
        ensure_document_map(old_style, manifest, other)
