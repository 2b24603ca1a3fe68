"""`echochamber sweep SWEEP`: a grid of studies, one run folder per cell, one comparison report.

    SWEEP/
      sweep.json          {"name", "axes": {axis: [values]}, "cells": [{"name", "params", "dir"}]}
      cells/<name>/       one run folder per cell (see pipeline.py)
      report/index.html   the comparison report
      slurm.sh            with --emit slurm: an sbatch job array, one task per cell
      torchrun.sh         with --emit torchrun: one torchrun command per cell

A cell is one point of the grid (mixture x model x algorithm x KL x ... x seed), or of one of the
partial grids a sweep lists under `grids` when each finding needs only some cells. Every cell runs
the same `echochamber run` the emitted scripts contain, so a local sweep and a cluster sweep give the
same folders. Finished cells are skipped and unfinished ones resumed. Locally, cells that differ only
in what comes after pretraining (algorithm, KL) share the data, the pretrained model and its
evaluation: the first cell computes them, the others link to them (symlinks inside their folder).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import yaml

from echochamber.config import load_config, preset_names, preset_path, read_yaml
from echochamber.errors import UserError
from echochamber.launch import end_with_parent
from echochamber.study.config import STUDY_PRESETS, StudyConfig, load_study
from echochamber.study.pipeline import is_finished, run_study, share_stages, stage_hashes

SWEEP_PRESETS: tuple[str, ...] = preset_names("sweeps")
SEED_AXIS = "seed"
# A cell's seed reseeds everything random in it except the world, whose test problems must be the
# same in every cell to be compared.
SEED_KEYS = ("mixture.seed", "pretrain.seed", "rl.seed")
SHARED_STAGES = ("data", "pretrain", "eval-base")
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]")  # cell names are folder names


@dataclass
class SweepConfig:
    """A grid over study keys. `axes` maps an axis to its values; the axis is a dotted study key
    (rl.ppo.lr) unless `keys` says which keys it sets (kl -> [rl.ppo.kl_coef, rl.grpo.kl_coef])."""

    name: str
    base: str  # a study preset (quickstart) or a study YAML file, relative to the sweep file
    axes: dict[str, list[Any]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)  # short axis name -> the study keys it sets
    seeds: list[int] = field(default_factory=lambda: [0])
    # Study overrides for every cell (key=value), applied after the axes' values: a `mixture` axis
    # replaces the whole mixture, and `mixture.paths.omi1=...` here must still reach every cell.
    set: list[str] = field(default_factory=list)
    # Overrides for the cells where an axis takes one value, applied after `set`:
    # `set_for: {model: {mini: [pretrain.lr=3.0e-3]}}` trains the larger model at its own rate
    # (no one learning rate suits every width) while the axis still names only the model.
    set_for: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)  # drop cells matching every param of an entry
    # The cells as a union of partial grids instead of the full grid: each entry maps some axes to
    # some of their values; an axis it leaves out takes its first value (list the default first).
    grids: list[dict[str, list[Any]]] = field(default_factory=list)

    def validate(self) -> None:
        if _UNSAFE.search(self.name) or not self.name:
            raise UserError(f"sweep name {self.name!r} must be letters, digits and .+- (it names a folder)")
        for axis, values in self.axes.items():
            if axis == SEED_AXIS or not _AXIS.match(axis):
                raise UserError(
                    f"axis {axis!r} must be a dotted study key or a short name (not '{SEED_AXIS}'; use seeds)"
                )
            if not values or len(values) != len({json.dumps(v) for v in values}):
                raise UserError(f"axis '{axis}' needs a list of distinct values, got {values!r}")
        for axis, keys in self.keys.items():
            if axis not in self.axes:
                raise UserError(f"keys: '{axis}' is not an axis (axes: {', '.join(self.axes)})")
            if not keys or not all(_AXIS.match(key) for key in keys):
                raise UserError(f"keys: '{axis}' must list dotted study keys, got {keys!r}")
        swept = {*SEED_KEYS, *(key for axis in self.axes for key in self.keys.get(axis, [axis]))}
        clash = next((item for item in self.set if _override_key(item) in swept), None)
        if clash is not None:
            raise UserError(f"set: '{clash}' sets a key an axis (or the seed) sets; drop it or the axis")
        for axis, by_value in self.set_for.items():
            if axis not in self.axes:
                raise UserError(f"set_for: '{axis}' is not an axis (axes: {', '.join(self.axes)})")
            names = {_value_key(value) for value in self.axes[axis]}
            for value, items in by_value.items():
                if _value_key(value) not in names:
                    values = ", ".join(_short(v) for v in self.axes[axis])
                    raise UserError(f"set_for: {axis} has no value {value!r} (values: {values})")
                bad = next((item for item in items if "=" not in item or _override_key(item) in swept), None)
                if bad is not None:
                    raise UserError(f"set_for: {axis}={value}: '{bad}' must be key=value on a key no axis (or the seed) sets")
        if not self.seeds or len(self.seeds) != len(set(self.seeds)):
            raise UserError(f"seeds must be a list of distinct integers, got {self.seeds}")
        for rule in self.exclude:
            unknown = [key for key in rule if key not in self.axes and key != SEED_AXIS]
            if not rule or unknown:
                raise UserError(
                    f"exclude entry {rule!r} must match on axes ({', '.join([*self.axes, SEED_AXIS])})"
                )
        for grid in self.grids:
            stray = next(
                (axis for axis, values in grid.items()
                 if axis not in self.axes or not values or any(v not in self.axes[axis] for v in values)),
                None,
            )  # fmt: skip
            if not grid or stray is not None:
                raise UserError(
                    f"grids entry {grid!r} must list values of the axes ({', '.join(self.axes)}) for some of them"
                )


@dataclass(frozen=True)
class Cell:
    name: str
    params: dict[str, Any]  # axis -> value, plus the seed
    overrides: list[str]  # what `echochamber run --set` receives


def load_sweep(spec: str, overrides: list[str] | None = None) -> tuple[SweepConfig, Path]:
    """A sweep preset name or YAML file, plus `--set` overrides of sweep keys; returns the config and
    the folder its `base` is relative to."""
    if spec in SWEEP_PRESETS and not Path(spec).is_file():
        path = preset_path("sweeps", spec, "sweep")
        return load_config(SweepConfig, None, overrides, base=read_yaml(path)), path.parent
    if not Path(spec).is_file():
        raise UserError(
            f"'{spec}' is neither a sweep file nor a sweep preset (presets: {', '.join(SWEEP_PRESETS)})"
        )
    return load_config(SweepConfig, spec, overrides), Path(spec).resolve().parent


def base_args(sweep: SweepConfig, folder: Path) -> tuple[str | None, str | None]:
    """(config file, preset) of the sweep's base study."""
    if (folder / sweep.base).is_file():
        return str((folder / sweep.base).resolve()), None
    if sweep.base in STUDY_PRESETS:
        return None, sweep.base
    raise UserError(f"sweep base '{sweep.base}' is neither a study file next to the sweep nor a study preset "
                    f"({', '.join(STUDY_PRESETS)})")  # fmt: skip


def expand(sweep: SweepConfig) -> list[Cell]:
    """Every combination of the axes (in their order), or of each of `grids` in turn (a combination
    two grids share counted once), then every seed, minus the excluded ones."""
    cells, names = [], {}
    for params in _combinations(sweep):
        if any(all(params[key] == value for key, value in rule.items()) for rule in sweep.exclude):
            continue
        overrides = []
        for axis, value in params.items():
            keys = SEED_KEYS if axis == SEED_AXIS else sweep.keys.get(axis, [axis])
            overrides += [f"{key}={_yaml_scalar(value)}" for key in keys]
        overrides += sweep.set
        for axis, by_value in sweep.set_for.items():
            overrides += next(
                (items for value, items in by_value.items() if _value_key(value) == _value_key(params[axis])), []
            )
        name = cell_name(params)
        if name in names:
            raise UserError(
                f"cells {names[name]} and {params} are both named '{name}'; give the axes distinct last names"
            )
        names[name] = params
        cells.append(Cell(name, params, overrides))
    if not cells:
        raise UserError(f"sweep '{sweep.name}' has no cells left after its exclude rules")
    return cells


def _combinations(sweep: SweepConfig) -> list[dict[str, Any]]:
    grids = sweep.grids or [sweep.axes]
    combos: dict[str, dict[str, Any]] = {}
    for grid in grids:
        columns = [grid.get(axis, values[:1]) for axis, values in sweep.axes.items()]
        for values in itertools.product(*columns, sweep.seeds):
            params = dict(zip([*sweep.axes, SEED_AXIS], values, strict=True))
            combos.setdefault(json.dumps(params), params)
    return list(combos.values())


def cell_name(params: dict[str, Any]) -> str:
    """`mixture-tinygsm+4xomi1_algo-ppo_kl-0.001_seed-0`: the last part of each axis, then its value."""
    return "_".join(
        f"{axis.rsplit('.', 1)[-1]}-{_UNSAFE.sub('-', _short(value))}" for axis, value in params.items()
    )


def resolve_cells(sweep: SweepConfig, folder: Path) -> list[tuple[Cell, StudyConfig]]:
    """Each cell with its resolved study; two cells that would compute the same study are an error
    (an axis that does not apply to them, such as a KL coefficient under EI: exclude one)."""
    config, preset = base_args(sweep, folder)
    resolved, seen = [], {}
    for cell in expand(sweep):
        try:
            study = load_study(config, preset, cell.overrides)
        except UserError as error:
            raise UserError(f"cell {cell.name}: {error}") from None
        digest = stage_hashes(study)["report"]
        if digest in seen:
            raise UserError(
                f"cells {seen[digest]} and {cell.name} describe the same study; add an exclude rule"
            )
        seen[digest] = cell.name
        resolved.append((cell, study))
    return resolved


def write_sweep_file(sweep: SweepConfig, cells: list[Cell], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "name": sweep.name,
        "axes": {**sweep.axes, SEED_AXIS: sweep.seeds},
        "cells": [{"name": c.name, "params": c.params, "dir": f"cells/{c.name}"} for c in cells],
    }
    (out / "sweep.json").write_text(json.dumps(info, indent=2) + "\n")


def run_sweep(
    spec: str, out: Path | None = None, *, jobs: int = 1, overrides: list[str] | None = None
) -> Path:
    """Run every unfinished cell (`jobs` at a time, each in its own process when jobs > 1), then
    write the comparison report; returns its index.html. A failed cell does not stop the others."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    sweep, folder = load_sweep(spec, overrides)
    out = Path(out) if out is not None else Path("runs") / sweep.name
    cells = resolve_cells(sweep, folder)
    write_sweep_file(sweep, [cell for cell, _ in cells], out)
    preset = base_args(sweep, folder)[1] or sweep.base
    # The first cell needing a shared stage (same hash) computes it; the other cells link to it once
    # it is done, just before they run.
    owners: dict[tuple[str, str], str] = {}
    for cell, study in cells:
        for name in SHARED_STAGES:
            owners.setdefault((name, stage_hashes(study)[name]), cell.name)

    def prepare(cell: Cell, study: StudyConfig) -> Path | None:
        """Link the shared stages already done; the cell's folder, or None when it is finished."""
        cell_dir = out / "cells" / cell.name
        hashes = stage_hashes(study)
        for name in SHARED_STAGES:
            owner = owners[(name, hashes[name])]
            if owner != cell.name:
                share_stages(cell_dir, out / "cells" / owner, study, (name,))
        if is_finished(study, cell_dir):
            print(f"cell {cell.name}: finished, skipped", flush=True)
            return None
        return cell_dir

    # A cell waits for the cells that pretrain and evaluate its base model; not for the owner of its
    # data, which takes seconds to redo (a model size shares the mixture's data, not its pretraining).
    waits = {
        cell.name: {owners[(name, stage_hashes(study)[name])] for name in SHARED_STAGES[1:]} - {cell.name}
        for cell, study in cells
    }
    failed = _schedule(cells, waits, prepare, jobs, preset)
    from echochamber.report.page import build_report

    index = build_report(out)
    print(f"report: {index}", flush=True)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(cells)} cells failed ({', '.join(failed)}); rerun the sweep to resume them"
        )
    return index


def _schedule(
    cells: list[tuple[Cell, StudyConfig]],
    waits: dict[str, set[str]],
    prepare: Callable[[Cell, StudyConfig], Path | None],
    jobs: int,
    preset: str,
) -> list[str]:
    """Run each cell once the cells it waits for are over (finished or failed: a failed owner's
    dependants then compute what they cannot link), `jobs` at a time: in this process (jobs=1) or in
    a pool of fresh processes. Cells others wait for start first, then those that pretrain their own
    model, then the rest, each in sweep order: a slow pretraining (a larger model) runs beside the
    cells that share a faster one instead of holding them all back. Returns the failed names."""
    waited = {owner for owners in waits.values() for owner in owners}
    queue = sorted(cells, key=lambda item: (item[0].name not in waited, bool(waits[item[0].name])))
    over: set[str] = set()
    failed: list[str] = []

    def finish(name: str, outcome: Callable[[], Any]) -> None:
        if _failed(name, outcome):
            failed.append(name)
        over.add(name)

    def next_ready() -> tuple[Cell, StudyConfig, Path | None] | None:
        for item in queue:
            if waits[item[0].name] <= over:
                queue.remove(item)
                return item[0], item[1], prepare(*item)
        return None

    if jobs == 1:
        while (ready := next_ready()) is not None:
            cell, study, cell_dir = ready
            if cell_dir is None:
                over.add(cell.name)
            else:
                finish(cell.name, partial(_run_cell, cell.name, study, cell_dir, preset, None))
        return failed
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, one cell per process: no torch or grader state leaks between cells, and each process
    # gets its share of the cores (intra-op threads, tokenizer workers) instead of all of them.
    # Each cell's process ends with this one (a sweep killed outright leaves no cell running).
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), max_tasks_per_child=1, initializer=end_with_parent, initargs=(os.getpid(),)
    ) as pool:
        running: dict[Future[None], str] = {}
        while queue or running:
            while len(running) < jobs and (ready := next_ready()) is not None:
                cell, study, cell_dir = ready
                if cell_dir is None:
                    over.add(cell.name)
                else:
                    running[pool.submit(_run_cell, cell.name, study, cell_dir, preset, threads)] = cell.name
            if not running:
                continue  # skipped cells released their dependants (an owner precedes its dependants
                # in the sweep's order, so some cell is always ready)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(running.pop(future), future.result)
    return failed


def _failed(name: str, outcome: Callable[[], Any]) -> bool:
    try:
        outcome()
    except UserError as error:
        print(f"cell {name} failed: {error}", flush=True)
        return True
    except Exception:  # a bug in one cell: show its traceback, keep the other cells going
        print(f"cell {name} failed:\n{traceback.format_exc()}", flush=True)
        return True
    return False


def _run_cell(name: str, study: StudyConfig, cell_dir: Path, preset: str, threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        if study.mixture.workers == 0:  # 0 = one tokenizer process per core: too many beside other cells
            study = replace(study, mixture=replace(study.mixture, workers=threads))
    run_study(study, cell_dir, preset=preset, resume=True, progress=threads is None, label=f"{name} ")


def emit(
    spec: str, out: Path | None, kind: Literal["slurm", "torchrun"], overrides: list[str] | None = None
) -> Path:
    """Write the cells as cluster commands (SWEEP/slurm.sh or SWEEP/torchrun.sh) instead of running them."""
    sweep, folder = load_sweep(spec, overrides)
    out = (Path(out) if out is not None else Path("runs") / sweep.name).resolve()
    resolved = resolve_cells(sweep, folder)  # fails here, not on the cluster, if a cell is malformed
    cells = [cell for cell, _ in resolved]
    write_sweep_file(sweep, cells, out)
    config, preset = base_args(sweep, folder)
    base = ["--preset", preset] if preset is not None else [config]
    commands = [
        shlex.join(["run", *base, "--out", str(out / "cells" / cell.name), "--resume"]
                   + [arg for item in cell.overrides for arg in ("--set", item)])
        for cell in cells
    ]  # fmt: skip
    header = [
        "#!/bin/bash",
        f"# Sweep '{sweep.name}': {len(cells)} cells. When all have finished: echochamber report {shlex.quote(str(out))}",
    ]
    if kind == "slurm":
        lines = [
            *header,
            f"# Submit with: sbatch {shlex.quote(str(out / 'slurm.sh'))}  (add --partition/--time/--gres for your cluster)",
            f"#SBATCH --job-name={sweep.name}",
            f"#SBATCH --array=0-{len(cells) - 1}",
            f"#SBATCH --output={out}/logs/%a.log",
            "#SBATCH --cpus-per-task=2",
            "set -euo pipefail",
            f"cd {shlex.quote(os.getcwd())}",
            'case "$SLURM_ARRAY_TASK_ID" in',
            *(f"  {i}) exec echochamber {command} ;;" for i, command in enumerate(commands)),
            "esac",
        ]
        (out / "logs").mkdir(exist_ok=True)
    else:
        lines = [
            *header,
            "# One command per cell, each data-parallel over NPROC GPUs of one machine (default 1).",
            "set -euo pipefail",
            f"cd {shlex.quote(os.getcwd())}",
            'NPROC="${NPROC:-1}"',
            *(
                f'torchrun --standalone --nproc_per_node="$NPROC" -m echochamber.cli {command}'
                for command in commands
            ),
        ]
    script = out / f"{kind}.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def _override_key(item: str) -> str:
    """The study key a `key=value` override sets."""
    return item.split("=", 1)[0].strip()


def _value_key(value: Any) -> float | str:
    """An axis value, or a `set_for` key naming one, in one form: mapping keys arrive as strings
    ('0.0', '1e-05', 'mini'), so numbers compare as numbers and the rest as text."""
    if isinstance(value, bool):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _yaml_scalar(value: Any) -> str:
    """`value` as `--set` text that YAML reads back as the same value."""
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text:
        text = text.replace("e", ".0e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
    return text
