"""The paper's released checkpoints as starting points: a checkpoint of exactly their configuration
(OLMo 150M shapes, Llama-2's 32k vocabulary and special tokens, the converted config's eos 0 / pad 1)
loads as `echochamber eval`'s model and `echochamber rl`'s policy with the conventions handled: the
prompt is question + "\\n\\n" with no <s> although the tokenizer adds one by default, generation
stops on </s>, and </s> pads (the tokenizer has no pad token). The checkpoint is built locally and
randomly initialised, with a planted preference for </s> so that stopping is observable."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from echochamber.cli import main
from echochamber.data.tokenizer import PROMPT_SEPARATOR, encode_prompt, load_tokenizer, pad_token_id
from echochamber.model import sampler as sampler_module
from echochamber.model.presets import load_model
from echochamber.runlog import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paper_checkpoint(paper_checkpoints) -> Path:
    return paper_checkpoints("150m", stop_logit=8.0)


@pytest.fixture
def seen_prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every prompt (as token ids) the torch sampler is asked to continue."""
    seen: list[list[int]] = []
    generate = sampler_module.TorchSampler.generate_tokens

    def record(self, prompt_token_ids, *args, **kwargs):
        seen.extend(list(ids) for ids in prompt_token_ids)
        return generate(self, prompt_token_ids, *args, **kwargs)

    monkeypatch.setattr(sampler_module.TorchSampler, "generate_tokens", record)
    return seen


def test_the_checkpoint_has_the_papers_configuration(paper_checkpoint: Path) -> None:
    config = json.loads((paper_checkpoint / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == ("olmo", 32000, 768, 12)
    assert (config["eos_token_id"], config["pad_token_id"], config["max_position_embeddings"]) == (0, 1, 2048)
    tokenizer = load_tokenizer(paper_checkpoint)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)) == (1, 2, None, 32000)
    question = "Natalia sold clips to 48 of her friends in April."
    assert tokenizer(question)["input_ids"][0] == 1  # Llama adds <s> by default ...
    assert encode_prompt(tokenizer, question)[0] != 1  # ... our prompt does not
    assert pad_token_id(tokenizer) == 2  # no pad token: </s> pads


def test_echochamber_eval_runs_on_it(paper_checkpoint, llama_tokenizer, shared_data, seen_prompts, tmp_path) -> None:
    out = tmp_path / "eval"
    code = main([
        "eval", str(paper_checkpoint), "--benchmark", "gsm8k", "--limit", "2", "--n", "2", "--max-new-tokens", "4",
        "--data", str(shared_data), "--out", str(out), "--batch-size", "8", "--set", "workers=1",
    ])  # fmt: skip
    assert code == 0
    tokenizer = load_tokenizer(llama_tokenizer)
    questions = [json.loads(line)["question"] for line in (shared_data / "gsm8k" / "test.jsonl").open()][:2]
    expected = [tokenizer(q + PROMPT_SEPARATOR, add_special_tokens=False)["input_ids"] for q in questions]
    assert seen_prompts and all(ids in expected for ids in seen_prompts)  # question + "\n\n", never <s>
    assert all(ids[0] != tokenizer.bos_token_id and ids[-2:] == expected[0][-2:] for ids in seen_prompts)
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    greedy = [row for row in rows if row["mode"] == "greedy"]
    # Greedy decoding stops on </s> at once: one token (the </s>), not truncated, empty text.
    assert [(row["n_tokens"], row["truncated"], row["text"]) for row in greedy] == [(1, False, "")] * 2
    results = json.loads((out / "results.json").read_text())
    assert results["n_prompts"] == 2 and results["context"]["context"] == 2048


def test_one_rl_step_runs_on_it_and_keeps_the_conventions(paper_checkpoint, shared_data, seen_prompts, tmp_path) -> None:
    out = tmp_path / "rl"
    overrides = [
        f"policy={paper_checkpoint}", f"out={out}", f"prompts.path={shared_data / 'gsm8k' / 'train.jsonl'}",
        "prompts.limit=8", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
        "rollout.grader_workers=1", "rollout.batch_size=8", "grpo.minibatches=1", "max_steps=1", "eval_every=0",
        "micro_batch_size=4", "tensorboard=false", "progress=false",
    ]  # fmt: skip
    assert main(["rl", "paper", "--algo", "grpo", *[arg for item in overrides for arg in ("--set", item)]]) == 0
    [line] = read_metrics(out / "metrics.jsonl", "rl")
    assert line["step"] == 1 and line["n_samples"] == 4 and line["algo"] == "grpo"
    assert all(ids[0] != 1 for ids in seen_prompts) and len(seen_prompts) == 2
    with gzip.open(out / "rollouts" / "step_000001.jsonl.gz", "rt") as rollouts:
        samples = [json.loads(line) for line in rollouts]
    # Sampled at T = 0.7 the planted </s> ends some samples early; the rest run to the budget.
    assert all(1 <= row["n_tokens"] <= 4 for row in samples)
    assert any(not row["truncated"] for row in samples)
    final = out / "final"
    assert load_model(final).config.vocab_size == 32000
    saved = load_tokenizer(final)
    assert (saved.bos_token_id, saved.eos_token_id, saved.pad_token_id) == (1, 2, None)
    assert json.loads((out / "prompts.json").read_text())["context"]["context"] == 2048
