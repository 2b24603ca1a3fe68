"""Fixtures for the RL tests: a tiny policy whose samples are right half the time by construction.

RL needs reward variance within a group, and a test must not hope a random model earns some (on an
AVX2-only CPU the old fixture never did). So the variance is built in: the fixture policy is fitted,
to convergence, on constructed questions each answered in equal measure with 2 and with 5, in two
formats (OMI2-like prose with a boxed number, a TinyGSM-like function). Every fitting batch holds
all four answers of one question, so at the fixed point the answer does not depend on the question
and each number has probability 1/2; T = 0.7 keeps equal logits equal. The prompt set of the RL
tests (`two_answer_prompts`) is those questions with gold 2 or 5: each sample is correct with
probability ~1/2, and a group of 4 ties only with probability ~1/8, whatever the CPU's rounding.
The fixture checks that premise before any test uses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from echochamber.data.tokenizer import (
    PROMPT_SEPARATOR,
    encode_document,
    encode_documents,
    encode_prompt,
    load_tokenizer,
    pad_token_id,
    train_bpe,
)
from echochamber.data.world import WorldConfig, world_records
from echochamber.model.presets import build_model, load_model
from echochamber.rl.rollout import Rollout, build_batch, sequence_logprobs
from echochamber.verify.grade import Grader

# A small world: generated in milliseconds; its splits serve as world prompts and the eval benchmark.
TEST_WORLD = WorldConfig(seed=0, n_pretrain=400, n_rl=48, n_test=16, n_hard=16)
ANSWERS = ("2", "5")  # every question is answered with each, in equal measure
N_QUESTIONS = 64
FIT_STEPS = 300  # converged: sampling gives exactly the four fitted answers (a few seconds)


def question(index: int) -> str:
    return f"Question {index}: is it two or five?"


def short_answer(code: bool, answer: str) -> str:
    if code:
        return f"def simple_math_problem() -> int:\n    result = {answer}\n    return result"
    return f"The answer is \\boxed{{{answer}}}."


def _fit(model: torch.nn.Module, tokenizer, questions: list[str]) -> None:
    """AdamW with a cosine decay to 0 on the answer tokens; each batch is one question's four answers,
    so the gradient at the answer's number and format is balanced in every step."""
    pad = pad_token_id(tokenizer)
    answers = [short_answer(code, answer) for answer in ANSWERS for code in (False, True)]
    documents = [encode_documents(tokenizer, [q] * len(answers), answers) for q in questions]
    starts = [len(encode_prompt(tokenizer, q)) for q in questions]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / FIT_STEPS)))
    model.train()
    for _ in range(FIT_STEPS):
        pick = int(torch.randint(len(questions), (1,), generator=generator))
        rows, start = documents[pick], starts[pick]
        width = max(len(row) for row in rows)
        inputs = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        for i, row in enumerate(rows):
            inputs[i, : len(row)] = torch.tensor(row)
            labels[i, start : len(row)] = torch.tensor(row[start:])
        logits = model(input_ids=inputs[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


def _check_premise(model: torch.nn.Module, tokenizer, questions: list[str]) -> None:
    """Each fitted answer has probability ~1/4 (format 1/2 x number 1/2): if not, the tests that need
    reward variance would depend on luck again, so stop here and say why."""
    answers = [short_answer(code, answer) for answer in ANSWERS for code in (False, True)]
    for q in questions[:4]:
        documents = encode_documents(tokenizer, [q] * len(answers), answers)
        start = len(encode_prompt(tokenizer, q))
        for document in documents:
            with torch.no_grad():
                logp = F.log_softmax(model(input_ids=torch.tensor([document[:-1]])).logits[0].float(), -1)
            total = float(logp[start - 1 :].gather(-1, torch.tensor(document[start:])[:, None]).sum())
            assert abs(math.exp(total) - 0.25) < 0.05, f"the fixture policy did not converge: p = {math.exp(total):.3f}"


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder (tiny OlmoForCausalLM + tokenizer) that `load_model`/`load_tokenizer` read."""
    questions = [question(i) for i in range(N_QUESTIONS)]
    fitted = [
        piece for q in questions for answer in ANSWERS for code in (False, True)
        for piece in (q + PROMPT_SEPARATOR, short_answer(code, answer))
    ]  # fmt: skip
    # World text too, so world prompts (the eval benchmark, some tests' prompt set) encode compactly.
    world = [piece for r in world_records(TEST_WORLD, "pretrain", "omi2")[:200] for piece in (r.prompt + PROMPT_SEPARATOR, r.solution)]
    tokenizer = train_bpe(fitted + world, vocab_size=384)
    model = build_model(
        "tiny", len(tokenizer), max_seq_len=256, seed=0,
        pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    _fit(model, tokenizer, questions)
    _check_premise(model, tokenizer, questions)
    folder = tmp_path_factory.mktemp("policy") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def two_answer_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fitted questions as a GSM8K-style file whose gold answers alternate 2 and 5: the prompt set
    of every RL test that needs reward variance (each sample is right with probability ~1/2)."""
    path = tmp_path_factory.mktemp("prompts") / "two_answers.jsonl"
    with path.open("w") as out:
        for i in range(N_QUESTIONS):
            out.write(json.dumps({"question": question(i), "answer": f"Guess.\n#### {ANSWERS[i % 2]}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def fitted_texts():
    """(question(index), short_answer(code, number)): how the fixture policy's texts are made."""
    return question, short_answer


@pytest.fixture
def own_answers_batch(tiny_policy: Path):
    """build(ref="policy" | a module | None) -> (policy, tokenizer, RolloutBatch): two groups of the
    fixture policy's own answers (each has probability ~1/4 under it), one rewarded and one not per
    group, old_logp the policy's own at T=0.7 (ratio 1), ref_logp from `ref` ("policy": the policy
    itself; None: no reference pass). The batch of every update test of GRPO, REINFORCE and the
    reference-pass switch."""
    def build(ref: torch.nn.Module | str | None = "policy"):
        model, tokenizer = load_model(tiny_policy), load_tokenizer(tiny_policy)
        rows = [(question(0), short_answer(False, "2"), 1.0), (question(0), short_answer(True, "5"), 0.0),
                (question(1), short_answer(False, "2"), 0.0), (question(1), short_answer(True, "5"), 1.0)]  # fmt: skip
        rollouts = []
        for i, (text_of_question, text, reward) in enumerate(rows):
            prompt = encode_prompt(tokenizer, text_of_question)
            response = encode_document(tokenizer, text_of_question, text)[len(prompt) :]
            rollouts.append(
                Rollout(prompt_id=f"g{i // 2}", sample_index=i % 2, prompt_token_ids=prompt, token_ids=response,
                        logprobs=[0.0] * len(response), text=text, format="other", answer=None, status="ok",
                        correct=reward > 0, truncated=False, reward=reward)
            )  # fmt: skip
        batch, ref_seconds = build_batch(
            rollouts, tokenizer=tokenizer, ref=model if ref == "policy" else ref, temperature=0.7,
            truncation="zero", micro_batch_size=4, device=torch.device("cpu"),
        )  # fmt: skip
        # No reference, no reference pass: neither its log-probs nor its time.
        assert (batch.ref_logp is None) == (ref is None) and (ref_seconds == 0.0) == (ref is None)
        with torch.no_grad():
            batch.old_logp = sequence_logprobs(model, batch.tokens, batch.attention_mask, 0.7)[0] * batch.response_mask
        return model, tokenizer, batch

    return build


@pytest.fixture(scope="session")
def test_world() -> WorldConfig:
    """The world whose splits give world prompts and the eval benchmark of the RL tests."""
    return TEST_WORLD


@pytest.fixture(scope="session")
def grader() -> Iterator[Grader]:
    with Grader(workers=2) as running:
        yield running
