"""Fixtures for the RL tests: a tiny policy that already answers in two formats, and a grader.

A random model never stops or states a number, so every reward would be 0 and GRPO would have no
signal. The fixture policy is the `tiny` preset with a BPE trained on world documents, fitted for
a few seconds on short answers in two templates (OMI2-like prose with a boxed number, and a
TinyGSM-like function): it ends with EOS, picks a format, and guesses the number, so a few samples
are correct and some groups have reward variance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from echochamber.data.tokenizer import (
    PROMPT_SEPARATOR,
    encode_documents,
    encode_prompt,
    pad_token_id,
    train_bpe,
)
from echochamber.data.world import WorldConfig, world_records
from echochamber.model import build_model
from echochamber.verify.grade import Grader

# A small world: generated in milliseconds; its RL split is a handful of prompts.
TEST_WORLD = WorldConfig(seed=0, n_pretrain=400, n_rl=48, n_test=16, n_hard=16)
FIT_STEPS = 80


def short_answer(index: int, answer: str) -> str:
    if index % 2:
        return f"def simple_math_problem() -> int:\n    result = {answer}\n    return result"
    return f"The answer is \\boxed{{{answer}}}."


def _fit(model: torch.nn.Module, tokenizer, prompts: list[str], solutions: list[str]) -> None:
    """A few AdamW steps on the solution tokens only (the prompt part would take far longer)."""
    pad = pad_token_id(tokenizer)
    documents = encode_documents(tokenizer, prompts, solutions)
    starts = [len(encode_prompt(tokenizer, prompt)) for prompt in prompts]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(FIT_STEPS):
        picks = torch.randint(len(documents), (8,), generator=generator).tolist()
        width = max(len(documents[i]) for i in picks)
        inputs = torch.full((8, width), pad)
        labels = torch.full((8, width), -100)
        for row, i in enumerate(picks):
            inputs[row, : len(documents[i])] = torch.tensor(documents[i])
            labels[row, starts[i] : len(documents[i])] = torch.tensor(documents[i][starts[i] :])
        logits = model(input_ids=inputs[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder (tiny OlmoForCausalLM + tokenizer) that `load_model`/`load_tokenizer` read."""
    records = world_records(TEST_WORLD, "pretrain", "omi2")
    solutions = [short_answer(i, r.answer) for i, r in enumerate(records)]
    texts = [piece for r, s in zip(records[:200], solutions, strict=False) for piece in (r.prompt + PROMPT_SEPARATOR, s)]
    tokenizer = train_bpe(texts, vocab_size=384)
    model = build_model(
        "tiny", len(tokenizer), max_seq_len=256, seed=0,
        pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    _fit(model, tokenizer, [r.prompt for r in records], solutions)
    folder = tmp_path_factory.mktemp("policy") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def test_world() -> WorldConfig:
    """The world behind `tiny_policy` (its RL split is the prompt set of the RL tests)."""
    return TEST_WORLD


@pytest.fixture(scope="session")
def grader() -> Iterator[Grader]:
    with Grader(workers=2) as running:
        yield running
