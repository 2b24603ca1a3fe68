"""The run log every stage writes through: `metrics.jsonl`, TensorBoard, optionally W&B.

`metrics.jsonl` is the source of truth (the report reads only it): one JSON object a line, each with
`stage` and `step`. Lines are flushed as they are written so a killed process loses at most the line
it was writing. On resume, `truncate_metrics` drops the lines a stage wrote after its last checkpoint
(they will be written again) and TensorBoard is opened with `purge_step` for the same reason, so no
step appears twice in either. `iter_jsonl` is the one reader of the JSON-lines files the project
appends to (this log, an evaluation's generations.jsonl): it tolerates exactly what a kill leaves.

(The pass@k / maj@k estimators are another thing: echochamber.eval.passk.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from echochamber.errors import UserError

METRICS_FILE = "metrics.jsonl"


def iter_jsonl(path: str | Path, torn: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file we append to, streamed (constant memory).

    A kill while writing the last line means that line never happened: a last line that is not valid
    JSON is skipped (and `torn()` called). A bad line followed by another, or a line that is not a
    JSON object, is corruption and a one-line UserError.
    """
    path = Path(path)
    bad_line: int | None = None
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if bad_line is not None:
                raise UserError(f"{path}: line {bad_line} is not valid JSON")
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad_line = number
                continue
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number} is not a JSON object")
            yield row
    if bad_line is not None and torn is not None:
        torn()


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """`iter_jsonl` as a list, and whether a torn last line was skipped."""
    torn: list[bool] = []
    rows = list(iter_jsonl(path, lambda: torn.append(True)))
    return rows, bool(torn)


def read_metrics(path: str | Path, stage: str | None = None) -> list[dict[str, Any]]:
    """All complete lines of a metrics file (optionally of one stage); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, _ = read_jsonl(path)
    return [row for row in rows if stage is None or row.get("stage") == stage]


def truncate_metrics(path: str | Path, stage: str, last_step: int) -> int:
    """Drop `stage` lines with step > `last_step` (and a torn last line); returns how many went.

    Lines of other stages are kept in place. The file is rewritten through a temp file + rename, so
    a kill during truncation leaves either the old or the new file, never a mix.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    rows, torn = read_jsonl(path)
    kept = [row for row in rows if not (row.get("stage") == stage and row.get("step", -1) > last_step)]
    dropped = len(rows) - len(kept) + int(torn)
    if dropped == 0:  # nothing to drop: leave the file (and any writer open on it) untouched
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)
    return dropped


def _jsonable(value: Any) -> Any:
    # NaN/inf are not JSON; write them as strings so a diverged run is visible instead of a crash.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _flat_numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as `a/b` keys (format_share/omi1 ...), for TensorBoard and W&B."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


class MetricsWriter:
    """Writes one stage's metrics. Only the process that should log (rank 0) creates one."""

    def __init__(
        self,
        out_dir: str | Path,
        stage: str,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb logging was asked for but wandb is not installed (pip install wandb)") from None
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.path = self.out_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, stage, resume_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote after the checkpoint it resumes from.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(self.out_dir / "tb" / stage), purge_step=purge)
        self._wandb = None
        if wandb is not None:
            # A stable id per run folder lets a resumed run continue the same W&B run.
            folder_hash = hashlib.sha256(str(self.out_dir.resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb.init(
                project=wandb_project, name=run_name, id=f"{stage}-{folder_hash}", resume="allow", config=config or {}
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"stage": self.stage, "step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = _flat_numbers(values)
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(f"{self.stage}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
