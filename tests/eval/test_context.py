"""The context check: prompt lengths as encoded plus the budget against the model's context, and what
each policy (error, skip, shorten) does to an evaluation and to RL's prompt set."""

from __future__ import annotations

import json

import pytest

from echochamber.config import load_config
from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompt, encode_prompts, train_bpe
from echochamber.errors import UserError
from echochamber.eval.config import EvalConfig
from echochamber.eval.context import context_note, fit_prompts, measure
from echochamber.eval.suite import evaluate
from echochamber.model.presets import build_model
from echochamber.verify.grade import Grader

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([" ".join(WORDS) + "\n\n"] * 20, vocab_size=300)


def records(tokenizer, sizes: list[int]) -> list[Record]:
    """Questions of `sizes[i]` words; their encoded lengths differ and grow with the words."""
    return [Record(f"q{i}", " ".join(WORDS[:n]) + "?", "", "1", "test", "gsm8k") for i, n in enumerate(sizes)]


def test_encode_prompts_is_encode_prompt_batched(tokenizer):
    questions = [record.prompt for record in records(tokenizer, [1, 4, 10])]
    assert encode_prompts(tokenizer, questions) == [encode_prompt(tokenizer, q) for q in questions]
    assert encode_prompts(tokenizer, []) == []


def test_counts_and_the_one_line_error_name_the_longest_prompt(tokenizer):
    prompts = records(tokenizer, [1, 3, 10, 6])
    lengths = [len(encode_prompt(tokenizer, record.prompt)) for record in prompts]
    context, budget = 16, 16 - lengths[1]  # prompt q1 fits exactly; the two longer ones do not
    fit = measure("math500", prompts, tokenizer, context, budget)
    assert list(fit.lengths) == lengths
    assert fit.over() == [i for i, n in enumerate(lengths) if n + budget > context] == [2, 3]
    with pytest.raises(UserError) as error:
        fit_prompts("math500", prompts, tokenizer, context=context, max_new_tokens=budget, policy="error", setting="eval.over_context")
    message = str(error.value)
    assert message.startswith(
        f"math500: 2 of 4 prompts + {budget} new tokens exceed the model's context of {context} "
        f"(longest {lengths[2]} tokens: q2)"
    )
    assert "eval.over_context=skip" in message and "\n" not in message


def test_skip_leaves_them_out_and_shorten_keeps_those_with_room(tokenizer):
    prompts = records(tokenizer, [1, 3, 10, 6])
    lengths = [len(encode_prompt(tokenizer, record.prompt)) for record in prompts]
    context = lengths[2]  # q2 alone fills the context: no room for one new token
    budget = context - lengths[1]
    args = {"context": context, "max_new_tokens": budget, "setting": "eval.over_context"}
    kept, record = fit_prompts("aime", prompts, tokenizer, policy="skip", **args)
    assert [r.id for r in kept] == ["q0", "q1"]
    assert record == {
        "context": context, "max_new_tokens": budget, "over_context": "skip", "prompts": 4, "over": 2,
        "skipped": 2, "shortened": 0, "longest_prompt": lengths[2],
    }  # fmt: skip
    kept, record = fit_prompts("aime", prompts, tokenizer, policy="shorten", **args)
    assert [r.id for r in kept] == ["q0", "q1", "q3"] and (record["skipped"], record["shortened"]) == (1, 1)
    assert context_note(record) == f" (1 skipped, 1 with a shortened budget: over the context of {context})"
    assert context_note({**record, "skipped": 0, "shortened": 0}) == "" and context_note(None) == ""
    with pytest.raises(UserError, match="no prompt is left"):
        fit_prompts("aime", prompts[2:], tokenizer, policy="skip", **args)


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1) as active:
        yield active


def _evaluation(**overrides):
    settings = {"n": 0, "max_new_tokens": 4, "workers": 1, "batch_size": 8, **overrides}
    return load_config(EvalConfig, base=settings).evaluation("world-test")


def test_an_evaluation_records_what_the_check_did_and_errors_before_sampling(tokenizer, grader, tmp_path):
    prompts = records(tokenizer, [1, 10, 2])
    lengths = [len(encode_prompt(tokenizer, record.prompt)) for record in prompts]
    model = build_model("tiny", len(tokenizer), max_seq_len=lengths[0] + 4, eos_token_id=tokenizer.eos_token_id)
    with pytest.raises(UserError, match=r"world-test: 2 of 3 prompts \+ 4 new tokens exceed the model's context"):
        evaluate(model, tokenizer, prompts, _evaluation(), grader=grader, out_dir=tmp_path / "error", progress=False)
    assert not (tmp_path / "error" / "generations.jsonl").exists()  # nothing was sampled

    results = evaluate(model, tokenizer, prompts, _evaluation(over_context="skip"), grader=grader, out_dir=tmp_path / "skip", progress=False)
    assert results["n_prompts"] == 1 and results["context"]["skipped"] == 2
    assert json.loads((tmp_path / "skip" / "results.json").read_text())["context"]["over_context"] == "skip"
    rows = [json.loads(line) for line in (tmp_path / "skip" / "generations.jsonl").read_text().splitlines()]
    assert {row["prompt_id"] for row in rows} == {"q0"}

    shorten = _evaluation(over_context="shorten", max_new_tokens=6)
    results = evaluate(model, tokenizer, prompts, shorten, grader=grader, out_dir=tmp_path / "shorten", progress=False)
    assert results["n_prompts"] == 3 - (lengths[1] >= lengths[0] + 4)
    rows = [json.loads(line) for line in (tmp_path / "shorten" / "generations.jsonl").read_text().splitlines()]
    for row in rows:  # each generation stops where the context ends (or at EOS)
        room = lengths[0] + 4 - lengths[int(row["prompt_id"][1:])]
        assert row["n_tokens"] <= min(6, room)
    assert results["context"]["shortened"] >= 1
