"""Real-dataset adapters: real files in shared/data where a sample exists, hand-written fixtures otherwise."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from echochamber.data.adapters import SOURCES, gsm8k_answer, last_boxed
from echochamber.data.sources import iter_records, load_dataset_rows, load_source, records_dataset
from echochamber.errors import UserError


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- real data ---------------------------------------------------------------------------------------


def test_real_counts_and_split_selection_in_a_folder(shared_data: Path) -> None:
    # The gsm8k folder holds train.jsonl and test.jsonl: `split` must pick the file.
    assert len(load_source("gsm8k", shared_data / "gsm8k", split="train")) == 7473
    assert len(load_source("gsm8k", shared_data / "gsm8k", split="test")) == 1319
    assert len(load_source("math500", shared_data / "math500")) == 500  # default split of math500 is test
    assert len(load_source("aime", shared_data / "aime" / "aime_22_23_24.jsonl")) == 90
    omi2 = load_source("omi2", shared_data / "samples" / "omi2.jsonl")
    assert len(omi2) == 500
    assert {r.style for r in omi2} == {"omi2"}
    assert all(r.answer and "\\boxed" in r.solution for r in omi2)


def test_aime_zero_padding_is_stripped(shared_data: Path) -> None:
    file = shared_data / "aime" / "aime_22_23_24.jsonl"
    raw = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    records = load_source("aime", file)
    assert sum(row["answer"] != record.answer for row, record in zip(raw, records, strict=True)) == 20
    assert all(int(row["answer"]) == int(record.answer) for row, record in zip(raw, records, strict=True))
    assert not any(record.answer.startswith("0") for record in records)
    assert [r.id for r in records[:2]] == ["aime-0", "aime-1"]
    assert {r.style for r in records} == {"math"}


def test_gsm8k_answers_drop_thousands_commas(shared_data: Path) -> None:
    file = shared_data / "gsm8k" / "test.jsonl"
    raw = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    records = load_source("gsm8k", file)
    with_commas = [i for i, row in enumerate(raw) if "," in row["answer"].rsplit("####", 1)[1]]
    assert with_commas, "GSM8K test has answers like '#### 2,125'"
    for i in with_commas:
        assert "," not in records[i].answer
        assert records[i].answer == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert records[0].answer == "18" and records[0].prompt == raw[0]["question"]
    assert gsm8k_answer("She pays 1000 + 200 = 1,200 dollars.\n#### 1,200") == "1200"


def test_math500_ids_and_boxed_extraction_agree_with_the_answer_field(shared_data: Path) -> None:
    records = load_source("math500", shared_data / "math500" / "test.jsonl")
    assert records[0].id == "test/precalculus/807.json"
    assert records[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    # The fallback extractor must reproduce the curated answer wherever a source lacks one.
    assert all(last_boxed(r.solution) == r.answer for r in records)


def test_limit_keeps_ids_and_streams(shared_data: Path) -> None:
    records = iter_records("gsm8k", shared_data / "gsm8k" / "train.jsonl", limit=3)
    assert [r.id for r in records] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]


# --- answer extraction ---------------------------------------------------------------------------


def test_math_without_answer_field_uses_last_boxed(tmp_path: Path) -> None:
    rows = [
        {
            "problem": "Compute $1 - \\frac12$.",
            "solution": "First \\boxed{0}... no: $\\boxed{\\frac{1}{2}}$.",
        },
        {"problem": "Compute $2+2$.", "solution": "It is 4."},
    ]
    file = _write_jsonl(tmp_path / "math.jsonl", rows)
    assert load_source("math", file, limit=1)[0].answer == "\\frac{1}{2}"
    with pytest.raises(UserError, match=r"row 1 of .*math\.jsonl: no gold answer found in .*boxed"):
        load_source("math", file)


def test_gsm8k_without_marker_is_an_error(tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "It is 2."}])
    with pytest.raises(UserError, match="row 0 of .*g.jsonl: no gold answer found in a final '#### N' line"):
        load_source("gsm8k", file)


# --- fixtures for schemas with no real sample --------------------------------------------------------


def test_tinygsm_fixture_jsonl(fixtures_dir: Path) -> None:
    records = load_source("tinygsm", fixtures_dir / "sources" / "tinygsm.jsonl")
    assert len(records) == 3
    first = records[0]
    assert first.id == "tinygsm-0" and first.style == "tinygsm" and first.answer == ""
    assert first.prompt.startswith("Tom has 5 apples")
    assert first.solution.startswith("def simple_math_problem() -> int:")


def test_omi1_fixture_parquet_keeps_only_correct_rows(fixtures_dir: Path) -> None:
    records = load_source("omi1", fixtures_dir / "sources" / "omi1.parquet")
    # Row 1 has is_correct false; ids still count it, so they match the file's rows.
    assert [r.id for r in records] == ["omi1-0", "omi1-2", "omi1-3"]
    assert [r.answer for r in records] == ["12", "\\frac{3}{4}", "40"]  # expected_answer, not predicted
    assert all(r.style == "omi1" and "<llm-code>" in r.solution for r in records)


def test_omi1_without_is_correct_column_keeps_every_row(tmp_path: Path) -> None:
    row = {"question": "2+3?", "generated_solution": "<llm-code>\n2+3\n</llm-code>", "expected_answer": "5"}
    assert len(load_source("omi1", _write_jsonl(tmp_path / "omi1.jsonl", [row, row]))) == 2


def test_metamathqa_fixture_json_array(fixtures_dir: Path, tmp_path: Path) -> None:
    """MetaMathQA-395K.json is one JSON array; the gold is the closing `The answer is: X` line."""
    records = load_source("metamathqa", fixtures_dir / "sources" / "metamathqa.json")
    assert [r.answer for r in records] == ["8", "48", "14", "\\frac{3}{4}", "12", "3"]
    first = records[0]
    assert first.id == "metamathqa-0" and first.style == "metamathqa"
    assert first.prompt.startswith("If Tom has 5 apples") and first.solution.endswith("The answer is: 8")
    row = {"query": "1+1?", "response": "It is 2."}
    with pytest.raises(UserError, match="row 0 of .*m.jsonl: no gold answer found in a final 'The answer is: X'"):
        load_source("metamathqa", _write_jsonl(tmp_path / "m.jsonl", [row]))


def test_text_fixtures(fixtures_dir: Path) -> None:
    finemath = load_source("finemath", fixtures_dir / "sources" / "finemath.parquet")
    stack = load_source("algebraic-stack", fixtures_dir / "sources" / "algebraic_stack.jsonl")
    assert [len(finemath), len(stack)] == [2, 2]
    for record in finemath + stack:
        assert record.style == "text" and record.prompt == "" and record.answer == "" and record.solution
    assert finemath[0].solution.startswith("Adding fractions")
    assert stack[0].id == "algebraic-stack-0"


def test_save_to_disk_folders(tmp_path: Path) -> None:
    rows = [
        {"question": f"q{i}", "code": f"def simple_math_problem() -> int:\n    return {i}\n"}
        for i in range(3)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert [r.prompt for r in load_source("tinygsm", tmp_path / "single")] == ["q0", "q1", "q2"]

    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:1])
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert len(load_source("tinygsm", tmp_path / "dict", split="test")) == 1
    assert len(load_dataset_rows("tinygsm", tmp_path / "dict")) == 3
    with pytest.raises(UserError, match="no split 'validation' \\(splits: train, test\\)"):
        load_source("tinygsm", tmp_path / "dict", split="validation")


def test_folder_of_shards_counts_ids_across_files(tmp_path: Path) -> None:
    row = {"text": "x"}
    _write_jsonl(tmp_path / "shard-000.jsonl", [row, row])
    with gzip.open(tmp_path / "shard-001.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(row) + "\n")
    _write_jsonl(tmp_path / "test.jsonl", [row])
    assert [r.id for r in load_source("finemath", tmp_path)] == ["finemath-0", "finemath-1", "finemath-2"]
    assert len(load_source("finemath", tmp_path, split="test")) == 1
    with pytest.raises(UserError, match="no files for split 'validation' \\(splits found: test, train\\)"):
        load_source("finemath", tmp_path, split="validation")


def test_dataset_rows_give_the_same_records_as_streaming(fixtures_dir: Path) -> None:
    file = fixtures_dir / "sources" / "omi1.parquet"
    rows = load_dataset_rows("omi1", file)
    assert len(rows) == 4 and "is_correct" in rows.column_names
    as_dataset = records_dataset("omi1", rows)
    assert as_dataset.column_names == ["id", "prompt", "solution", "answer", "source", "style"]
    assert as_dataset.to_list() == [r.to_dict() for r in load_source("omi1", file)]
    assert len(load_dataset_rows("omi1", file, limit=2)) == 2


def test_records_dataset_in_worker_processes() -> None:
    rows = datasets.Dataset.from_list(
        [
            {
                "question": f"q{i}",
                "generated_solution": "s",
                "expected_answer": str(i),
                "is_correct": i % 3 != 0,
            }
            for i in range(12)
        ]
    )
    records = records_dataset("omi1", rows, num_proc=2)
    assert records["id"] == [f"omi1-{i}" for i in range(12) if i % 3 != 0]
    missing = datasets.Dataset.from_list(
        [{"question": "q", "generated_solution": "s", "expected_answer": None}] * 2
    )
    with pytest.raises(UserError, match="row 0 has no 'expected_answer' field"):
        records_dataset("omi1", missing, num_proc=2)


# --- bad input ----------------------------------------------------------------------------------------


def test_missing_field_names_field_row_and_file(tmp_path: Path) -> None:
    good = {"question": "q", "generated_solution": "s", "expected_answer": "1"}
    file = _write_jsonl(tmp_path / "omi1.jsonl", [good, {"question": "q", "generated_solution": "s"}])
    with pytest.raises(UserError) as raised:
        load_source("omi1", file)
    message = str(raised.value)
    assert "'expected_answer'" in message and "row 1 of" in message and str(file) in message
    assert "\n" not in message


def test_missing_column_in_dataset_rows(tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path / "tiny.jsonl", [{"question": "q"}])
    with pytest.raises(UserError, match="has no column 'code' \\(columns: question\\)"):
        load_dataset_rows("tinygsm", file)


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as raised:
        load_source("gsm9k", "anything.jsonl")
    assert "unknown source 'gsm9k'" in str(raised.value)
    assert all(name in str(raised.value) for name in SOURCES)


def test_bad_paths_and_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_source("gsm8k", tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="not a .jsonl, .json or .parquet file"):
        load_source("gsm8k", _write_jsonl(tmp_path / "rows.csv", []))
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(UserError, match="broken.jsonl: cannot be read"):
        load_source("gsm8k", tmp_path / "broken.jsonl")
    with pytest.raises(UserError, match="not both"):
        load_source("gsm8k", tmp_path / "broken.jsonl", hub="openai/gsm8k")


def test_offline_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # The libraries read these at import time, so patch their constants as well as the environment.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as raised:
        load_source("gsm8k", limit=1)
    message = str(raised.value)
    assert "openai/gsm8k" in message and "\n" not in message
    with pytest.raises(UserError, match="proof-pile-2"):
        load_dataset_rows("algebraic-stack")
