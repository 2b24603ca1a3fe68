"""Evaluation suite: real benchmarks end to end with a tiny model, grading wired right, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from echochamber.config import load_config
from echochamber.data.sources import benchmark_records
from echochamber.data.tokenizer import encode_prompt, train_bpe
from echochamber.errors import UserError
from echochamber.evaluate import (
    GENERATIONS_FILE,
    RESULTS_FILE,
    EvalConfig,
    benchmark_prompts,
    evaluate,
    run_eval,
)
from echochamber.metrics_passk import vote_key
from echochamber.model import build_model
from echochamber.sampler import Sample, build_sampler
from echochamber.verify.grade import Grader


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1) as active:
        yield active


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, shared_data: Path) -> Path:
    """A random tiny model with a BPE trained on real questions, saved as an HF folder."""
    texts = [json.loads(line)["question"] + "\n\n" for line in (shared_data / "gsm8k/train.jsonl").open()][:300]
    tokenizer = train_bpe(texts, vocab_size=400)
    model = build_model(
        "tiny", len(tokenizer), max_seq_len=2048, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(**overrides) -> EvalConfig:
    """Built the way the CLI builds it: load_config with `key=value` overrides."""
    return load_config(EvalConfig, None, [f"{key}={value}" for key, value in overrides.items()])


@pytest.mark.parametrize("benchmark", ["gsm8k", "math500", "aime"])
def test_run_eval_on_real_benchmarks(benchmark, checkpoint, shared_data, tmp_path):
    config = _config(benchmark=benchmark, data=str(shared_data), limit=2, n=2, max_new_tokens=6, workers=1)
    results = run_eval(checkpoint, config, tmp_path, progress=False)

    rows = [json.loads(line) for line in (tmp_path / GENERATIONS_FILE).read_text().splitlines()]
    assert len(rows) == 2 * (1 + 2)  # one greedy + two sampled per prompt
    golds = {r.id: r.answer for r in benchmark_records(benchmark, shared_data)}
    for row in rows:
        assert row["gold"] == golds[row["prompt_id"]]
        assert 1 <= row["n_tokens"] <= 6
        assert not (row["correct"] and row["truncated"])
    greedy = [row for row in rows if row["mode"] == "greedy"]
    sampled = [row for row in rows if row["mode"] == "sampled"]
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == results
    assert results["n_prompts"] == 2 and results["checkpoint"] == str(checkpoint)
    assert results["greedy"]["pass@1"] == sum(row["correct"] for row in greedy) / 2
    assert set(results["sampled"]) >= {"pass@1", "pass@2", "maj@1", "maj@2", "formats", "truncation_rate"}
    assert results["sampled"]["truncation_rate"] == sum(row["truncated"] for row in sampled) / 4
    assert results["sampled"]["truncation_rate"] > 0.5  # a random model rarely says EOS in 6 tokens
    formats = results["sampled"]["formats"]
    assert {name: stats["count"] for name, stats in formats.items()} == {
        name: sum(row["format"] == name for row in sampled) for name in formats
    }
    assert (tmp_path / "config.yaml").is_file()


class _ScriptedSampler:
    """Returns fixed completions per prompt id (to check that grading pairs each completion with
    its own gold), and records what it was asked for."""

    def __init__(self, texts: dict[str, list[str]], truncated: set[str] = frozenset()):
        self.texts, self.truncated, self.calls = texts, truncated, []

    def generate_tokens(self, prompt_token_ids, prompt_ids, n, params):
        self.calls.append((list(prompt_ids), [list(t) for t in prompt_token_ids], n, params))
        return [
            [Sample(pid, i, [0] * (i + 3), self.texts[pid][i % len(self.texts[pid])], [0.0] * (i + 3), pid in self.truncated)
             for i in range(n)]
            for pid in prompt_ids
        ]


def test_grading_pairs_completions_with_their_golds(checkpoint, shared_data, grader):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    gsm = benchmark_records("gsm8k", shared_data)[:6]
    math = benchmark_records("math500", shared_data)[:4]
    aime = benchmark_records("aime", shared_data)[:3]
    records = gsm + math + aime
    wrong_gsm = json.loads((shared_data / "gsm8k/test.jsonl").read_text().splitlines()[-1])["answer"]
    texts = {}
    for index, record in enumerate(records):
        right = record.solution if record.source != "aime" else f"So the answer is $\\boxed{{{int(record.answer)}}}$."
        # Even records: every sample right. Odd records: sample 0 right, 1 and 2 wrong (same wrong answer).
        texts[record.id] = [right] if index % 2 == 0 else [right, wrong_gsm, wrong_gsm]
    truncated = {records[2].id}
    sampler = _ScriptedSampler(texts, truncated)
    config = EvalConfig(benchmark="gsm8k", n=3, batch_size=4)
    results = evaluate(None, tokenizer, records, config, grader=grader, sampler=sampler, progress=False)

    odd, even = len(records) // 2, len(records) - len(records) // 2
    # Greedy (sample 0) is right everywhere except the truncated record, which scores 0.
    assert results["greedy"]["pass@1"] == pytest.approx((len(records) - 1) / len(records))
    assert results["greedy"]["status_counts"]["truncated"] == 1
    # Sampled: even records 3/3 right (one of them truncated -> 0/3), odd records 1/3 right.
    assert results["sampled"]["pass@1"] == pytest.approx((3 * (even - 1) + odd) / (3 * len(records)))
    assert results["sampled"]["pass@3"] == pytest.approx((len(records) - 1) / len(records))
    # maj@3: odd records lose the vote 1-2; the truncated record casts no vote.
    assert results["sampled"]["maj@3"] == pytest.approx((even - 1) / len(records))
    # The prompt given to the sampler is the pretraining documents' prefix, question + "\n\n".
    ids, tokens, _, _ = sampler.calls[0]
    assert tokens[0] == encode_prompt(tokenizer, records[0].prompt)
    assert tokenizer.decode(tokens[0]) == records[0].prompt + "\n\n"
    # Chunks fill one sampler batch: 4 prompts greedy, 1 prompt (3 samples) sampled.
    assert [len(call[0]) for call in sampler.calls[:4]] == [4, 4, 4, 1]


def test_resume_skips_complete_prompts_and_matches_an_uninterrupted_run(checkpoint, grader, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = EvalConfig(benchmark="world-test", n=2, max_new_tokens=4, limit=4, batch_size=4)
    records = benchmark_prompts(config)
    full = evaluate(model, tokenizer, records, config, grader=grader, out_dir=tmp_path / "full", progress=False)

    # A run killed midway: greedy done for prompts 0-3, sampled complete for prompts 0-1 (the first
    # chunk), prompt 2 cut short after one sample, and a torn last line.
    lines = (tmp_path / "full" / GENERATIONS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    sampled_ids = [r.id for r in records[: config.limit]]
    keep = [
        line for line, row in zip(lines, rows, strict=True)
        if row["mode"] == "greedy" or row["prompt_id"] in sampled_ids[:2]
        or (row["prompt_id"] == sampled_ids[2] and row["sample_index"] == 0)
    ]
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tmp_path / "full" / "eval_settings.json", partial)
    (partial / GENERATIONS_FILE).write_text("\n".join(keep) + "\n" + lines[-1][:25])

    asked: list[tuple[str, list[str]]] = []
    sampler = build_sampler(model, tokenizer, batch_size=config.batch_size)
    real_generate = sampler.generate_tokens

    def spying_generate(prompt_token_ids, prompt_ids, n, params):
        asked.append(("greedy" if params.greedy else "sampled", list(prompt_ids)))
        return real_generate(prompt_token_ids, prompt_ids, n, params)

    sampler.generate_tokens = spying_generate
    resumed = evaluate(model, tokenizer, records, config, grader=grader, sampler=sampler, out_dir=partial, progress=False)

    assert [pid for mode, ids in asked for pid in ids] == sampled_ids[2:]  # nothing complete is redone
    assert all(mode == "sampled" for mode, _ in asked)
    assert resumed == full
    by_key = lambda text: sorted(text.splitlines())  # noqa: E731
    assert by_key((partial / GENERATIONS_FILE).read_text()) == by_key((tmp_path / "full" / GENERATIONS_FILE).read_text())

    # Same folder, different sampling settings: refused instead of mixing generations.
    with pytest.raises(UserError, match="temperature"):
        evaluate(model, tokenizer, records, EvalConfig(benchmark="world-test", n=2, max_new_tokens=4, limit=4,
                 temperature=1.0), grader=grader, out_dir=partial, progress=False)


def test_vote_key_merges_spellings_of_one_number():
    assert vote_key("18.0") == vote_key("18") == vote_key("018") == vote_key("$18") == "18"
    assert vote_key("0.50") == "0.5"
    assert vote_key("1,000") == "1000"
    assert vote_key("-0.0") == "0"
    assert vote_key("\\frac{1}{2}") == "\\frac{1}{2}"
    assert vote_key(None) is None


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark"):
        _config(benchmark="mmlu")
    with pytest.raises(UserError, match="between 1 and n"):
        _config(benchmark="gsm8k", n=4, ks=[8])
    with pytest.raises(UserError, match="nothing to evaluate"):
        _config(benchmark="gsm8k", n=0, greedy=False)
    with pytest.raises(UserError, match="top_p"):
        _config(benchmark="gsm8k", top_p=0)
    with pytest.raises(UserError, match="does not exist"):
        benchmark_prompts(_config(benchmark="aime", data=str(tmp_path / "nowhere")))
