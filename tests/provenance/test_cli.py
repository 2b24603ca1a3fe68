"""`echochamber trace RUN_DIR IN.jsonl [--out OUT.jsonl] [--n N]` end to end, and its bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from echochamber.cli import main
from echochamber.config import save_config
from echochamber.data.docmap import DOC_MAP_DIR, load_document_map
from echochamber.data.mixture import build_shards
from echochamber.data.shards import open_shards
from echochamber.study.config import load_study


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A study run folder as `echochamber run --preset smoke` leaves it, as far as tracing reads it."""
    run = tmp_path_factory.mktemp("trace") / "run"
    study = load_study(None, "smoke", [])
    build_shards(study.mixture, run / "shards", progress=False)
    save_config(study, run / "config.yaml")
    return run


def _solutions(shards_dir: Path, count: int) -> list[tuple[str, str, str]]:
    """(source, doc id, solution text) of the first `count` training documents, decoded."""
    from transformers import PreTrainedTokenizerFast

    shards = open_shards(shards_dir)
    doc_map = load_document_map(shards_dir, shards.manifest)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(shards.tokenizer_path))
    out = []
    for index in range(count):
        ids = shards.train[doc_map.starts[index] : doc_map.starts[index + 1] - 1].tolist()
        text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        source = doc_map.sources[int(doc_map.source_of(np.array([index]))[0])]
        out.append((source, doc_map.doc_id(index), text.split("\n\n", 1)[1]))
    return out


def test_trace_writes_every_line_back_with_its_provenance(run_dir, tmp_path, capsys) -> None:
    docs = _solutions(run_dir / "shards", 3)
    lines = [{"id": i, "text": text} for i, (_, _, text) in enumerate(docs)]
    lines.append({"id": "c", "completion": "zebra quantum xylophone"})
    source = tmp_path / "gens.jsonl"
    source.write_text(
        "\n".join(json.dumps(line) for line in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(line) for line in lines[2:])
        + "\n"
    )
    # As if the shards predated document maps: the run's config.yaml rebuilds it.
    shutil.rmtree(run_dir / "shards" / DOC_MAP_DIR)
    out = tmp_path / "traced.jsonl"
    assert main(["trace", str(run_dir), str(source), "--out", str(out), "--n", "6"]) == 0
    printed = capsys.readouterr().out
    assert "traced 4 generations" in printed and "skipped 1 blank line" in printed
    traced = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in t.items() if k != "provenance"} for t in traced] == lines
    for (source_name, doc_id, _), t in zip(docs, traced, strict=False):
        p = t["provenance"]
        assert p["n"] == 6 and p["novelty"] == 0.0
        assert p["source_share"][source_name] == 1.0
        assert p["longest_match"]["tokens"] > 6 and p["longest_match"]["text"] == t["text"]
        assert (p["longest_match"]["source"], p["longest_match"]["doc"]) == (source_name, doc_id)
    assert traced[3]["provenance"]["novelty"] > 0.5


def test_trace_to_stdout_prints_only_json(run_dir, tmp_path, capfd) -> None:
    shutil.rmtree(run_dir / "shards" / "provenance", ignore_errors=True)  # the index is built in this call
    source = tmp_path / "gens.jsonl.gz"
    with gzip.open(source, "wt") as f:
        f.write(json.dumps({"text": _solutions(run_dir / "shards", 1)[0][2]}) + "\n")
    assert main(["trace", str(run_dir / "shards"), str(source)]) == 0
    out, err = capfd.readouterr()
    assert [json.loads(line)["provenance"]["novelty"] for line in out.splitlines()] == [0.0]
    assert "indexing" in err and "traced 1 generations" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\n{"text": "b"\n', r"gens.jsonl:2: not valid JSON"),
        (
            '{"text": "a"}\n\n{"prompt": "b"}\n',
            r"gens.jsonl:3: no 'text' or 'completion' field \(keys: prompt\)",
        ),
        ('["text"]\n', r"gens.jsonl:1: expected a JSON object, got list"),
        ('{"completion": 5}\n', r"gens.jsonl:1: 'completion' is int, not a string"),
    ],
)
def test_bad_lines_are_one_line_errors_before_any_output(run_dir, tmp_path, capsys, content, message) -> None:
    source = tmp_path / "gens.jsonl"
    source.write_text(content)
    out = tmp_path / "traced.jsonl"
    assert main(["trace", str(run_dir), str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".traced*"))


def test_missing_folders_and_files(run_dir, tmp_path, capsys) -> None:
    source = tmp_path / "gens.jsonl"
    source.write_text('{"text": "a"}\n')
    assert main(["trace", str(tmp_path / "nowhere"), str(source)]) == 2
    assert "run or shards folder not found" in capsys.readouterr().err
    assert main(["trace", str(tmp_path), str(source)]) == 2
    assert "neither a study run" in capsys.readouterr().err
    assert main(["trace", str(run_dir), str(tmp_path / "none.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err
