"""The pretraining loop: schedule, data order, a tiny end-to-end run, resume after SIGKILL, DDP, bad input.

Shards are written by `write_shards` in the mixture stage's layout (manifest.json, train.bin,
val/<source>.bin, tokenizer/), so these tests do not depend on the mixture module's internals. The
token stream is learnable (each document counts up from a random start by a random stride), so a
falling loss means the loop really trains.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from echochamber import dist
from echochamber.checkpoint import LOCK_FILE, STATE_FILE
from echochamber.cli import main
from echochamber.config import load_config, to_dict
from echochamber.errors import UserError
from echochamber.model.precision import resolve_dtype
from echochamber.pretrain.config import PretrainConfig
from echochamber.pretrain.loop import _rank_batches, run_pretrain
from echochamber.runlog import read_metrics

VOCAB = 320


def write_shards(folder: Path, *, vocab_size: int = VOCAB, train_docs: int = 600, seed: int = 0) -> Path:
    """A shards folder in the mixture stage's layout, with a real HF tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    eos, pad = vocab_size - 2, vocab_size - 1

    def documents(n: int) -> np.ndarray:
        docs = []
        for _ in range(n):
            start, stride, length = rng.integers(0, 200), rng.integers(1, 4), rng.integers(8, 40)
            docs.append(np.append((start + stride * np.arange(length)) % 200, eos))
        return np.concatenate(docs).astype(np.uint16)

    folder.mkdir(parents=True)
    (folder / "val").mkdir()
    train = documents(train_docs)
    train.tofile(folder / "train.bin")
    sources = {}
    for source in ("tinygsm", "omi2"):
        val = documents(20)
        val.tofile(folder / "val" / f"{source}.bin")
        sources[source] = {"documents": train_docs // 2, "tokens": len(train) // 2, "repeat": 1.0,
                           "val_documents": 20, "val_tokens": len(val)}  # fmt: skip
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(["1 + 2 = 3", "def simple_math_problem() -> int:"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tokenizer.save_pretrained(folder / "tokenizer")
    manifest = {
        "dtype": "uint16", "vocab_size": vocab_size, "eos_token_id": eos, "pad_token_id": pad,
        "train_tokens": len(train), "sources": sources, "tokenizer_hash": f"tok{vocab_size}",
        "spec_hash": f"spec{seed}", "seed": seed, "version": "test",
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder




@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards") / "mix")


def tiny_config(shards: Path, out: Path, **overrides: object) -> PretrainConfig:
    values: dict[str, object] = dict(
        shards=str(shards), out=str(out), model="tiny", seq_len=32, batch_size=8, micro_batch_size=4,
        max_steps=12, warmup_steps=3, eval_every=4, eval_batches=1, checkpoint_every=4,
        keep_checkpoints=10, tensorboard=False, progress=False, lr=3e-3,
        dtype="float32",  # "auto" would be bfloat16 on some CPUs only: these tests compare float32 runs
    )  # fmt: skip
    values.update(overrides)
    return load_config(PretrainConfig, base=values)


def losses(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(out / "metrics.jsonl", "pretrain")}


# --- end to end --------------------------------------------------------------------------------


def test_tiny_run_trains_logs_and_writes_a_loadable_model(shards, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    config = tiny_config(shards, out, max_steps=24, eval_every=12, checkpoint_every=8, keep_checkpoints=2,
                         tensorboard=True)  # fmt: skip
    final = run_pretrain(config)
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 25))
    assert all(row["stage"] == "pretrain" for row in rows)
    assert rows[-1]["tokens"] == 24 * 8 * 32
    assert rows[0]["lr"] == pytest.approx(1e-3)  # warm-up step 1 of 3 at peak 3e-3
    assert {"val_loss/tinygsm", "val_loss/omi2", "val_loss"} <= set(rows[11]) and "val_loss" not in rows[10]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # the counting pattern is learnable
    assert rows[-1]["val_loss"] < rows[11]["val_loss"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_16", "step_24"]
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 24
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == VOCAB and tokenizer.eos_token == "<|endoftext|>"
    with pytest.raises(UserError, match="already holds a pretraining run"):
        run_pretrain(config)


def test_bfloat16_run_agrees_with_float32_and_auto_records_what_it_ran(shards, tmp_path):
    """bfloat16 autocast (what "auto" picks on CPUs with native bf16) trains the same model to within
    0.02 nats of validation loss after 24 steps (observed: 0.002 on an AVX-512 CPU), and a run's
    config.yaml names the dtype "auto" resolved to, not "auto"."""
    results = {}
    for dtype in ("float32", "bfloat16", "auto"):
        out = tmp_path / dtype
        run_pretrain(tiny_config(shards, out, max_steps=24, eval_every=12, checkpoint_every=24, dtype=dtype))
        rows = read_metrics(out / "metrics.jsonl")
        results[dtype] = rows[-1]["val_loss"]
        assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, dtype  # both really train
        recorded = yaml.safe_load((out / "config.yaml").read_text())["dtype"]
        assert recorded == (resolve_dtype("auto", torch.device("cpu")) if dtype == "auto" else dtype)
    assert results["bfloat16"] == pytest.approx(results["float32"], abs=0.02)
    assert results["bfloat16"] != results["float32"]  # autocast really ran in bfloat16
    auto = resolve_dtype("auto", torch.device("cpu"))
    assert results["auto"] == pytest.approx(results[auto], rel=1e-6)


def test_resume_after_losing_steps_reproduces_the_uninterrupted_run(shards, tmp_path):
    reference = tmp_path / "reference"
    run_pretrain(tiny_config(shards, reference))
    # Simulate a kill after step 6: checkpoint step_4 is the last valid one, a later checkpoint was
    # caught mid-write, and metrics of steps 5-6 (plus a torn line) were already logged.
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    shutil.rmtree(killed / "final")
    for step in (8, 12):
        (killed / "checkpoints" / f"step_{step}").rename(killed / "checkpoints" / f".tmp-step_{step}-dead")
    lines = (killed / "metrics.jsonl").read_text().splitlines()[:6]
    (killed / "metrics.jsonl").write_text("\n".join(lines) + '\n{"stage": "pretrain", "st')
    run_pretrain(tiny_config(shards, killed), resume=True)
    assert [row["step"] for row in read_metrics(killed / "metrics.jsonl")] == list(range(1, 13))
    expected, got = losses(reference), losses(killed)
    assert got == pytest.approx(expected, rel=1e-5)
    assert not [p for p in (killed / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    ref_state = torch.load(reference / "checkpoints/step_12/trainer_state.pt", weights_only=False)
    new_state = torch.load(killed / "checkpoints/step_12/trainer_state.pt", weights_only=False)
    assert new_state["scheduler"] == ref_state["scheduler"]


def _run_module(args: list[str], **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "echochamber.cli", "pretrain", *args], env=env,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(shards, tmp_path):
    settings = dict(max_steps=40, checkpoint_every=10, eval_every=10, keep_checkpoints=2)
    reference = tmp_path / "reference"
    run_pretrain(tiny_config(shards, reference, **settings))  # one thread, as in the subprocesses
    out = tmp_path / "killed"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(tiny_config(shards, out, **settings))))
    process = _run_module([str(config_file)])
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step_10").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # land the kill somewhere after the checkpoint (mid-step or mid-write)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists()
    resumed = _run_module([str(config_file), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 41))
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_process_and_resume_in_one(shards, tmp_path, parallel):
    settings = dict(max_steps=6, checkpoint_every=3, eval_every=3)
    single = tmp_path / "single"
    run_pretrain(tiny_config(shards, single, **settings))
    out = tmp_path / "two"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(tiny_config(shards, out, parallel=parallel, **settings))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "echochamber.cli", "pretrain", str(config_file)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(single), rel=1e-4)
    single_val = [row["val_loss"] for row in read_metrics(single / "metrics.jsonl") if "val_loss" in row]
    two_val = [row["val_loss"] for row in read_metrics(out / "metrics.jsonl") if "val_loss" in row]
    assert two_val == pytest.approx(single_val, rel=1e-4)
    state = torch.load(out / "checkpoints/step_6/trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # A two-process checkpoint resumes in one process: drop step 6 and redo it.
    shutil.rmtree(out / "checkpoints" / "step_6")
    run_pretrain(tiny_config(shards, out, **settings), resume=True)
    assert losses(out) == pytest.approx(losses(single), rel=1e-4)


def test_a_rank_whose_share_is_below_the_micro_batch_takes_it_whole(shards, tmp_path):
    """micro_batch_size caps a forward: the quickstart's 32 sequences (cap 32) are 16 a rank on two
    ranks; shares that do not split into micro-batches of the cap are refused in one line."""
    on = lambda world: dist.Process(rank=0, world=world, device=torch.device("cpu"), owns_group=False)  # noqa: E731
    config = lambda batch, micro: tiny_config(shards, tmp_path, batch_size=batch, micro_batch_size=micro)  # noqa: E731
    assert _rank_batches(config(32, 32), on(2)) == (16, 16)
    assert _rank_batches(config(32, 32), on(1)) == (32, 32)
    assert _rank_batches(config(32, 8), on(2)) == (16, 8)
    for batch, micro, world in ((48, 16, 2), (30, 10, 4)):
        with pytest.raises(UserError, match=f"batch_size {batch} does not split into {world} process"):
            _rank_batches(config(batch, micro), on(world))


# --- bad input ---------------------------------------------------------------------------------


def test_a_pretraining_folder_another_run_is_writing_is_refused_before_any_step(shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with (out / LOCK_FILE).open("a+") as held:  # another run's hold, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="is being written by"):
            run_pretrain(tiny_config(shards, out))
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_missing_shards_folder_and_missing_shard_file(shards, tmp_path):
    with pytest.raises(UserError, match="shards folder not found"):
        run_pretrain(tiny_config(tmp_path / "nowhere", tmp_path / "out"))
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    (broken / "train.bin").unlink()
    with pytest.raises(UserError, match="missing shard"):
        run_pretrain(tiny_config(broken, tmp_path / "out2"))
    assert not (tmp_path / "out2" / "final").exists()


def test_unwritable_output_folder(shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="is not writable"):
        run_pretrain(tiny_config(shards, blocker / "run"))


def test_resume_with_a_tokenizer_of_another_vocabulary_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    run_pretrain(tiny_config(shards, out, max_steps=4))
    other = write_shards(tmp_path / "other", vocab_size=VOCAB + 64)
    with pytest.raises(UserError, match=f"vocabulary size {VOCAB} but the shards' tokenizer has {VOCAB + 64}"):
        run_pretrain(tiny_config(other, out, max_steps=4), resume=True)
    with pytest.raises(UserError, match="config key 'lr'"):
        run_pretrain(tiny_config(shards, out, max_steps=4, lr=1e-4), resume=True)


def test_resume_across_dtypes_is_refused_but_old_cpu_auto_checkpoints_resume_as_float32(shards, tmp_path):
    out = tmp_path / "run"
    run_pretrain(tiny_config(shards, out, max_steps=4, checkpoint_every=4))
    with pytest.raises(UserError, match="config key 'dtype' was 'float32', now 'bfloat16'"):
        run_pretrain(tiny_config(shards, out, max_steps=4, dtype="bfloat16"), resume=True)
    # Checkpoints written before "auto" was resolved at the start recorded "auto": float32 on a CPU.
    state_file = out / "checkpoints" / "step_4" / STATE_FILE
    state = torch.load(state_file, weights_only=False)
    state["config"]["dtype"] = "auto"
    torch.save(state, state_file)
    shutil.rmtree(out / "final")
    run_pretrain(tiny_config(shards, out, max_steps=4), resume=True)
    with pytest.raises(UserError, match="config key 'dtype' was 'float32', now 'bfloat16'"):
        run_pretrain(tiny_config(shards, out, max_steps=4, dtype="bfloat16"), resume=True)


def test_command_line_error_is_one_line_and_exit_code_2(shards, tmp_path, capsys):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"shards": str(shards), "out": str(tmp_path / "o"), "max_steps": 1}))
    assert main(["pretrain", str(config_file), "--set", "model=gigantic"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "unknown model preset 'gigantic'" in stderr
    assert not (tmp_path / "o").exists()
