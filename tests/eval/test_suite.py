"""Evaluation suite: real benchmarks end to end with a tiny model, grading wired right, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

from echochamber.checkpoint import LOCK_FILE
from echochamber.config import load_config
from echochamber.data.benchmarks import benchmark_records, load_benchmark
from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompt, load_tokenizer, train_bpe
from echochamber.errors import UserError
from echochamber.eval.config import EvalConfig, Evaluation
from echochamber.eval.passk import vote_classes
from echochamber.eval.store import GENERATIONS_FILE, PROMPTS_FILE, RESULTS_FILE, SETTINGS_FILE
from echochamber.eval.suite import evaluate, generation_stats, run_eval
from echochamber.model.presets import build_model, load_model
from echochamber.model.sampler import Sample, build_sampler
from echochamber.verify.grade import Grader
from echochamber.verify.normalize import vote_key


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


def _evaluation(benchmark: str, **overrides) -> Evaluation:
    """Built the way the CLI builds it: load_config with `key=value` overrides, then one benchmark."""
    return load_config(EvalConfig, None, [f"{key}={value}" for key, value in overrides.items()]).evaluation(benchmark)


def _problems(evaluation: Evaluation):
    return load_benchmark(evaluation.benchmark, evaluation.world, evaluation.config.data)


@pytest.mark.parametrize("benchmark", ["gsm8k", "math500", "aime"])
def test_run_eval_on_real_benchmarks(benchmark, checkpoint, shared_data, tmp_path):
    evaluation = _evaluation(benchmark, data=str(shared_data), limit=2, n=2, max_new_tokens=6, workers=1)
    results = run_eval(checkpoint, evaluation, tmp_path, progress=False)

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
    # The prompts' texts are kept beside the generations: the report reads them, not the benchmark.
    prompts = [json.loads(line) for line in (tmp_path / PROMPTS_FILE).read_text().splitlines()]
    records = benchmark_records(benchmark, shared_data)[:2]
    assert prompts == [{"id": r.id, "prompt": r.prompt, "gold": r.answer} for r in records]
    # The precision it ran in, and the paper's rule beside ours on every row and in the shares.
    assert (results["dtype"], results["device"]) == ("float32", "cpu")
    assert all(row["paper_format"] in ("tinygsm", "omi1", "omi2") for row in rows)
    paper = results["sampled"]["paper_formats"]
    assert {name: stats["count"] for name, stats in paper.items()} == {
        name: sum(row["paper_format"] == name for row in sampled) for name in paper
    }
    assert sum(sum(row.values()) for row in results["sampled"]["format_confusion"].values()) == 4
    # Every row votes: its answer's class, or None where it abstains (truncated counts as wrong).
    assert all(row["vote"] is None for row in rows if row["truncated"] or row["answer"] is None)


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
    evaluation = EvalConfig(n=3, batch_size=4).evaluation("gsm8k")
    results = evaluate(None, tokenizer, records, evaluation, grader=grader, sampler=sampler, progress=False)

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
    evaluation = EvalConfig(n=2, max_new_tokens=4, limit=4, batch_size=4).evaluation("world-test")
    records = _problems(evaluation)
    full = evaluate(model, tokenizer, records, evaluation, grader=grader, out_dir=tmp_path / "full", progress=False)

    # A run killed midway: greedy done for prompts 0-3, sampled complete for prompts 0-1 (the first
    # chunk), prompt 2 cut short after one sample, and a torn last line.
    lines = (tmp_path / "full" / GENERATIONS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    sampled_ids = [r.id for r in records[: evaluation.config.limit]]
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
    sampler = build_sampler(model, tokenizer, batch_size=evaluation.config.batch_size)
    real_generate = sampler.generate_tokens

    def spying_generate(prompt_token_ids, prompt_ids, n, params):
        asked.append(("greedy" if params.greedy else "sampled", list(prompt_ids)))
        return real_generate(prompt_token_ids, prompt_ids, n, params)

    sampler.generate_tokens = spying_generate
    resumed = evaluate(model, tokenizer, records, evaluation, grader=grader, sampler=sampler, out_dir=partial, progress=False)

    assert [pid for mode, ids in asked for pid in ids] == sampled_ids[2:]  # nothing complete is redone
    assert all(mode == "sampled" for mode, _ in asked)
    assert resumed == full
    by_key = lambda text: sorted(text.splitlines())  # noqa: E731
    assert by_key((partial / GENERATIONS_FILE).read_text()) == by_key((tmp_path / "full" / GENERATIONS_FILE).read_text())

    # Same folder, different sampling settings: refused instead of mixing generations.
    with pytest.raises(UserError, match="temperature"):
        evaluate(model, tokenizer, records, EvalConfig(n=2, max_new_tokens=4, limit=4,
                 temperature=1.0).evaluation("world-test"), grader=grader, out_dir=partial, progress=False)


# Every rank evaluates the same prompts into the same folder and writes what it got back.
TORCHRUN_EVAL = """
import json, sys
from pathlib import Path
from echochamber import dist
from echochamber.data.benchmarks import load_benchmark
from echochamber.data.tokenizer import load_tokenizer
from echochamber.eval.config import EvalConfig
from echochamber.eval.suite import evaluate
from echochamber.model.presets import load_model

checkpoint, settings, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
process = dist.init()
evaluation = EvalConfig(**settings).evaluation("world-test")
records = load_benchmark(evaluation.benchmark, evaluation.world, evaluation.config.data)
model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
results = evaluate(model, tokenizer, records, evaluation, out_dir=out / "eval", progress=False)
(out / f"results_rank{process.rank}.json").write_text(json.dumps(results))
dist.leave(process)
"""


@pytest.mark.slow
def test_under_torchrun_each_rank_generates_its_part_and_the_folder_equals_one_process(checkpoint, tmp_path):
    """Two ranks split each round of prompts (5 prompts: uneven parts, and a last sampled round that
    leaves rank 1 nothing); rank 0 writes the folder. Files and results equal one process's, and
    every rank returns the results."""
    settings = {"n": 2, "max_new_tokens": 6, "limit": 5, "batch_size": 4, "workers": 1}
    evaluation = EvalConfig(**settings).evaluation("world-test")
    single = evaluate(
        load_model(checkpoint), load_tokenizer(checkpoint), _problems(evaluation), evaluation,
        out_dir=tmp_path / "single", progress=False,
    )  # fmt: skip
    (tmp_path / "launch.py").write_text(TORCHRUN_EVAL)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "launch.py"), str(checkpoint), json.dumps(settings), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = lambda folder: sorted((folder / GENERATIONS_FILE).read_text().splitlines())  # noqa: E731
    assert len(rows(tmp_path / "eval")) == 5 * (1 + 2)
    assert rows(tmp_path / "eval") == rows(tmp_path / "single")
    for name in (PROMPTS_FILE, SETTINGS_FILE, RESULTS_FILE):
        assert (tmp_path / "eval" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    for rank in (0, 1):
        assert json.loads((tmp_path / f"results_rank{rank}.json").read_text()) == single

    # `echochamber eval` under torchrun joins the ranks the same way (it used to run whole on each).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "echochamber.cli", "eval", str(checkpoint), "--benchmark", "world-test", "--out", str(tmp_path / "cli"),
               *(f"--set={key}={value}" for key, value in settings.items())]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("world-test: 5 prompts") == 1  # rank 0 reports for the job
    assert rows(tmp_path / "cli") == rows(tmp_path / "single")


def test_an_eval_folder_another_eval_is_writing_is_refused_before_the_model_loads(checkpoint, tmp_path, monkeypatch):
    import fcntl

    from echochamber.eval import suite

    out = tmp_path / "eval"
    out.mkdir()
    monkeypatch.setattr(suite, "load_model", lambda *args, **kwargs: pytest.fail("model loaded"))
    with (out / LOCK_FILE).open("a+") as held:  # another run's hold, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="is being written by"):
            run_eval(checkpoint, _evaluation("world-test", limit=1, n=1, max_new_tokens=2), out, progress=False)
    assert not (out / GENERATIONS_FILE).exists()


class _PlantedSampler:
    """Fixed (text, truncated) samples per prompt id."""

    def __init__(self, samples: dict[str, list[tuple[str, bool]]]):
        self.samples = samples

    def generate_tokens(self, prompt_token_ids, prompt_ids, n, params):
        return [
            [Sample(pid, i, [0, 0], self.samples[pid][i][0], [0.0, 0.0], self.samples[pid][i][1]) for i in range(n)]
            for pid in prompt_ids
        ]


def _brute_maj(labels: list[str | None], correct: list[bool], k: int) -> float:
    """Majority vote in every size-k subset over planted labels (ties split), averaged."""
    import itertools
    from collections import Counter

    scores = []
    for subset in itertools.combinations(range(len(labels)), k):
        votes = Counter((labels[i], correct[i]) for i in subset if labels[i] is not None)
        top = max(votes.values(), default=0)
        winners = [ok for (_, ok), count in votes.items() if count == top]
        scores.append(sum(winners) / len(winners) if winners else 0.0)
    return sum(scores) / len(scores)


NOISY_TINYGSM = "def simple_math_problem() -> int:\n    result = 0.1 * 3 * 60\n    return result\n"


def test_maj_at_k_votes_by_math_verify_class(checkpoint, grader, tmp_path):
    """Planted answers: 1/2 as a TinyGSM float, a LaTeX fraction and "0.50" against three 2s, and a
    TinyGSM float with noise against 18."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    half = [("So the answer is \\boxed{2}.", False)] * 3 + [
        (NOISY_TINYGSM.replace("0.1 * 3 * 60", "1 / 2"), False),  # answer "0.5"
        ("So the answer is \\boxed{\\frac{1}{2}}.", False),  # answer "\\frac{1}{2}": math-verify's call
        ("So the answer is \\boxed{0.50}.", False),  # answer "0.50": vote_key's call
        ("So the answer is \\boxed{0.5}.", True),  # cut off: abstains
    ]
    eighteen = [(NOISY_TINYGSM, False), ("We get \\boxed{18}.", False)] + [("We get \\boxed{19}.", False)] * 2
    eighteen += [("We get \\boxed{20}.", False), ("We get \\boxed{18}.", False), ("I do not know.", False)]
    records = [Record("half", "Halve one.", "", "\\frac{1}{2}", "test", "omi2"), Record("t18", "Eighteen?", "", "18", "test", "omi2")]
    labels = {"half": ["two"] * 3 + ["half"] * 3 + [None], "t18": ["18", "18", "19", "19", "20", "18", None]}
    evaluation = EvalConfig(n=7, greedy=False, ks=[1, 2, 3, 4, 5, 6, 7]).evaluation("gsm8k")
    sampler = _PlantedSampler({"half": half, "t18": eighteen})
    results = evaluate(None, tokenizer, records, evaluation, grader=grader, sampler=sampler, progress=False, out_dir=tmp_path)

    expected = {k: 0.0 for k in evaluation.config.ks}
    for record in records:
        correct = [label in ("half", "18") for label in labels[record.id]]
        for k in evaluation.config.ks:
            expected[k] += _brute_maj(labels[record.id], correct, k) / len(records)
    assert {k: results["sampled"][f"maj@{k}"] for k in evaluation.config.ks} == pytest.approx(expected, abs=1e-12)
    # The full vote: 1/2 ties 2 at 3 votes (a coin flip; without the classes "2" would win 3 to 1 to
    # 1 to 1), and 18 wins 3 to 2 to 1 with the TinyGSM float among its votes.
    assert results["sampled"]["maj@7"] == pytest.approx((0.5 + 1.0) / 2)
    # The rows say it (the report recounts maj@k from them): one vote per class, None to abstain.
    rows = [json.loads(line) for line in (tmp_path / GENERATIONS_FILE).read_text().splitlines()]
    votes = {pid: [row["vote"] for row in rows if row["prompt_id"] == pid] for pid in ("half", "t18")}
    assert votes == {"half": ["2", "2", "2", "0.5", "0.5", "0.5", None], "t18": ["18", "18", "19", "19", "20", "18", None]}
    assert [row["correct"] for row in rows if row["prompt_id"] == "t18"] == [True, True, False, False, False, True, False]
    assert (results["dtype"], results["device"]) == (None, None)  # a caller's sampler, no model: unknown


def test_numbers_left_uncompared_are_different_under_math_verify(grader):
    """vote_classes decides some pairs of plain numbers without math-verify; math-verify agrees."""
    numbers = ["18", "18.0000004", "18.000001", "18.00001", "18.0001", "19", "0", "0.0000001", "1000000", "1e6"]
    keys = [vote_key(number) for number in numbers]
    asked: list[tuple[str, str]] = []

    def spy(pairs):
        asked.extend(pairs)
        return grader.same_answers(pairs)

    vote_classes([keys], spy)
    distinct = sorted(set(keys))
    unasked = [(a, b) for a in distinct for b in distinct if a < b and (a, b) not in asked and (b, a) not in asked]
    assert len(unasked) > 10  # the shortcut is used ...
    assert not any(grader.same_answers(unasked))  # ... and never separates what math-verify would merge


def test_generation_stats_hold_the_papers_rule_beside_ours():
    def row(ours: str, paper: str, correct: bool) -> dict:
        return {"format": ours, "paper_format": paper, "correct": correct, "truncated": False, "n_tokens": 5, "status": "ok"}

    rows = [
        row("tinygsm", "tinygsm", True),
        row("omi2", "tinygsm", True),  # "defective parts" prose
        row("omi2", "tinygsm", False),  # an OMI2 solution showing a helper def
        row("other", "tinygsm", False),  # degenerate text containing "def"
        row("other", "omi2", False),  # boxed spam
        row("omi1", "omi1", True),
        row("omi2", "omi2", True),
        row("omi2", "omi2", False),
    ]
    stats = generation_stats(rows)
    assert stats["formats"]["tinygsm"]["share"] == 1 / 8 and stats["formats"]["omi2"]["share"] == 4 / 8
    assert stats["paper_formats"]["tinygsm"] == {"count": 4, "share": 0.5, "accuracy": 0.5}
    assert stats["paper_formats"]["omi2"] == {"count": 3, "share": 3 / 8, "accuracy": pytest.approx(1 / 3)}
    assert stats["paper_formats"]["omi1"] == {"count": 1, "share": 1 / 8, "accuracy": 1.0}
    assert stats["format_disagreements"] == 4
    assert stats["format_confusion"] == {
        "tinygsm": {"tinygsm": 1, "omi1": 0, "omi2": 0},
        "omi1": {"tinygsm": 0, "omi1": 1, "omi2": 0},
        "omi2": {"tinygsm": 2, "omi1": 0, "omi2": 2},
        "other": {"tinygsm": 1, "omi1": 0, "omi2": 1},
    }
    # Rows built by hand without the paper's label: reported as unknown, never as 0.
    bare = [{key: value for key, value in r.items() if key != "paper_format"} for r in rows]
    assert generation_stats(bare)["paper_formats"] is None and generation_stats(bare)["format_disagreements"] is None
    with pytest.raises(RuntimeError, match="lack a paper_format"):
        generation_stats(rows[:1] + bare[1:])


def test_resume_grades_rows_of_an_older_version_again(checkpoint, grader, tmp_path):
    """Rows without vote/paper_format (written before they existed, by a verifier that called float
    noise wrong) are graded again on resume; the folder ends as a fresh run would leave it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    records = [Record("t18", "Eighteen?", "", "18", "test", "omi2"), Record("t2", "Two?", "", "2", "test", "omi2")]
    texts = {"t18": [(NOISY_TINYGSM, False), ("\\boxed{18}", False), ("We get \\boxed{19}.", False)],
             "t2": [("We get \\boxed{2}.", False), ("We get \\boxed{2.0}.", False), ("no idea", True)]}  # fmt: skip
    evaluation = EvalConfig(n=3, greedy=False).evaluation("gsm8k")
    fresh = evaluate(None, tokenizer, records, evaluation, grader=grader, sampler=_PlantedSampler(texts),
                     out_dir=tmp_path / "fresh", progress=False)  # fmt: skip
    old = tmp_path / "old"
    old.mkdir()
    settings = json.loads((tmp_path / "fresh" / SETTINGS_FILE).read_text())
    del settings["dtype"]  # the older version did not record it either
    (old / SETTINGS_FILE).write_text(json.dumps(settings))
    lines = (tmp_path / "fresh" / GENERATIONS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        del row["vote"], row["paper_format"]
    rows[0]["correct"] = False  # how the older verifier graded 18.000000000000004
    (old / GENERATIONS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))

    resumed = evaluate(None, tokenizer, records, evaluation, grader=grader, sampler=_PlantedSampler({}),
                       out_dir=old, progress=False)  # fmt: skip
    assert resumed == fresh
    assert (old / GENERATIONS_FILE).read_text().splitlines() == lines


def test_dtype_is_chosen_recorded_and_part_of_the_settings(checkpoint, grader, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    evaluation = _evaluation("world-test", limit=1, n=1, max_new_tokens=3, workers=1, dtype="bfloat16")
    results = run_eval(checkpoint, evaluation, tmp_path / "bf16", progress=False)
    assert (results["dtype"], results["device"], results["config"]["dtype"]) == ("bfloat16", "cpu", "bfloat16")
    # Resuming that folder in another precision is refused rather than mixing the two.
    with pytest.raises(UserError, match="different dtype"):
        run_eval(checkpoint, _evaluation("world-test", limit=1, n=1, max_new_tokens=3), tmp_path / "bf16")
    # The torch backend samples an in-memory model as it is: another dtype is refused before any work.
    model, tokenizer = AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    records = _problems(evaluation)
    with pytest.raises(UserError, match="own dtype \\(float32\\), not bfloat16"):
        evaluate(model, tokenizer, records, evaluation, grader=grader, progress=False)
    with pytest.raises(UserError, match="'dtype': must be one of 'auto', 'float32'"):
        _evaluation("world-test", dtype="fp8")
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        EvalConfig(dtype="fp8").validate()  # type: ignore[arg-type]
    # A folder from before dtypes were recorded resumes under the torch backend (which then sampled
    # the checkpoint's own dtype, i.e. "auto"), not under vLLM (which ran float32 weights in float16).
    sampler = _PlantedSampler({record.id: [("\\boxed{1}", False)] for record in records})
    for backend in ("torch", "vllm"):
        legacy = EvalConfig(limit=1, n=1, max_new_tokens=3, greedy=False, backend=backend).evaluation("world-test")
        folder = tmp_path / f"legacy-{backend}"
        folder.mkdir()
        settings = {key: value for key, value in legacy.generation_settings().items() if key != "dtype"}
        (folder / SETTINGS_FILE).write_text(json.dumps(settings))
        refused = pytest.raises(UserError, match="different dtype") if backend == "vllm" else nullcontext()
        with refused:
            results = evaluate(None, tokenizer, records, legacy, grader=grader, sampler=sampler, out_dir=folder, progress=False)
            assert results["sampled"]["n_generations"] == 1


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark"):
        _evaluation("mmlu")
    with pytest.raises(UserError, match="between 1 and n"):
        _evaluation("gsm8k", n=4, ks=[8])
    with pytest.raises(UserError, match="nothing to evaluate"):
        _evaluation("gsm8k", n=0, greedy=False)
    with pytest.raises(UserError, match="top_p"):
        _evaluation("gsm8k", top_p=0)
    with pytest.raises(UserError, match="does not exist"):
        _problems(_evaluation("aime", data=str(tmp_path / "nowhere")))


def test_the_eval_command_runs_one_benchmark_per_folder(checkpoint, tmp_path, capsys):
    from echochamber.cli import main

    args = ["eval", str(checkpoint), "--limit", "1", "--n", "1", "--max-new-tokens", "3", "--set", "workers=1"]
    assert main([*args, "--benchmark", "world-test", "--out", str(tmp_path / "one")]) == 0
    assert "world-test: 1 prompts" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "one").iterdir()} >= {GENERATIONS_FILE, PROMPTS_FILE, RESULTS_FILE, "config.yaml"}
    # The folder's config.yaml is a config the command takes back: it repeats the evaluation.
    assert main(["eval", str(checkpoint), "--config", str(tmp_path / "one/config.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert "world-test: 1 prompts" in capsys.readouterr().out
    assert (tmp_path / "again" / GENERATIONS_FILE).read_text() == (tmp_path / "one" / GENERATIONS_FILE).read_text()
    # Two benchmarks (the config's default) cannot share one --out folder: refused in one line.
    assert main([*args, "--out", str(tmp_path / "two")]) == 2
    assert "name one --benchmark" in capsys.readouterr().err and not (tmp_path / "two").exists()


def test_a_folder_is_labelled_by_one_registry_recorded_in_full(checkpoint, grader, tmp_path):
    """results.json records the registry; another one is refused in the same folder; a folder from
    before registries resumes under the default one only."""
    tokenizer = load_tokenizer(checkpoint)
    catalogue = EvalConfig(limit=2, n=2, max_new_tokens=3, greedy=False).evaluation(
        "world-test", formats=["tinygsm", "omi1", "omi2", "gsm8k"]
    )
    records = _problems(catalogue)
    texts = {records[0].id: ["Work.\n#### " + records[0].answer, "Adding them up gives \\boxed{-1}."], records[1].id: ["??", f"#### {int(records[1].answer) + 1}"]}
    sampler = _PlantedSampler({pid: [(text, False) for text in pair] for pid, pair in texts.items()})
    results = evaluate(None, tokenizer, records, catalogue, grader=grader, sampler=sampler, out_dir=tmp_path / "a", progress=False)
    formats = results["sampled"]["formats"]
    assert list(formats) == ["tinygsm", "omi1", "omi2", "gsm8k", "other"]
    assert (formats["gsm8k"]["count"], formats["omi2"]["count"], formats["other"]["count"]) == (2, 1, 1)
    assert formats["gsm8k"]["accuracy"] == 0.5  # the right `#### N` and the wrong one
    assert [spec["name"] for spec in results["config"]["formats"]] == ["tinygsm", "omi1", "omi2", "gsm8k"]
    assert json.loads((tmp_path / "a" / RESULTS_FILE).read_text())["config"]["formats"] == results["config"]["formats"]
    default = EvalConfig(limit=2, n=2, max_new_tokens=3, greedy=False).evaluation("world-test")
    with pytest.raises(UserError, match="different formats"):
        evaluate(None, tokenizer, records, default, grader=grader, sampler=sampler, out_dir=tmp_path / "a", progress=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    settings = {key: value for key, value in default.generation_settings().items() if key != "formats"}
    (legacy / SETTINGS_FILE).write_text(json.dumps(settings))
    assert evaluate(None, tokenizer, records, default, grader=grader, sampler=sampler, out_dir=legacy, progress=False)
    with pytest.raises(UserError, match="different formats"):
        evaluate(None, tokenizer, records, catalogue, grader=grader, sampler=sampler, out_dir=legacy, progress=False)
