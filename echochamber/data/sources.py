"""Reading real datasets: every public corpus the study uses, turned into the one `Record` type.

A source is loaded from a local path (a .jsonl/.json/.parquet file, optionally .gz/.zst compressed;
a folder of such files; or a folder written by `datasets` `save_to_disk`) or, for users with a
network, from the Hugging Face hub. Everything goes through the `datasets` library so local files and
hub rows are read by the same code, and `load_dataset_rows` can hand the mixture builder a
`datasets.Dataset` for multi-process `map` at real scale (TinyGSM alone is 12.3M rows).

What each dataset is (hub id, required fields, row -> prompt/solution/answer) is adapters.py's.
Ids are stable: a row's `unique_id` verbatim (MATH-500: "test/precalculus/807.json"), else
f"{source}-{row['id']}", else f"{source}-{row_index}" with the 0-based row index over the files in
sorted order, counted before any row is dropped, so ids survive `limit` and filters. A row missing a
required field or a gold answer is a `UserError` naming the row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetsError

from echochamber.data.adapters import Row, SourceSpec, get_spec
from echochamber.data.records import Record
from echochamber.errors import UserError

# What reading a malformed local file or an unreachable hub dataset raises inside `datasets`
# (pyarrow's ArrowInvalid is a ValueError; offline/not-found errors are OSErrors or DatasetsErrors).
# Dataset scripts that `datasets` no longer runs raise RuntimeError.
_READ_ERRORS = (ValueError, OSError, DatasetsError)
_HUB_ERRORS = (*_READ_ERRORS, RuntimeError)


# --- locating local data ---------------------------------------------------------------------------

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst")  # .zst needs `zstandard`
# Split names in file paths, with the synonyms `datasets` also accepts; a file naming none is "train".
_SPLIT_SYNONYMS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip
_SPLIT_IN_PATH = re.compile(r"(?:^|[/._-])(" + "|".join(_SPLIT_SYNONYMS) + r")(?=$|[/._\-0-9])")


def _builder_for(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    return "json" if name.endswith(_JSON_SUFFIXES) else None


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in a folder, in sorted order (the order row indices count in)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and _builder_for(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise UserError(f"{folder}: no .jsonl/.json/.parquet files and not a datasets save_to_disk folder")
    by_split: dict[str, list[Path]] = {}
    for file in files:
        named = _SPLIT_IN_PATH.search(file.relative_to(folder).as_posix().lower())
        by_split.setdefault(_SPLIT_SYNONYMS[named.group(1)] if named else "train", []).append(file)
    if split not in by_split:
        raise UserError(
            f"{folder}: no files for split {split!r} (splits found: {', '.join(sorted(by_split))})"
        )
    return by_split[split]


def _saved_split(folder: Path, split: str) -> datasets.Dataset:
    try:
        saved = datasets.load_from_disk(str(folder))
    except _READ_ERRORS as exc:
        raise UserError(f"{folder}: cannot be read as a save_to_disk folder: {_one_line(exc)}") from exc
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise UserError(f"{folder}: no split {split!r} (splits: {', '.join(saved)})")
        return saved[split]
    return saved


def _hub_dataset(spec: SourceSpec, repo: str, split: str, streaming: bool) -> Any:
    """The hub dataset (streaming or not); a failure (offline, not found, bad split) is one UserError line."""
    try:
        if repo == spec.hub_id and spec.hub_files:
            files = f"hf://datasets/{repo}/{spec.hub_files.format(split=split)}"
            return datasets.load_dataset("json", data_files=files, split="train", streaming=streaming)
        config = spec.hub_config if repo == spec.hub_id else None
        return datasets.load_dataset(repo, config, split=split, streaming=streaming)
    except _HUB_ERRORS as exc:
        raise UserError(
            f"{spec.name}: cannot load {repo!r} split {split!r} from the hub: {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


# --- rows ------------------------------------------------------------------------------------------


def _guarded(rows: Iterable[Row], label: str) -> Iterator[Row]:
    """Rows of one file/dataset; a read failure mid-way (malformed JSON, corrupt parquet) is a UserError."""
    try:
        yield from rows
    except _READ_ERRORS as exc:
        raise UserError(f"{label}: cannot be read: {_one_line(exc)}") from exc


def _located_rows(parts: list[tuple[str, Iterable[Row]]]) -> Iterator[tuple[int, Row, str]]:
    """(row index over all parts, row, "row i of <part>") for each row, parts in order."""
    index = 0
    for label, rows in parts:
        for local, row in enumerate(_guarded(rows, label)):
            yield index, row, f"row {local} of {label}"
            index += 1


def _locate(
    spec: SourceSpec, path: str | Path | None, hub: str | None, split: str
) -> str | Path | list[Path]:
    """Where the rows are: a hub repo id (str), a save_to_disk folder (Path) or data files (list).

    Runs at call time so a bad path or split fails where the user asked, not mid-stream.
    """
    if path is not None and hub is not None:
        raise UserError(f"{spec.name}: give a local path or a hub name, not both")
    if path is None:
        return hub or spec.hub_id
    path = Path(path)
    if not path.exists():
        raise UserError(f"{spec.name}: {path} does not exist")
    if path.is_dir():
        return path if _is_saved_dataset(path) else _split_files(path, split)
    if _builder_for(path) is None:
        raise UserError(f"{path}: not a .jsonl, .json or .parquet file")
    return [path]


def _open_rows(
    spec: SourceSpec, path: str | Path | None, hub: str | None, split: str
) -> Iterator[tuple[int, Row, str]]:
    """Stream the rows of a source, each with its index and location."""
    where = _locate(spec, path, hub, split)
    if isinstance(where, str):
        return _located_rows(
            [(f"{where} (hub, split {split})", _hub_dataset(spec, where, split, streaming=True))]
        )
    if isinstance(where, Path):
        return _located_rows([(f"{where} (split {split})", _saved_split(where, split))])
    parts = []
    for file in where:
        try:
            rows = datasets.load_dataset(
                _builder_for(file), data_files=str(file), split="train", streaming=True
            )
        except _READ_ERRORS as exc:
            raise UserError(f"{file}: cannot be read: {_one_line(exc)}") from exc
        parts.append((str(file), rows))
    return _located_rows(parts)


def _record_id(name: str, row: Row, index: int) -> str:
    if row.get("unique_id") is not None:
        return str(row["unique_id"])
    if row.get("id") is not None:
        return f"{name}-{row['id']}"
    return f"{name}-{index}"


def _to_record(spec: SourceSpec, row: Row, index: int, where: str) -> Record | None:
    """The row as a Record, None when the source drops it; a missing field or gold answer is a UserError."""
    if spec.keep is not None and not spec.keep(row):
        return None
    for field in spec.required:
        if row.get(field) is None:
            raise UserError(
                f"{spec.name}: {where} has no {field!r} field "
                f"(rows counted from 0; required: {', '.join(spec.required)})"
            )
    prompt, solution, answer = spec.convert(row)
    if answer is None:
        raise UserError(f"{spec.name}: {where}: no gold answer found in {spec.gold_rule}")
    return Record(_record_id(spec.name, row, index), prompt, solution, answer, spec.name, spec.style)


# --- public API ------------------------------------------------------------------------------------


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")


def iter_records(
    name: str,
    path: str | Path | None = None,
    hub: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> Iterator[Record]:
    """Stream a source's records (constant memory, so millions of rows are fine).

    `path`: a file, a folder of files (files whose path names no split count as "train"), or a
    `save_to_disk` folder; `split` picks files in a folder, a split of a saved DatasetDict or of the
    hub dataset, and is ignored for a single file. With no `path`, rows stream from the hub: `hub`
    if given (loaded with no config), else the source's default repo and config. `split` defaults to
    the source's usual one ("test" for math500, "train" otherwise). `limit` caps kept records.
    """
    spec = get_spec(name)
    _check_limit(limit)
    rows = _open_rows(spec, path, hub, split or spec.default_split)
    records = (
        record for index, row, where in rows if (record := _to_record(spec, row, index, where)) is not None
    )
    return islice(records, limit)


def load_source(
    name: str,
    path: str | Path | None = None,
    hub: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[Record]:
    """`iter_records` as a list (for benchmarks and samples; stream large corpora instead)."""
    return list(iter_records(name, path, hub, split, limit))


def load_dataset_rows(
    name: str,
    path: str | Path | None = None,
    hub: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """The source's raw rows as an Arrow-backed `datasets.Dataset` (memory-mapped, not in RAM).

    Same `path`/`hub`/`split` rules as `iter_records`; the required columns are checked here, each
    row when converted. Turn the rows into records with `records_dataset` (multi-process `map`).
    `limit` takes the first rows, before any filtering.
    """
    spec = get_spec(name)
    _check_limit(limit)
    split = split or spec.default_split
    where = _locate(spec, path, hub, split)
    if isinstance(where, str):
        rows, label = _hub_dataset(spec, where, split, streaming=False), f"{where} (hub, split {split})"
    elif isinstance(where, Path):
        rows, label = _saved_split(where, split), f"{where} (split {split})"
    else:
        rows, label = _files_dataset(where), str(path)
    missing = [field for field in spec.required if field not in rows.column_names]
    if missing:
        raise UserError(
            f"{name}: {label} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(rows.column_names)})"
        )
    return rows.select(range(min(limit, len(rows)))) if limit is not None else rows


def _files_dataset(files: list[Path]) -> datasets.Dataset:
    builders = {_builder_for(file) for file in files}
    if len(builders) > 1:
        raise UserError(
            f"{files[0].parent}: mixes json and parquet files; load_dataset_rows needs one format"
        )
    try:
        return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
    except _READ_ERRORS as exc:
        raise UserError(f"{', '.join(map(str, files))}: cannot be read: {_one_line(exc)}") from exc


def records_dataset(name: str, rows: datasets.Dataset, num_proc: int | None = None) -> datasets.Dataset:
    """Rows from `load_dataset_rows` -> a Dataset with the Record columns, via `map` on `num_proc` processes.

    Row order, ids and filtering are exactly those of `iter_records` over the same data; errors name
    the row index (the file is not known once rows are one Dataset).
    """
    spec = get_spec(name)
    dropped = {"id": "", "prompt": "", "solution": "", "answer": "", "source": "", "style": ""}

    def to_columns(row: dict[str, Any], index: int) -> dict[str, Any]:
        record = _to_record(spec, row, index, f"row {index}")
        return {**(record.to_dict() if record else dropped), "_keep": record is not None}

    records = rows.map(to_columns, with_indices=True, remove_columns=rows.column_names, num_proc=num_proc)
    if spec.keep is not None:
        records = records.filter(lambda keep: keep, input_columns="_keep", num_proc=num_proc)
    return records.remove_columns("_keep")
