"""The output folder of one evaluation, and the one place its file names are written down:

    prompts.jsonl        the prompts evaluated: {"id", "prompt", "gold"} a line (the report shows
                         their texts from here; it never rebuilds a benchmark)
    generations.jsonl    one graded generation a line, appended one prompt chunk at a time
    eval_settings.json   the settings that decide the generations and their grading, the format
                         registry included (a resumed run must match them)
    results.json         the scores, written at the end
    config.yaml          the evaluation as an EvalConfig (Evaluation.config_file): `eval --config` repeats it

A killed evaluation resumes where it stopped, and a folder never mixes generations made under
different settings or grading rules."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from echochamber.data.records import Record
from echochamber.errors import UserError
from echochamber.formats.registry import default_registry
from echochamber.runlog import iter_jsonl, read_jsonl

PROMPTS_FILE = "prompts.jsonl"
GENERATIONS_FILE = "generations.jsonl"
SETTINGS_FILE = "eval_settings.json"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
MODES = ("greedy", "sampled")
# Fields every current generation row has; a row without one was written by an older version.
ROW_FIELDS = frozenset({"vote", "paper_format"})

Regrade = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class GenerationStore:
    """One evaluation's folder; holds only complete (mode, prompt) groups after load.

    `expected` is the generations per prompt of each mode this run asks for, `settings` what decides
    the generations (compared with the folder's eval_settings.json: a mismatch is refused).
    """

    def __init__(self, folder: Path, expected: Mapping[str, int], settings: dict[str, Any]) -> None:
        self.folder = folder
        self.path = folder / GENERATIONS_FILE
        self.expected = dict(expected)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create output folder {folder}: {error.strerror}") from None
        _check_settings(folder / SETTINGS_FILE, settings)

    def load(self, regrade: Regrade) -> list[dict[str, Any]]:
        """Rows of complete groups. A group cut short by a kill (or a torn last line) is dropped from
        the file, so the prompt is generated again in full; rows of a mode this run does not ask
        for (e.g. greedy when greedy is now off) are kept in the file but not returned. Groups
        written by an older version (a row lacks one of ROW_FIELDS) go through `regrade` (whole
        groups: votes are classes among a prompt's samples) and are stored as it returns them."""
        if not self.path.is_file():
            return []
        rows, torn = _read_jsonl(self.path)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[(row["mode"], row["prompt_id"])].append(row)
        expected = {**{mode: None for mode in MODES}, **self.expected}
        complete = {
            key
            for key, group in groups.items()
            if expected[key[0]] is None or sorted(r["sample_index"] for r in group) == list(range(expected[key[0]]))
        }
        kept = [row for row in rows if (row["mode"], row["prompt_id"]) in complete]
        current = self._regraded(kept, regrade)
        if torn or len(kept) != len(rows) or current is not kept:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in current))
            os.replace(tmp, self.path)
        return [row for row in current if row["mode"] in self.expected]

    def _regraded(self, rows: list[dict[str, Any]], regrade: Regrade) -> list[dict[str, Any]]:
        """`rows` with the groups of older rows replaced by `regrade`'s rows; `rows` itself if none."""
        stale = {(row["mode"], row["prompt_id"]) for row in rows if not row.keys() >= ROW_FIELDS}
        if not stale:
            return rows
        old = [row for row in rows if (row["mode"], row["prompt_id"]) in stale]
        fresh = iter(regrade(old))
        print(
            f"echochamber: eval: graded {len(old)} generations in {self.path} again "
            f"(written before rows recorded {' and '.join(sorted(ROW_FIELDS))})",
            file=sys.stderr,
        )
        return [next(fresh) if (row["mode"], row["prompt_id"]) in stale else row for row in rows]

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.path.open("a") as file:
            file.write("".join(json.dumps(row) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(rows, whether a torn last line was skipped); a corrupt or foreign line is a UserError."""
    rows, torn = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if row.get("mode") not in MODES or "prompt_id" not in row:
            raise UserError(f"{path}: row {number} is not a generation row (needs mode and prompt_id)")
    return rows, torn


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix generations made under different settings in one folder."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file
    if path.is_file():
        stored = json.loads(path.read_text())
        if "dtype" not in stored and stored.get("backend") == "torch":
            # Written before the dtype was recorded: the torch backend then sampled the checkpoint
            # in its own dtype, which is "auto". (vLLM then ran float32 weights in float16: no match.)
            stored["dtype"] = "auto"
        if "formats" not in stored:
            # Written before format registries: its rows were labelled and graded by the default one.
            stored["formats"] = default_registry().record()
        changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
        if changed:
            raise UserError(
                f"{path.parent} holds an evaluation with different {', '.join(changed)}; "
                "use another output folder (or delete it to start over)"
            )
        return
    write_json_atomic(path, settings)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_prompts(folder: Path, records: Sequence[Record]) -> None:
    """prompts.jsonl: the evaluated prompts' ids, texts and golds (rewritten whole, atomically)."""
    tmp = folder / f".{PROMPTS_FILE}.tmp"
    rows = ({"id": r.id, "prompt": r.prompt, "gold": r.answer} for r in records)
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    os.replace(tmp, folder / PROMPTS_FILE)


def read_prompts(folder: Path) -> list[dict[str, Any]] | None:
    """The rows of a folder's prompts.jsonl; None for a folder written before it existed."""
    path = folder / PROMPTS_FILE
    return list(iter_jsonl(path)) if path.is_file() else None
