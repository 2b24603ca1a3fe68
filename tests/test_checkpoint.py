"""Checkpoints: complete HF folders, atomic writes, pruning, and exact optimizer/RNG round trips."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from echochamber.checkpoint import (
    LOCK_FILE,
    STATE_FILE,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    remove_partial_checkpoints,
    restore_optimizer,
    restore_rng_state,
    save_checkpoint,
    sole_writer,
)
from echochamber.errors import UserError
from echochamber.model.presets import build_model


@pytest.fixture
def tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(["x = 1 + 2"], trainer)
    folder = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def trained_pair(steps: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model("tiny", 300, max_seq_len=16, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(steps):
        ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def save(out, step, model, optimizer, tokenizer_dir, keep=2):
    return save_checkpoint(
        out, step, model=model, hf_model=model, optimizer=optimizer, tokenizer_dir=tokenizer_dir,
        trainer_state={"step": step}, keep=keep,
    )  # fmt: skip


def test_checkpoint_is_a_loadable_hf_folder_with_the_trainer_state(tmp_path, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, optimizer = trained_pair()
    folder = save(tmp_path, 7, model, optimizer, tokenizer_dir)
    assert folder == tmp_path / "checkpoints" / "step_7"
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|endoftext|>"
    state = load_trainer_state(folder)
    assert state["step"] == 7 and len(state["rng"]) == 1 and state["optimizer"]["state"]


def test_optimizer_and_rng_round_trip_exactly(tmp_path, tokenizer_dir):
    model, optimizer = trained_pair()
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save(tmp_path, 1, model, optimizer, tokenizer_dir)
    expected = (torch.rand(3), random.random(), np.random.rand())
    fresh_model, _ = trained_pair(steps=0)
    fresh_model.load_state_dict(model.state_dict())
    fresh_optimizer = torch.optim.AdamW(fresh_model.parameters(), lr=1e-3)
    state = load_trainer_state(tmp_path / "checkpoints" / "step_1")
    restore_optimizer(fresh_model, fresh_optimizer, state["optimizer"])
    for name, param in model.named_parameters():
        old, new = optimizer.state[param], fresh_optimizer.state[dict(fresh_model.named_parameters())[name]]
        assert torch.equal(old["exp_avg"], new["exp_avg"]) and torch.equal(old["exp_avg_sq"], new["exp_avg_sq"])
    torch.manual_seed(99)  # move every stream away, then restore the saved one
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(state["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_only_the_newest_checkpoints_are_kept(tmp_path, tokenizer_dir):
    model, optimizer = trained_pair(steps=1)
    for step in (2, 4, 6):
        save(tmp_path, step, model, optimizer, tokenizer_dir, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4", "step_6"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_6"


def test_a_write_killed_midway_leaves_the_previous_checkpoint_current(tmp_path, tokenizer_dir, monkeypatch):
    model, optimizer = trained_pair(steps=1)
    save(tmp_path, 2, model, optimizer, tokenizer_dir)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for SIGKILL arriving while trainer_state.pt is written

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 4, model, optimizer, tokenizer_dir)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_2"
    assert not (tmp_path / "checkpoints" / "step_4").exists()
    # A step folder without its state file (written by something else) is not a checkpoint either.
    (tmp_path / "checkpoints" / "step_9").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_2"
    remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_9"]
    assert (tmp_path / "checkpoints" / "step_2" / STATE_FILE).is_file()


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (torch.rand(4), random.random(), np.random.rand(2))
    restore_rng_state(state)
    again = (torch.rand(4), random.random(), np.random.rand(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


def test_a_second_writer_of_a_run_folder_stops_in_one_line_until_the_first_ends(tmp_path):
    """sole_writer: rank 0 holds OUT/.lock; another process's hold refuses it (whoever holds it is
    named); other ranks never take it; a holder that ends, however it ends, releases it."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )  # another run, mid-way: it holds the folder until killed
    assert holder.stdout.readline().strip() == "held"
    refused = rf"^{out} is being written by echochamber pid {holder.pid}; wait for it"
    with pytest.raises(UserError, match=refused), sole_writer(out, rank=0):
        pass
    with sole_writer(out, rank=1):  # a rank of the holder's own job writes under rank 0's hold
        pass
    holder.kill()  # SIGKILL: no cleanup ran, the kernel dropped the flock
    holder.wait()
    with sole_writer(out, rank=0):
        assert (out / LOCK_FILE).read_text() == f"echochamber pid {os.getpid()}"
    with sole_writer(out, rank=0):  # released on leaving too
        pass


HOLD = """
import sys, time
from pathlib import Path
from echochamber.checkpoint import sole_writer
with sole_writer(Path(sys.argv[1]), rank=0):
    print("held", flush=True)
    time.sleep(600)
"""
