"""The paper presets (one study per mixture of Echo Chamber, 150M and 1B) resolve to the paper's
settings, run end to end on the CPU with tiny overrides and local stand-ins for the hub datasets, and
start from a pretrained checkpoint instead of pretraining when told to."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from echochamber.cli import main
from echochamber.errors import UserError
from echochamber.runlog import read_metrics
from echochamber.study.config import STUDY_PRESETS, load_study
from echochamber.study.hashes import stage_hashes
from echochamber.study.pipeline import read_run, run_study, share_stages
from echochamber.study.sweep import SHARED_STAGES, emit

PAPER_PRESETS = [name for name in STUDY_PRESETS if name.startswith("paper-")]
BENCHMARKS = ["gsm8k", "math500", "aime"]


def tiny_overrides(shared_data: Path, fixtures: Path, tokenizer: Path) -> list[str]:
    """A paper preset at CPU size: the tiny model, a few steps, a handful of prompts, short generations,
    and local stand-ins for every hub dataset (the lines docs/paper-scale.md shows)."""
    sources = fixtures / "sources"
    return [
        f"mixture.paths.tinygsm={sources / 'tinygsm.jsonl'}", f"mixture.paths.omi1={sources / 'omi1.parquet'}",
        f"mixture.paths.omi2={shared_data / 'samples' / 'omi2.jsonl'}", f"mixture.paths.finemath={sources / 'finemath.parquet'}",
        f"mixture.paths.algebraic-stack={sources / 'algebraic_stack.jsonl'}",
        f"mixture.paths.metamathqa={sources / 'metamathqa.json'}", f"mixture.tokenizer.path={tokenizer}",
        "mixture.val_docs=1", "mixture.workers=1",
        "pretrain.model=tiny", "pretrain.seq_len=128", "pretrain.batch_size=4", "pretrain.micro_batch_size=4",
        "pretrain.max_steps=2", "pretrain.warmup_steps=1", "pretrain.eval_every=2", "pretrain.eval_batches=1",
        "pretrain.tensorboard=false", "pretrain.parallel=ddp",  # one process: the 1B presets' FSDP changes nothing
        f"rl.prompts.path={shared_data / 'gsm8k' / 'train.jsonl'}", "rl.prompts.limit=4",
        "rl.rollout.prompts_per_step=2", "rl.rollout.samples_per_prompt=2", "rl.rollout.max_new_tokens=8",
        "rl.rollout.grader_workers=1", "rl.rollout.batch_size=8", "rl.max_steps=1", "rl.eval_every=0",
        "rl.micro_batch_size=4", "rl.tensorboard=false",
        f"eval.data={shared_data}", "eval.limit=2", "eval.n=2", "eval.max_new_tokens=8", "eval.batch_size=8",
        "eval.workers=1",
    ]  # fmt: skip


def test_there_is_one_paper_preset_per_mixture_of_the_paper() -> None:
    mixtures_150m = ["tinygsm", "2xtinygsm", "4xtinygsm", "8xtinygsm", "tinygsm+omi1", "tinygsm+2xomi1",
                     "tinygsm+4xomi1", "tinygsm+8xomi1", "tinygsm+omi2", "tinygsm+omi1+omi2"]  # fmt: skip
    mixtures_1b = ["tinygsm", "tinygsm+4xomi1", "tinygsm+omi2", "omi2+metamathqa", "tinygsm+omi1+omi2"]
    expected = [f"paper-150m-{m}" for m in mixtures_150m] + [f"paper-1b-{m}" for m in mixtures_1b]
    assert sorted(PAPER_PRESETS) == sorted(expected)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_a_paper_preset_holds_the_papers_settings(preset: str) -> None:
    study = load_study(preset=preset)
    size = preset.split("-")[1]
    mixture = preset.removeprefix(f"paper-{size}-")
    pretrain, rl, evaluation = study.pretrain, study.rl, study.eval
    assert (pretrain.model, pretrain.seq_len, pretrain.batch_size, pretrain.lr, pretrain.weight_decay) == (size, 2048, 512, 1e-3, 0.1)
    assert (pretrain.warmup_steps, pretrain.min_lr_ratio, pretrain.epochs, pretrain.max_steps) == (5000, 0.1, 1.0, None)
    assert study.mixture.tokenizer.path == "meta-llama/Llama-2-7b-hf"
    labels = [source.label for source in study.mixture.sources]
    assert labels[:2] == ["finemath", "algebraic-stack"] and all(s.hub for s in study.mixture.sources)
    assert "+".join(f"{s.repeat:g}x{s.label}" if s.repeat else s.label for s in study.mixture.sources[2:]) == mixture
    assert (rl.prompts.dataset, rl.rollout.prompts_per_step, rl.rollout.samples_per_prompt) == ("gsm8k", 64, 8)
    assert (rl.rollout.temperature, rl.rollout.max_new_tokens, rl.ppo.lr, rl.ppo.critic_lr) == (0.7, 1024, 1e-6, 7e-6)
    assert rl.ppo.minibatches == rl.grpo.minibatches == rl.reinforce.minibatches == 8  # train_batch_size 64
    assert (rl.epochs, rl.ppo.kl_coef, rl.ei.rounds) == (10.0, 1e-3, 3 if size == "150m" else 2)
    assert evaluation.benchmarks == BENCHMARKS and (evaluation.n, evaluation.temperature, evaluation.top_p) == (64, 0.7, 0.95)
    assert evaluation.max_new_tokens == 2048 and evaluation.over_context == "shorten"
    # The 1B sweep holds the OMI2 + MetaMathQA mixture: every 1B preset tracks MetaMathQA, so its cells
    # share one registry (and that cell resolves at all: an untracked source format is refused).
    tracked = ["tinygsm", "omi1", "omi2", *(["metamathqa"] if size == "1b" else [])]
    assert study.formats == tracked


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Where the presets' runs go, and the runs done so far (later presets link their shared stages)."""
    return tmp_path_factory.mktemp("paper-presets"), []


@pytest.mark.slow
@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_each_paper_preset_runs_end_to_end_on_local_stand_ins(
    preset, finished, shared_data, fixtures_dir, llama_tokenizer
) -> None:
    """data -> pretrain -> eval -> RL -> eval -> report at tiny size. Presets whose data, pretraining
    and base evaluation come out the same after the overrides (a 150M and a 1B preset of one mixture)
    share them, as a sweep's cells do; each still runs its own RL, final evaluation and report."""
    root, runs = finished
    study = load_study(preset=preset, overrides=tiny_overrides(shared_data, fixtures_dir, llama_tokenizer))
    run = root / preset
    for other in runs:
        share_stages(run, other, study, SHARED_STAGES)
    run_study(study, run, preset=preset, progress=False)
    runs.append(run)

    info = read_run(run)
    assert all(stage["done"] for stage in info["stages"].values()) and len(info["stages"]) == 6
    assert {name: record["hash"] for name, record in info["stages"].items()} == stage_hashes(study)
    manifest = json.loads((run / "shards" / "manifest.json").read_text())
    assert manifest["vocab_size"] == 32000 and manifest["eos_token_id"] == 2  # Llama-2's, </s>
    assert list(manifest["sources"]) == [source.label for source in study.mixture.sources]
    assert all(stats["tokens"] > 0 for stats in manifest["sources"].values())
    for phase in ("base", "final"):
        for benchmark in BENCHMARKS:
            results = json.loads((run / "eval" / phase / benchmark / "results.json").read_text())
            assert results["n_prompts"] + results["context"]["skipped"] == 2
    [line] = read_metrics(run / "rl" / "metrics.jsonl", "rl")
    assert line["algo"] == "ppo" and line["n_samples"] == 4
    assert (run / "report" / "index.html").is_file()


@pytest.mark.slow
def test_a_paper_preset_starts_from_a_pretrained_checkpoint(
    shared_data, fixtures_dir, llama_tokenizer, paper_checkpoints, tmp_path
) -> None:
    """`pretrained` stands in for the data and pretraining stages: pretrain/final links to the
    checkpoint, which the base evaluation and RL read; its context and tokenizer are checked first."""
    checkpoint = paper_checkpoints("tiny")
    overrides = [*tiny_overrides(shared_data, fixtures_dir, llama_tokenizer), f"pretrained={checkpoint}"]
    study = load_study(preset="paper-1b-omi2+metamathqa", overrides=overrides)
    run = tmp_path / "run"
    run_study(study, run, progress=False)
    assert (run / "pretrain" / "final").resolve() == checkpoint.resolve()
    assert not list((run / "shards").iterdir()) and not (run / "pretrain" / "metrics.jsonl").exists()
    results = json.loads((run / "eval" / "base" / "gsm8k" / "results.json").read_text())
    assert results["checkpoint"] == str(run / "pretrain" / "final") and results["context"]["context"] == 512
    # The checkpoint is the identity of the data and pretraining: the mixture no longer matters ...
    other_mixture = load_study(preset="paper-1b-tinygsm", overrides=overrides)
    assert stage_hashes(other_mixture)["pretrain"] == stage_hashes(study)["pretrain"]
    # ... and another checkpoint is another study.
    elsewhere = load_study(preset="paper-1b-omi2+metamathqa", overrides=[*overrides[:-1], f"pretrained={llama_tokenizer}"])
    assert stage_hashes(elsewhere)["pretrain"] != stage_hashes(study)["pretrain"]


def test_a_missing_pretrained_checkpoint_stops_the_study_before_any_stage(tmp_path: Path) -> None:
    study = load_study(preset="paper-150m-tinygsm", overrides=[f"pretrained={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match=r"nope is not a Hugging Face model folder \(no config.json\)"):
        run_study(study, tmp_path / "run", progress=False)
    assert read_run(tmp_path / "run")["stages"] == {}


def test_the_paper_sweeps_cover_every_mixture_algorithm_and_kl(tmp_path: Path) -> None:
    for name, mixtures in (("paper-150m", 10), ("paper-1b", 5)):
        script = emit(name, tmp_path / name, "slurm")
        commands = [line for line in script.read_text().splitlines() if "exec echochamber run" in line]
        assert len(commands) == mixtures * 10  # x (3 algorithms x 3 KL + EI)
        assert f"#SBATCH --array=0-{mixtures * 10 - 1}" in script.read_text()


@pytest.mark.slow
def test_a_command_the_paper_sweep_emits_runs(tmp_path, shared_data, fixtures_dir, llama_tokenizer) -> None:
    """`echochamber sweep paper-150m --emit slurm` with the tiny overrides for every cell; one emitted
    command (REINFORCE at KL 0.01 on TinyGSM + OMI2) run as the cluster would run it."""
    tiny = tiny_overrides(shared_data, fixtures_dir, llama_tokenizer)
    script = emit("paper-150m", tmp_path / "sweep", "slurm", ["set=" + json.dumps(tiny)])
    prefix = "exec echochamber "
    commands = [shlex.split(line.split(prefix, 1)[1].removesuffix(" ;;")) for line in script.read_text().splitlines() if prefix in line]
    name = "mixture-real-tinygsm+omi2_algo-reinforce_kl-0.01_seed-0"
    [argv] = [argv for argv in commands if argv[argv.index("--out") + 1].endswith(name)]
    assert main(argv) == 0
    cell = tmp_path / "sweep" / "cells" / name
    [line] = read_metrics(cell / "rl" / "metrics.jsonl", "rl")
    assert line["algo"] == "reinforce" and (cell / "report" / "index.html").is_file()
    assert yaml.safe_load((cell / "rl" / "config.yaml").read_text())["reinforce"]["kl_coef"] == 0.01
    assert [source["dataset"] for source in yaml.safe_load((cell / "config.yaml").read_text())["mixture"]["sources"]][2:] == ["tinygsm", "omi2"]
