"""The study pipeline: stage skipping by hash, partial re-runs, crash + resume, config resolution.

Most tests swap the stage functions for recorders that write a file into the stage's folder, so
they test the pipeline's bookkeeping in milliseconds; `test_smoke_preset_end_to_end` runs the real
stages (the CI smoke pipeline).
"""

from __future__ import annotations

import fcntl
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from echochamber.checkpoint import LOCK_FILE
from echochamber.errors import UserError
from echochamber.runlog import read_jsonl
from echochamber.study import pipeline
from echochamber.study.config import StudyConfig, load_study
from echochamber.study.pipeline import RUN_FILE, STAGES, read_run, run_study, stage_hashes

DECLARED = (
    "[tinygsm, omi1, omi2, {name: final, priority: 60, recognise: {regex: '^Final: '}, answer: last_number}]"
)
ALL = [stage.name for stage in STAGES]


class Recorder:
    """Stage functions that log (stage, resume) and write `out.txt` (with the call number) into the
    stage's folder; `crash` names a stage whose next call fails after writing part of its output."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.crash: str | None = None

    def stage(self, stage: pipeline.Stage) -> pipeline.Stage:
        def run(study: StudyConfig, run_dir: Path, ctx: object, resume: bool) -> None:
            self.calls.append((stage.name, resume))
            folder = run_dir / stage.folder
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "partial.txt").write_text("half")
            if self.crash == stage.name:
                self.crash = None
                raise RuntimeError(f"{stage.name} died midway")
            (folder / "out.txt").write_text(str(len(self.calls)))

        return replace(stage, run=run)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(pipeline, "STAGES", tuple(rec.stage(stage) for stage in STAGES))
    return rec


def smoke(*overrides: str) -> StudyConfig:
    return load_study(preset="smoke", overrides=list(overrides))


def test_second_run_with_the_same_config_does_no_work(tmp_path: Path, recorder: Recorder) -> None:
    index = run_study(smoke(), tmp_path / "run", preset="smoke")
    assert recorder.names() == ALL
    assert index == tmp_path / "run" / "report" / "index.html"
    info = read_run(tmp_path / "run")
    assert info["name"] == "run" and info["preset"] == "smoke" and info["algo"] == "grpo"
    assert list(info["stages"]) == ALL
    assert all(s["done"] and s["hash"] == stage_hashes(smoke())[n] for n, s in info["stages"].items())
    assert all(s["seconds"] >= 0 for s in info["stages"].values())

    recorder.calls.clear()
    run_study(smoke(), tmp_path / "run")
    assert recorder.calls == []
    assert read_run(tmp_path / "run")["stages"] == info["stages"]


def test_a_changed_rl_key_reruns_only_rl_final_eval_and_report(tmp_path: Path, recorder: Recorder) -> None:
    run = tmp_path / "run"
    run_study(smoke(), run)
    (run / "rl" / "stale.txt").write_text("from the old config")
    recorder.calls.clear()

    run_study(smoke("rl.grpo.kl_coef=0.01"), run)
    assert recorder.names() == ["rl", "eval-final", "report"]
    assert not (run / "rl" / "stale.txt").exists()  # outputs of the old config are deleted first
    assert (run / "shards" / "out.txt").read_text() == "1"  # written by the first run's first call
    assert read_run(run)["stages"]["rl"]["hash"] == stage_hashes(smoke("rl.grpo.kl_coef=0.01"))["rl"]

    # The study runs GRPO: PPO's section and the knobs that only change logging are not its inputs.
    recorder.calls.clear()
    run_study(smoke("rl.grpo.kl_coef=0.01", "rl.ppo.kl_coef=0.5", "rl.progress=false", "eval.workers=1"), run)
    assert recorder.calls == []


def test_a_changed_pretrain_key_keeps_the_data_and_redoes_everything_after(
    tmp_path: Path, recorder: Recorder
) -> None:
    run_study(smoke(), tmp_path / "run")
    recorder.calls.clear()
    run_study(smoke("pretrain.lr=0.001"), tmp_path / "run")
    assert recorder.names() == ALL[1:]


def test_a_crashed_stage_resumes_and_the_stages_before_it_stay_done(
    tmp_path: Path, recorder: Recorder
) -> None:
    run = tmp_path / "run"
    recorder.crash = "pretrain"
    with pytest.raises(RuntimeError, match="died midway"):
        run_study(smoke(), run)
    stages = read_run(run)["stages"]
    assert stages["data"]["done"] and not stages["pretrain"]["done"]
    assert "rl" not in stages

    with pytest.raises(UserError, match="--resume"):
        run_study(smoke(), run)
    assert (run / "pretrain" / "partial.txt").exists()  # refusing never deletes the interrupted work

    recorder.calls.clear()
    run_study(smoke(), run, resume=True)
    assert recorder.calls == [("pretrain", True)] + [(name, False) for name in ALL[2:]]
    assert all(stage["done"] for stage in read_run(run)["stages"].values())


def test_a_crash_under_a_changed_config_starts_the_stage_over(tmp_path: Path, recorder: Recorder) -> None:
    run = tmp_path / "run"
    recorder.crash = "rl"
    with pytest.raises(RuntimeError):
        run_study(smoke(), run)
    (run / "rl" / "stale.txt").write_text("half of the old config's RL")
    recorder.calls.clear()
    # The interrupted RL ran another config: no --resume needed, and its partial output is gone.
    run_study(smoke("rl.max_steps=3"), run)
    assert recorder.calls == [("rl", False), ("eval-final", False), ("report", False)]
    assert (run / "rl" / "out.txt").exists() and not (run / "rl" / "stale.txt").exists()


def test_a_run_on_a_folder_another_run_is_writing_stops_in_one_line(tmp_path: Path, recorder: Recorder) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with (run / LOCK_FILE).open("a+") as held:  # another process's hold, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("echochamber pid 4242")
        held.flush()
        with pytest.raises(UserError, match=r"^\S+/run is being written by echochamber pid 4242; wait for it"):
            run_study(smoke(), run)
        assert recorder.calls == [] and not (run / RUN_FILE).exists()
    run_study(smoke(), run)  # released (as by a holder that ended, however it ended): the run goes ahead
    assert recorder.names() == ALL
    run_study(smoke(), run)  # and a finished run released it too
    assert recorder.names() == ALL


def test_a_deleted_stage_folder_is_redone(tmp_path: Path, recorder: Recorder) -> None:
    run_study(smoke(), tmp_path / "run")
    recorder.calls.clear()
    for child in (tmp_path / "run" / "eval" / "final").iterdir():
        child.unlink()
    (tmp_path / "run" / "eval" / "final").rmdir()
    run_study(smoke(), tmp_path / "run")
    assert recorder.names() == ["eval-final"]


def test_a_folder_run_json_does_not_know_is_refused_not_deleted(tmp_path: Path, recorder: Recorder) -> None:
    (tmp_path / "run" / "pretrain").mkdir(parents=True)
    (tmp_path / "run" / "pretrain" / "precious.txt").write_text("mine")
    with pytest.raises(UserError, match="does not record it"):
        run_study(smoke(), tmp_path / "run")
    assert recorder.calls == []
    assert (tmp_path / "run" / "pretrain" / "precious.txt").read_text() == "mine"


def test_a_report_written_mid_run_is_replaced_by_the_report_stage(tmp_path: Path, recorder: Recorder) -> None:
    (tmp_path / "run" / "report").mkdir(parents=True)  # `echochamber report RUN` before the stage ran
    (tmp_path / "run" / "report" / "index.html").write_text("early")
    run_study(smoke(), tmp_path / "run")
    assert recorder.names() == ALL
    assert not (tmp_path / "run" / "report" / "index.html").exists()  # the stand-in writes out.txt only


def test_changed_formats_redo_the_evaluations_and_rl_but_not_the_model(
    tmp_path: Path, recorder: Recorder
) -> None:
    """Formats decide labels and some answers (so rewards), never the data or the pretrained model."""
    run_study(smoke(), tmp_path / "run")
    recorder.calls.clear()
    run_study(smoke(f"formats={DECLARED}"), tmp_path / "run")
    assert recorder.names() == ["eval-base", "rl", "eval-final", "report"]
    again = load_study(tmp_path / "run" / "config.yaml")  # a declared format reloads as written
    assert again.formats == smoke(f"formats={DECLARED}").formats
    assert stage_hashes(again) == stage_hashes(smoke(f"formats={DECLARED}"))


def test_the_resolved_config_reloads_to_the_same_study(tmp_path: Path, recorder: Recorder) -> None:
    study = smoke("rl.max_steps=3", "mixture=tinygsm+4xomi1", "mixture.seed=5")
    run_study(study, tmp_path / "run")
    again = load_study(tmp_path / "run" / "config.yaml")
    assert stage_hashes(again) == stage_hashes(study)
    info = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert info["config_hash"] == pipeline.config_hash(again)


def test_a_study_whose_prompts_exceed_the_context_stops_before_pretraining(tmp_path: Path, shared_data: Path) -> None:
    """The smoke study's BPE exists only after its data stage (seconds): the check runs right after it,
    before pretraining, and names the set, the count, the budget, the context and the longest prompt."""
    run = tmp_path / "run"
    study = smoke("eval.benchmarks=[math500]", f"eval.data={shared_data}", "eval.max_new_tokens=500")
    with pytest.raises(UserError, match=r"^math500: 8 of 8 prompts \+ 500 new tokens exceed the model's context of 512 "
                                        r"\(longest \d+ tokens: test/[a-z_]+/\d+\.json\); set eval.over_context=skip"):  # fmt: skip
        run_study(study, run, progress=False)
    stages = read_run(run)["stages"]
    assert list(stages) == ["data"] and stages["data"]["done"] and not (run / "pretrain").exists()


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI smoke pipeline: every real stage (under 2 minutes on 2 cores); a second run skips it all;
    the run folder holds what benchmarks/bench_run_limits.py reads to bound each stage."""
    run = tmp_path / "smoke"
    index = run_study(smoke(), run, preset="smoke", progress=False)
    assert index.is_file() and "<html" in index.read_text().lower()
    assert all(stage["done"] for stage in read_run(run)["stages"].values())
    for phase in ("base", "final"):
        for benchmark in ("world-test", "world-hard"):
            results = json.loads((run / "eval" / phase / benchmark / "results.json").read_text())
            assert results["n_prompts"] == 8
            assert (run / "eval" / phase / benchmark / "generations.jsonl").is_file()
            # Traced against the run's own shards: 8 prompts x (1 greedy + 2 sampled).
            assert results["greedy"]["provenance"]["generations"] == 8
            assert set(results["sampled"]["provenance"]["source_share"]) == {"tinygsm", "omi1", "omi2"}
    lines = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["stage"] == "rl"] == [1, 2]
    assert all(line["provenance"]["generations"] == 16 for line in lines if line["stage"] == "rl")
    assert (run / "pretrain" / "final" / "config.json").is_file() and (run / "shards" / "tokenizer").is_dir()

    _check_run_limits(run, capsys, monkeypatch)

    recorded = read_run(run)
    capsys.readouterr()
    run_study(smoke(), run, progress=False)
    said = capsys.readouterr().out
    assert said.count("up to date, skipped") == len(recorded["stages"]) and "running" not in said
    assert read_run(run)["stages"] == recorded["stages"]  # no stage redone, none re-timed


def _check_run_limits(run: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_run_limits counts the run's real work (8 prompts: 8 greedy rows, 2 x 8 sampled) and
    bounds every model stage below what it took (the smoke stages are mostly overhead)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_run_limits

    folder = run / "eval" / "base" / "world-test"
    prompts = {p["id"]: 1 for p in read_jsonl(folder / "prompts.jsonl")[0]}
    work = bench_run_limits.generation_work(read_jsonl(folder / "generations.jsonl")[0], prompts)
    assert sorted((w["rows"], w["prompts"]) for w in work) == [(8, 8), (16, 8)]
    monkeypatch.setattr(sys, "argv", ["bench_run_limits.py", str(run), "--procs", "1"])
    capsys.readouterr()
    bench_run_limits.main()
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()}
    for stage in ("pretrain", "eval-base", "rl", "eval-final"):
        measured, bound = float(rows[stage][1]), float(rows[stage][2])
        assert 0 < bound < measured, (stage, measured, bound)
    assert rows["report"][2] == "(not"
