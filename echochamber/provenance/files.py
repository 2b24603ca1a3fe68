"""`echochamber trace RUN_DIR IN.jsonl [--out OUT.jsonl] [--n N]`: provenance for a file of generations.

Each input line is a JSON object with `text` (or `completion`, as eval generations and graded files
hold it); it is written back unchanged plus a `provenance` object (`Provenance.to_dict`). Input may
be gzip-compressed (`rollouts/step_N.jsonl.gz`). Every line is checked before any tracing starts, so
a malformed line is a one-line error naming its line number, never a half-written output. Blank
lines are skipped and counted.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from echochamber.errors import UserError
from echochamber.provenance.tracer import DEFAULT_N, Tracer, summarise

TEXT_FIELDS = ("text", "completion")
_BATCH = 1024  # generations traced together (one batched search)


@dataclass(frozen=True)
class TraceReport:
    lines: int
    skipped_blank: int
    summary: dict[str, Any]

    def render(self) -> str:
        s = self.summary
        shares = ", ".join(
            f"{name} {share:.1%}" for name, share in s["source_share"].items() if share is not None
        )
        head = f"traced {self.lines} generations ({s['n']}-grams: {shares}; novel {_pct(s['novelty'])})"
        skipped = f"; skipped {self.skipped_blank} blank lines" if self.skipped_blank else ""
        return head + f"; longest verbatim span {s['longest_match_max']} tokens" + skipped


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def trace_file(
    run_dir: Path, input_path: Path, out_path: Path | None, *, n: int = DEFAULT_N, progress: bool = True
) -> TraceReport:
    """Trace every generation of `input_path` into `out_path` (stdout when None)."""
    records, blank = _read(input_path)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else None
    tracer = Tracer.for_path(run_dir, n=n, say=say)
    traced = []
    bar = _bar(len(records), progress)
    with _output(out_path) as out:
        for start in range(0, len(records), _BATCH):
            batch = records[start : start + _BATCH]
            provenance = tracer.trace_texts([text for _, text in batch])
            for (record, _), p in zip(batch, provenance, strict=True):
                out.write(json.dumps({**record, "provenance": p.to_dict()}) + "\n")
            traced.extend(provenance)
            bar.update(len(batch))
    bar.close()
    return TraceReport(lines=len(records), skipped_blank=blank, summary=summarise(traced).to_dict())


def _read(path: Path) -> tuple[list[tuple[dict[str, Any], str]], int]:
    """(record, its text) per line, and how many blank lines were skipped; a bad line is a UserError."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    records, blank = [], 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    blank += 1
                    continue
                records.append(_parse(line, number, path))
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read: {exc}") from None
    return records, blank


def _parse(line: str, number: int, path: Path) -> tuple[dict[str, Any], str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    field = next((f for f in TEXT_FIELDS if f in record), None)
    if field is None:
        raise UserError(
            f"{path}:{number}: no 'text' or 'completion' field (keys: {', '.join(record) or 'none'})"
        )
    if not isinstance(record[field], str):
        raise UserError(f"{path}:{number}: '{field}' is {type(record[field]).__name__}, not a string")
    return record, record[field]


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or `path` written under a temporary name and renamed when complete."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with partial.open("w", encoding="utf-8") as out:
            yield out
        os.replace(partial, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="gen", desc="tracing", disable=not enabled or total < 2 * _BATCH, file=sys.stderr
    )
