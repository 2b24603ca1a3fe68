"""Sweeps: grid expansion, cell names, exclude rules, shared stages, skip/resume, --emit scripts."""

from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from echochamber.errors import UserError
from echochamber.study import pipeline
from echochamber.study.config import StudyConfig, load_study
from echochamber.study.pipeline import STAGES, read_run, stage_hashes
from echochamber.study.sweep import (
    SEED_KEYS,
    cell_name,
    emit,
    expand,
    load_sweep,
    resolve_cells,
    run_sweep,
)


def write_sweep(folder: Path, **fields: object) -> Path:
    spec = {"name": "mini", "base": "smoke", "axes": {"algo": ["ppo", "grpo"]}, "seeds": [0, 1], **fields}
    path = folder / "mini.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # axis order matters
    return path


def test_expansion_crosses_axes_then_seeds_and_drops_excluded_cells(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        axes={
            "mixture": ["tinygsm+omi1+omi2", "tinygsm+4xomi1"],
            "algo": ["ppo", "grpo", "ei"],
            "kl": [0.001, 1e-5],
        },
        keys={"kl": ["rl.ppo.kl_coef", "rl.grpo.kl_coef"]},
        exclude=[{"algo": "ei", "kl": 1e-5}],
        set=["rl.max_steps=1"],
    )
    sweep, _ = load_sweep(str(path))
    cells = expand(sweep)
    assert len(cells) == 2 * (3 * 2 - 1) * 2
    first = cells[0]
    assert first.params == {"mixture": "tinygsm+omi1+omi2", "algo": "ppo", "kl": 0.001, "seed": 0}
    assert first.name == "mixture-tinygsm+omi1+omi2_algo-ppo_kl-0.001_seed-0"
    assert first.overrides == [
        "mixture=tinygsm+omi1+omi2", "algo=ppo", "rl.ppo.kl_coef=0.001", "rl.grpo.kl_coef=0.001",
        *(f"{key}=0" for key in SEED_KEYS), "rl.max_steps=1",
    ]  # fmt: skip
    assert cells[1].params["seed"] == 1  # seeds vary fastest
    assert not any(c.params["algo"] == "ei" and c.params["kl"] == 1e-5 for c in cells)
    assert len({c.name for c in cells}) == len(cells)
    # Every value reaches the study with its type (1e-05 must not become the string "1e-05").
    studies = dict((cell.name, study) for cell, study in resolve_cells(sweep, tmp_path))
    study = studies["mixture-tinygsm+4xomi1_algo-grpo_kl-1e-05_seed-1"]
    assert study.rl.grpo.kl_coef == 1e-5 and study.algo == "grpo" and study.rl.max_steps == 1
    assert study.mixture.seed == study.pretrain.seed == study.rl.seed == 1 and study.world.seed == 0


def test_cells_that_compute_the_same_study_must_be_excluded(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, axes={"algo": ["ei"], "kl": [0.001, 0.01]}, keys={"kl": ["rl.ppo.kl_coef"]})
    sweep, folder = load_sweep(str(path))
    with pytest.raises(UserError, match="same study; add an exclude rule"):
        resolve_cells(sweep, folder)


def test_cell_names_are_folder_safe_and_collisions_are_refused(tmp_path: Path) -> None:
    assert cell_name({"rl.ppo.lr": 1e-06, "mixture": "a b/c", "seed": 2}) == "lr-1e-06_mixture-a-b-c_seed-2"
    path = write_sweep(tmp_path, axes={"rl.prompts.path": ["data/a.jsonl", "data-a.jsonl"]})
    with pytest.raises(UserError, match="both named"):
        expand(load_sweep(str(path))[0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"axes": {"seed": [1, 2]}}, "use seeds"),
        ({"axes": {"algo": []}}, "distinct values"),
        ({"keys": {"kl": ["rl.ppo.kl_coef"]}}, "not an axis"),
        ({"exclude": [{"model": "tiny"}]}, "must match on axes"),
        ({"seeds": [0, 0]}, "distinct integers"),
        ({"base": "no-such-study"}, "no-such-study"),
        ({"axes": {"rl.ppo.kl_coeff": [0.1]}}, "rl.ppo.kl_coeff"),
        ({"set": ["algo=ei"]}, "'algo=ei' sets a key an axis"),
        ({"set": ["rl.seed=3"]}, "an axis \\(or the seed\\)"),
        ({"set_for": {"model": {"mini": ["pretrain.lr=0.001"]}}}, "set_for: 'model' is not an axis"),
        ({"set_for": {"algo": {"reinforce": ["pretrain.lr=0.001"]}}}, "no value 'reinforce' \\(values: ppo, grpo\\)"),
        ({"set_for": {"algo": {"ppo": ["rl.seed=3"]}}}, "'rl.seed=3' must be key=value on a key no axis"),
        ({"set_for": {"algo": {"ppo": ["pretrain.lr"]}}}, "'pretrain.lr' must be key=value"),
    ],
)
def test_bad_sweeps_fail_with_one_clear_line(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep, folder = load_sweep(str(write_sweep(tmp_path, **fields)))
        resolve_cells(sweep, folder)


def test_grids_give_each_finding_its_cells_with_the_other_axes_at_their_first_value(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        axes={"algo": ["grpo", "ppo", "ei"], "kl": [0.001, 0.0, 0.1]},
        keys={"kl": ["rl.ppo.kl_coef", "rl.grpo.kl_coef"]},
        grids=[{"algo": ["grpo", "ppo", "ei"]}, {"algo": ["ppo"], "kl": [0.001, 0.1]}],
        seeds=[0],
    )
    cells = expand(load_sweep(str(path))[0])
    # The PPO cell at the default KL is in both grids: counted once. KL 0 is in no grid: no cell.
    assert [(c.params["algo"], c.params["kl"]) for c in cells] == [
        ("grpo", 0.001), ("ppo", 0.001), ("ei", 0.001), ("ppo", 0.1)
    ]  # fmt: skip


@pytest.mark.parametrize("grids", [[{"model": ["tiny"]}], [{"algo": ["reinforce"]}], [{"algo": []}], [{}]])
def test_a_grid_outside_the_axes_fails_with_one_clear_line(tmp_path: Path, grids: list) -> None:
    with pytest.raises(UserError, match="grids entry .* must list values of the axes \\(algo\\)"):
        load_sweep(str(write_sweep(tmp_path, grids=grids)))


def test_set_reaches_every_cell_after_an_axis_that_replaces_its_section(tmp_path: Path) -> None:
    """A `mixture` axis replaces the whole mixture section; `set: [mixture.val_docs=5]` still holds."""
    path = write_sweep(tmp_path, axes={"mixture": ["tinygsm", "tinygsm+4xomi1"]}, seeds=[0], set=["mixture.val_docs=5"])
    sweep, folder = load_sweep(str(path))
    assert [study.mixture.val_docs for _, study in resolve_cells(sweep, folder)] == [5, 5]


def test_set_for_reaches_only_the_cells_with_that_value_and_wins_over_set(tmp_path: Path) -> None:
    """A larger model trains at its own learning rate while the axis still names only the model."""
    path = write_sweep(
        tmp_path,
        axes={"model": ["tiny", "mini"], "kl": [0.001, 0.0]},
        keys={"model": ["pretrain.model"], "kl": ["rl.ppo.kl_coef", "rl.grpo.kl_coef"]},
        seeds=[0],
        set=["pretrain.lr=1.0e-3"],
        set_for={"model": {"mini": ["pretrain.lr=3.0e-4"]}, "kl": {0.0: ["rl.max_steps=3"]}},
    )
    sweep, folder = load_sweep(str(path))
    studies = {cell.name: study for cell, study in resolve_cells(sweep, folder)}
    assert {name: (s.pretrain.model, s.pretrain.lr) for name, s in studies.items()} == {
        "model-tiny_kl-0.001_seed-0": ("tiny", 1e-3), "model-tiny_kl-0_seed-0": ("tiny", 1e-3),
        "model-mini_kl-0.001_seed-0": ("mini", 3e-4), "model-mini_kl-0_seed-0": ("mini", 3e-4),
    }  # fmt: skip
    default_steps = studies["model-tiny_kl-0.001_seed-0"].rl.max_steps
    assert default_steps != 3
    assert [s.rl.max_steps for s in studies.values()] == [default_steps, 3, default_steps, 3]
    # A cluster sweep gets the same studies: the emitted commands carry the per-value overrides.
    script = emit(str(path), tmp_path / "out", "slurm").read_text()
    assert script.count("pretrain.lr=3.0e-4") == 2 and script.count("rl.max_steps=3") == 2


def test_the_paper_cpu_sweep_tests_each_finding_with_three_seeds_on_shared_pretraining() -> None:
    sweep, folder = load_sweep("paper-cpu")
    cells = resolve_cells(sweep, folder)
    assert len(cells) == 9 * 3
    settings: dict[tuple, list[int]] = {}
    for cell, _ in cells:
        settings.setdefault(tuple(v for k, v in cell.params.items() if k != "seed"), []).append(
            cell.params["seed"]
        )
    assert all(seeds == [0, 1, 2] for seeds in settings.values())
    even, paper = "tinygsm+omi1+omi2-even", "tinygsm+omi1+omi2"
    assert sorted(settings) == sorted([
        ("tiny", even, "grpo", 0.001, 600), ("tiny", even, "ei", 0.001, 600),
        ("tiny", even, "ppo", 0.001, 600), *(("tiny", even, "grpo", kl, 600) for kl in (0.0, 0.01, 0.1)),  # KL dose
        ("tiny", paper, "grpo", 0.001, 600),  # mixture flip
        ("tiny", paper, "grpo", 0.001, 800), ("mini", paper, "grpo", 0.001, 800),  # model size
    ])  # fmt: skip
    # Algorithm and KL only change RL: (tiny on 2 mixtures at 600 steps, tiny and mini at 800) x 3 seeds.
    assert len({stage_hashes(study)["pretrain"] for _, study in cells}) == 12
    # Each size at its own learning rate (no one rate suits both widths; docs/model-size.md); the
    # sizes at one token budget, longer than the quickstart's (tiny's seeds learn the task late).
    assert {(study.pretrain.model, study.pretrain.lr) for _, study in cells} == {("tiny", 6e-3), ("mini", 3e-3)}
    assert {
        (c.params["model"], study.pretrain.max_steps) for c, study in cells if c.params["mixture"] == paper
    } == {("tiny", 600), ("tiny", 800), ("mini", 800)}
    assert all(study.rl.eval_every == 5 for _, study in cells)  # the collapse's timing resolution
    assert all((study.eval.n, study.eval.limit) == (64, 32) for _, study in cells)  # pass@k to k = 64
    # Every cell pretrains on the quickstart's ladder and evaluates every rung: transfer per rung.
    assert all([rung.steps for rung in study.world.ladder] == [2, 3] for _, study in cells)
    assert all(
        {"world-test", "world-2step", "world-3step", "world-hard"} <= set(study.eval.benchmarks)
        for _, study in cells
    )


class Recorder:
    """Stage stand-ins (this process only) that log (cell, stage, resume) and can crash once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.crash: tuple[str, str] | None = None  # (cell name, stage)
        self.slow: tuple[str, str] | None = None  # (cell name, stage) that takes a second

    def stage(self, stage: pipeline.Stage) -> pipeline.Stage:
        def run(study: StudyConfig, run_dir: Path, ctx: object, resume: bool) -> None:
            self.calls.append((run_dir.name, stage.name, resume))
            if self.slow == (run_dir.name, stage.name):
                time.sleep(1.0)
            (run_dir / stage.folder).mkdir(parents=True, exist_ok=True)
            if self.crash == (run_dir.name, stage.name):
                self.crash = None
                raise RuntimeError("killed")
            (run_dir / stage.folder / "out.txt").write_text(run_dir.name)

        return replace(stage, run=run)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(pipeline, "STAGES", tuple(rec.stage(stage) for stage in STAGES))
    monkeypatch.setattr(
        "echochamber.report.page.build_report", lambda path: Path(path) / "report" / "index.html"
    )
    return rec


def test_a_sweep_shares_pretraining_skips_finished_cells_and_resumes_failed_ones(
    tmp_path: Path, recorder: Recorder
) -> None:
    out = tmp_path / "sweep"
    recorder.crash = ("algo-grpo_seed-1", "rl")
    with pytest.raises(UserError, match="1 of 4 cells failed"):
        run_sweep(str(write_sweep(tmp_path)), out)
    info = json.loads((out / "sweep.json").read_text())
    assert info["axes"] == {"algo": ["ppo", "grpo"], "seed": [0, 1]}
    names = [cell["name"] for cell in info["cells"]]
    assert names == ["algo-ppo_seed-0", "algo-ppo_seed-1", "algo-grpo_seed-0", "algo-grpo_seed-1"]
    assert all(cell["dir"] == f"cells/{cell['name']}" for cell in info["cells"])

    # Each seed pretrains once; the GRPO cells link to the PPO cells' data, model and base evaluation.
    ran = {(cell, stage) for cell, stage, _ in recorder.calls}
    for seed in (0, 1):
        assert (f"algo-ppo_seed-{seed}", "pretrain") in ran and (
            f"algo-grpo_seed-{seed}",
            "pretrain",
        ) not in ran
        linked = out / "cells" / f"algo-grpo_seed-{seed}" / "pretrain"
        assert linked.is_symlink() and (linked / "out.txt").read_text() == f"algo-ppo_seed-{seed}"
        assert read_run(linked.parent)["stages"]["eval-base"]["done"]
    assert not read_run(out / "cells" / "algo-grpo_seed-1")["stages"]["rl"]["done"]

    recorder.calls.clear()
    run_sweep(str(write_sweep(tmp_path)), out)
    assert recorder.calls == [
        ("algo-grpo_seed-1", "rl", True), ("algo-grpo_seed-1", "eval-final", False),
        ("algo-grpo_seed-1", "report", False),
    ]  # fmt: skip


def emitted_commands(script: Path, prefix: str) -> list[list[str]]:
    return [
        shlex.split(line.split(prefix, 1)[1].removesuffix(" ;;"))
        for line in script.read_text().splitlines()
        if prefix in line
    ]


def test_a_slow_pretraining_does_not_hold_back_the_cells_that_share_another(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--jobs 2: the cells others wait for and those that pretrain their own model (a larger size,
    here another lr) start first; a cell that links to a finished owner starts while the slow
    pretraining still runs, never before its own owner is over. (Threads stand in for the processes.)"""
    monkeypatch.setattr(
        "echochamber.study.sweep.ProcessPoolExecutor", lambda jobs, **_: ThreadPoolExecutor(jobs)
    )
    monkeypatch.setattr("echochamber.study.sweep._run_cell", lambda name, study, cell_dir, preset, threads:
                        pipeline.run_study(study, cell_dir, preset=preset, resume=True, progress=False))  # fmt: skip
    path = write_sweep(
        tmp_path,
        axes={"algo": ["ppo", "grpo"], "pretrain.lr": [0.001, 0.002]},
        grids=[{"algo": ["ppo", "grpo"]}, {"pretrain.lr": [0.002]}],
        seeds=[0],
    )
    owner, slow, linked = "algo-ppo_lr-0.001_seed-0", "algo-ppo_lr-0.002_seed-0", "algo-grpo_lr-0.001_seed-0"
    recorder.slow = (slow, "pretrain")
    run_sweep(str(path), tmp_path / "sweep", jobs=2)
    calls = [(cell, stage) for cell, stage, _ in recorder.calls]
    first = {
        cell: calls.index(next(call for call in calls if call[0] == cell)) for cell in (owner, slow, linked)
    }
    assert first[linked] > calls.index((owner, "report"))  # after its owner is over
    assert first[linked] < calls.index((slow, "eval-base"))  # while the slow pretraining runs
    assert (linked, "pretrain") not in calls  # linked, not redone


def test_emit_slurm_writes_an_array_job_whose_commands_rebuild_each_cell(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, axes={"algo": ["ppo", "grpo"], "rl.grpo.lr": [1e-5]})
    script = emit(str(path), tmp_path / "sweep", "slurm")
    text = script.read_text()
    assert script == tmp_path / "sweep" / "slurm.sh" and text.startswith("#!/bin/bash")
    assert "#SBATCH --array=0-3" in text and "#SBATCH --job-name=mini" in text
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["name"] == "mini"
    sweep, folder = load_sweep(str(path))
    cells = resolve_cells(sweep, folder)
    commands = emitted_commands(script, "exec echochamber ")
    assert len(commands) == len(cells)
    for (cell, study), argv in zip(cells, commands, strict=True):
        assert argv[:3] == ["run", "--preset", "smoke"] and "--resume" in argv
        assert argv[argv.index("--out") + 1] == str(tmp_path / "sweep" / "cells" / cell.name)
        overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
        assert stage_hashes(load_study(preset="smoke", overrides=overrides)) == stage_hashes(study)


def test_emit_torchrun_writes_one_command_per_cell(tmp_path: Path) -> None:
    script = emit(str(write_sweep(tmp_path)), tmp_path / "sweep", "torchrun")
    commands = emitted_commands(script, "-m echochamber.cli ")
    assert len(commands) == 4 and all(argv[0] == "run" for argv in commands)
    assert script.read_text().count("torchrun --standalone") == 4


@pytest.mark.slow
def test_a_real_sweep_runs_cells_in_parallel_processes_and_reports(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, axes={"algo": ["grpo"]}, seeds=[0, 1], set=["rl.max_steps=1", "rl.eval_every=0"]
    )
    index = run_sweep(str(path), tmp_path / "sweep", jobs=2)
    assert index == tmp_path / "sweep" / "report" / "index.html" and index.is_file()
    for seed in (0, 1):
        stages = read_run(tmp_path / "sweep" / "cells" / f"algo-grpo_seed-{seed}")["stages"]
        assert all(stage["done"] for stage in stages.values()) and len(stages) == len(STAGES)
    assert "algo-grpo_seed-1" in index.read_text()
