"""`echochamber run`: the whole study in one run folder, data -> pretrain -> eval -> RL -> eval -> report.

    RUN/
      .lock           held by the run writing the folder (checkpoint.sole_writer; pretrain/ and rl/ too)
      run.json        {"name", "preset", "algo", "config_hash", "stages": {name: {"hash", "done", "seconds"}}}
      config.yaml     the resolved StudyConfig (loadable again: `echochamber run RUN/config.yaml --out RUN`)
      shards/         mixture stage (tokenizer/, doc_map/ inside; provenance/: the index, built on first use)
      pretrain/       metrics.jsonl, checkpoints/, final/
      eval/base/<benchmark>/   results.json, generations.jsonl (the pretrained model)
      rl/             metrics.jsonl ("rl" + "eval" lines), rollouts/, final/
      eval/final/<benchmark>/  the RL policy
      report/index.html

A stage's hash is the hash of its own resolved config plus the hashes of the stages it reads
(hashes.py), so changing an RL key re-runs RL, the final evaluation and the report, never
pretraining. A stage is
skipped when run.json records it done with the same hash and its folder exists. A stage is marked
done only after it returns, so a crash never looks complete; its next run continues it with
`--resume` (each stage resumes from its own checkpoints) or refuses without it, since silently
starting over could throw away hours. Outputs recorded with another hash are deleted and redone;
folders run.json knows nothing about are never deleted.

The stages that generate (eval-base, rl, eval-final) trace what they generate back to the documents
of shards/ (`_Context.tracer`): generation rows, results and RL metrics lines carry provenance.

Under `torchrun --nproc_per_node N` pretraining, the evaluations and RL run on every rank (data-
parallel; an evaluation splits its prompts); rank 0 alone builds the data, indexes the shards,
traces, writes the evaluations' files and the report while the others wait. `make quickstart` runs
the quickstart this way: two ranks (`--procs 2`), each with half of the machine's cores.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from echochamber.config import config_hash, to_dict
from echochamber.data.shards import describe_manifest
from echochamber.errors import UserError
from echochamber.study.config import DEFAULT_PRESET, StudyConfig
from echochamber.study.hashes import stage_hashes
from echochamber.study.preflight import preflight

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
# ---------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str  # its outputs, relative to the run folder
    distributed: bool  # runs on every torchrun rank (else on rank 0 while the others wait)
    run: Callable[[StudyConfig, Path, _Context, bool], None]  # (study, run folder, context, resume)
    # Rebuilt from the other stages' outputs in seconds: a folder run.json does not record (an
    # `echochamber report RUN` during the run) is replaced instead of refused.
    derived: bool = False


@dataclass
class _Context:
    """What stages share within one pipeline run: one grader (its workers take seconds to start) and,
    on rank 0, one tracer over the run's shards (built once; the first builds the index)."""

    progress: bool
    grader_workers: int
    label: str  # prefixes what stages print: parallel sweep cells share one terminal
    stack: ExitStack = field(default_factory=ExitStack)
    _grader: Any = None
    _tracer: Any = None
    _traced: bool = False  # whether `tracer` was asked for (it may be None: said once)

    def say(self, text: str) -> None:
        print("\n".join(self.label + line for line in text.splitlines()), flush=True)

    def grader(self) -> Any:
        if self._grader is None:
            from echochamber.verify.grade import Grader

            self._grader = self.stack.enter_context(Grader(workers=self.grader_workers))
        return self._grader

    def tracer(self, run_dir: Path) -> Any:
        """The index of RUN/shards for provenance (rank 0 only). A run whose shards cannot be indexed
        (no document map and no matching spec, a full disk) still runs: it says so once, and its
        outputs carry no provenance."""
        if not self._traced:
            from echochamber.provenance.tracer import Tracer

            self._traced = True
            try:
                self._tracer = Tracer.for_path(run_dir, say=self.say)
            except UserError as error:
                self.say(f"provenance: not measured ({error})")
        return self._tracer


def _run_data(study: StudyConfig, run_dir: Path, ctx: _Context, resume: bool) -> None:
    from echochamber.data.mixture import build_shards

    if study.pretrained is not None:  # no shards: an empty folder records the stage as done
        (run_dir / "shards").mkdir(parents=True, exist_ok=True)
        ctx.say(f"data: none built, the study starts from the pretrained checkpoint {study.pretrained}")
        return

    # build_shards stages into a hidden sibling and renames it at the end; a killed build leaves one.
    for partial in run_dir.glob(".shards.partial-*"):
        shutil.rmtree(partial)
    ctx.say(describe_manifest(build_shards(study.mixture, run_dir / "shards", progress=ctx.progress)))


def _run_pretrain(study: StudyConfig, run_dir: Path, ctx: _Context, resume: bool) -> None:
    from echochamber import dist
    from echochamber.pretrain.loop import run_pretrain

    if study.pretrained is not None:  # the later stages read pretrain/final: a link to the checkpoint
        if dist.rank() == 0:  # a distributed stage: the other ranks wait at the stage's barrier
            (run_dir / "pretrain").mkdir(parents=True, exist_ok=True)
            (run_dir / "pretrain" / "final").symlink_to(Path(study.pretrained).resolve(), target_is_directory=True)
            ctx.say(f"pretrain: pretrain/final links to {Path(study.pretrained).resolve()}")
        return

    config = replace(
        study.pretrain, shards=str(run_dir / "shards"), out=str(run_dir / "pretrain"),
        progress=study.pretrain.progress and ctx.progress,
    )  # fmt: skip
    run_pretrain(config, resume=resume)


def _run_rl(study: StudyConfig, run_dir: Path, ctx: _Context, resume: bool) -> None:
    from echochamber import dist
    from echochamber.rl.core import run_rl

    config = replace(
        study.rl, policy=str(run_dir / "pretrain" / "final"), out=str(run_dir / "rl"),
        progress=study.rl.progress and ctx.progress,
    )  # fmt: skip
    # Other ranks grade their own share of each step with their own grader; rank 0 traces them all.
    rank0 = dist.rank() == 0
    run_rl(
        config, algo=study.algo, resume=resume, grader=ctx.grader() if rank0 else None,
        tracer=ctx.tracer(run_dir) if rank0 else None,
    )  # fmt: skip


def _evaluation(phase: str, checkpoint: str) -> Callable[[StudyConfig, Path, _Context, bool], None]:
    def run(study: StudyConfig, run_dir: Path, ctx: _Context, resume: bool) -> None:
        import torch

        from echochamber import dist
        from echochamber.data.tokenizer import load_tokenizer
        from echochamber.eval.suite import evaluate_benchmark, render_summary
        from echochamber.model.presets import load_model

        ckpt = run_dir / checkpoint
        model = load_model(ckpt).to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        tokenizer = load_tokenizer(ckpt)
        rank0 = dist.rank() == 0  # every rank generates its part; rank 0 traces and writes
        for benchmark in study.eval.benchmarks:
            # The suite continues from the generations already in the folder (a resumed stage).
            results = evaluate_benchmark(
                model, tokenizer, study.evaluation(benchmark), run_dir / "eval" / phase / benchmark,
                grader=ctx.grader(), progress=ctx.progress, meta={"checkpoint": str(ckpt)},
                tracer=ctx.tracer(run_dir) if rank0 else None,
            )  # fmt: skip
            if rank0:
                ctx.say(render_summary(results))

    return run


def _run_report(study: StudyConfig, run_dir: Path, ctx: _Context, resume: bool) -> None:
    from echochamber.report.page import build_report

    ctx.say(f"report: {build_report(run_dir)}")


# eval-base, rl and eval-final read shards/ too, through the context's tracer (not a stage input:
# provenance is recorded beside what they compute and changes none of it, so no hash includes it).
STAGES: tuple[Stage, ...] = (
    Stage("data", "shards", False, _run_data),
    Stage("pretrain", "pretrain", True, _run_pretrain),
    Stage("eval-base", "eval/base", True, _evaluation("base", "pretrain/final")),
    Stage("rl", "rl", True, _run_rl),
    Stage("eval-final", "eval/final", True, _evaluation("final", "rl/final")),
    Stage("report", "report", False, _run_report, derived=True),
)


# ---------------------------------------------------------------------------------------------
# The run


def plan(study: StudyConfig, run_dir: Path, *, resume: bool) -> dict[str, str]:
    """What each stage will do: "skip" (done, same hash), "resume" (interrupted) or "fresh"."""
    hashes = stage_hashes(study)
    records = read_run(run_dir).get("stages", {})
    actions = {}
    for stage in STAGES:
        record, folder = records.get(stage.name), run_dir / stage.folder
        if record is None:
            if folder.exists() and not stage.derived:
                raise UserError(
                    f"{folder} exists but {run_dir / RUN_FILE} does not record it; move it away first"
                )
            actions[stage.name] = "fresh"
        elif record.get("hash") != hashes[stage.name] or not folder.exists():
            actions[stage.name] = "fresh"
        elif record.get("done"):
            actions[stage.name] = "skip"
        elif resume:
            actions[stage.name] = "resume"
        else:
            raise UserError(
                f"stage {stage.name} of {run_dir} was interrupted; rerun with --resume to continue it "
                f"(or delete {folder} to start it over)"
            )
    return actions


def run_study(
    study: StudyConfig,
    run_dir: Path,
    *,
    preset: str | None = None,
    resume: bool = False,
    progress: bool = True,
    label: str = "",
) -> Path:
    """Run every stage that is not up to date; returns RUN/report/index.html.

    `progress` False silences the stages' progress bars (parallel sweep cells); the stage lines are
    printed anyway, prefixed with `label`.
    """
    # Here, not at the top: both import torch (seconds), which planning a run or a sweep never needs.
    from echochamber import dist
    from echochamber.checkpoint import sole_writer

    run_dir = Path(run_dir)
    # Under torchrun the process group is joined here so that pretraining and RL reuse it; the other
    # ranks wait for rank 0 (building data, evaluating) on the long-timeout group.
    process = dist.init()
    rank, barrier = process.rank, dist.wait_for_rank0
    try:
        with sole_writer(run_dir, rank):  # rank 0 holds RUN/.lock for the whole run
            actions = plan(study, run_dir, resume=resume)
            hashes = stage_hashes(study)
            barrier()  # every rank has read run.json before rank 0 writes it
            if rank == 0:
                _start_run(study, run_dir, preset, hashes, actions)
            workers = max(study.eval.workers, study.rl.rollout.grader_workers)
            ctx = _Context(progress=progress, grader_workers=workers, label=label)
            # Prompt lengths against the model's context: before the first stage that can use the
            # tokenizer (study/preflight.py says when), never when nothing is left to sample.
            checked = all(actions[name] == "skip" for name in ("pretrain", "eval-base", "rl", "eval-final"))
            with ctx.stack:
                started = time.monotonic()
                for number, stage in enumerate(STAGES, start=1):
                    if not checked:
                        checked = _check_context(study, run_dir, ctx, rank == 0)
                    head = f"{label}[{number}/{len(STAGES)}] {stage.name}"
                    action = actions[stage.name]
                    if action == "skip":
                        if rank == 0:
                            print(f"{head}: up to date, skipped", flush=True)
                        continue
                    if rank == 0:
                        print(f"{head}: {'resuming' if action == 'resume' else 'running'} "
                              f"(pipeline at {_clock(time.monotonic() - started)})", flush=True)  # fmt: skip
                        if action == "fresh":
                            _remove(run_dir / stage.folder)
                    barrier()
                    with _timed(run_dir, stage.name, hashes[stage.name], action, rank == 0) as seconds:
                        if stage.distributed or rank == 0:
                            stage.run(study, run_dir, ctx, action == "resume")
                        barrier()
                    if rank == 0:
                        print(f"{head}: done in {_clock(seconds())}", flush=True)
            return run_dir / "report" / "index.html"
    finally:
        dist.leave(process)


def _check_context(study: StudyConfig, run_dir: Path, ctx: _Context, say: bool) -> bool:
    """Run the context check if the tokenizer is known yet (every rank: it raises on every rank
    alike); whether it ran."""
    notes = preflight(study, run_dir)
    if notes is None:
        return False
    if say:
        for note in notes:
            ctx.say(f"context check: {note}")
    return True


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def is_finished(study: StudyConfig, run_dir: Path) -> bool:
    """Every stage done with the hashes of `study` (what a sweep skips)."""
    try:
        return all(action == "skip" for action in plan(study, run_dir, resume=True).values())
    except UserError:
        return False


def share_stages(run_dir: Path, source_dir: Path, study: StudyConfig, names: tuple[str, ...]) -> list[str]:
    """Link into `run_dir` the stages among `names` that `source_dir` finished with the hashes of
    `study`, and record them as done there; returns the names linked. Sweep cells that differ only
    in RL settings share data, pretraining and the base evaluation this way instead of redoing them."""
    hashes = stage_hashes(study)
    theirs = read_run(source_dir).get("stages", {})
    info = read_run(run_dir) or {"name": run_dir.name, "stages": {}}
    folders = {stage.name: stage.folder for stage in STAGES}
    linked = []
    for name in names:
        record, mine, folder = theirs.get(name) or {}, info["stages"].get(name), run_dir / folders[name]
        ready = record.get("done") and record.get("hash") == hashes[name]
        ours = mine is not None and mine.get("done") and mine.get("hash") == hashes[name]
        if not ready or ours or (mine is None and folder.exists()):
            continue  # nothing to share yet, already ours, or a folder we know nothing about (plan() refuses it)
        _remove(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.symlink_to(
            os.path.relpath(source_dir / folders[name], folder.parent), target_is_directory=True
        )
        info["stages"][name] = {**record, "shared_from": str(source_dir)}
        linked.append(name)
    if linked:
        _write_run(run_dir, info)
    return linked


def default_run_dir(config: str | None, preset: str | None) -> Path:
    name = Path(config).stem if config is not None else (preset or DEFAULT_PRESET)
    return Path("runs") / name


def _start_run(
    study: StudyConfig, run_dir: Path, preset: str | None, hashes: dict[str, str], actions: dict[str, str]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_run(run_dir)
    stages = info.get("stages", {})
    for name, action in actions.items():
        if action == "fresh" and name in stages:
            # Stale outputs stay recorded under their old hash until the stage starts over; "not
            # done" keeps the report from presenting them as current.
            stages[name]["done"] = False
    _write_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(study), sort_keys=False))
    _write_run(run_dir, {
        "name": run_dir.name, "preset": preset, "algo": study.algo, "config_hash": config_hash(study),
        "stages": {stage.name: stages[stage.name] for stage in STAGES if stage.name in stages},
    })  # fmt: skip


@contextmanager
def _timed(
    run_dir: Path, name: str, stage_hash: str, action: str, record: bool
) -> Iterator[Callable[[], float]]:
    """Record the stage as started (not done) with its hash, then done with its seconds on success.
    Seconds of an interrupted attempt are kept, so a resumed stage reports its total time."""
    before = (
        read_run(run_dir)["stages"].get(name, {}).get("seconds", 0.0)
        if action == "resume" and record
        else 0.0
    )
    started = time.monotonic()

    def seconds() -> float:
        return before + time.monotonic() - started

    def write(done: bool) -> None:
        if record:
            info = read_run(run_dir)
            info["stages"][name] = {"hash": stage_hash, "done": done, "seconds": round(seconds(), 2)}
            _write_run(run_dir, info)

    write(False)
    try:
        yield seconds
    except BaseException:
        write(False)
        raise
    write(True)


def _write_run(run_dir: Path, info: dict[str, Any]) -> None:
    order = [stage.name for stage in STAGES]
    info["stages"] = dict(sorted(info["stages"].items(), key=lambda item: order.index(item[0])))
    _write_atomic(run_dir / RUN_FILE, json.dumps(info, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove(folder: Path) -> None:
    """Delete stale outputs; renamed first so a kill mid-delete never leaves a half folder in place."""
    if folder.is_symlink():  # a stage shared from another sweep cell: only the link is ours
        folder.unlink()
    elif folder.exists():
        doomed = folder.with_name(f".deleting-{folder.name}")
        shutil.rmtree(doomed, ignore_errors=True)
        folder.rename(doomed)
        shutil.rmtree(doomed)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
