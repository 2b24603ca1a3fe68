"""A format declared in a study file, end to end: it labels and grades RL rollouts and an evaluation,
is counted in the metrics lines and results.json, and shows in the report.

The fixture policy (conftest.py) answers every question with `The answer is \\boxed{2}.` or
`\\boxed{5}.` or a TinyGSM function, in equal measure: the study declares the one-sentence boxed
answer as its own format, tried before OMI2 (which would otherwise take it), so about half of every
step's samples are in it, right or wrong by construction.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import yaml

from echochamber.config import to_dict
from echochamber.data.tokenizer import load_tokenizer
from echochamber.eval.suite import evaluate_benchmark
from echochamber.model.presets import load_model
from echochamber.report.page import build_report
from echochamber.rl.core import run_rl
from echochamber.rl.rollout import read_rollouts
from echochamber.runlog import read_metrics
from echochamber.study.config import load_study

STUDY = r"""
formats:
  - tinygsm
  - omi1
  - omi2
  - name: short_boxed
    priority: 5
    description: one sentence around a boxed answer
    recognise: {starts_with: 'The answer is \boxed{'}
    answer: boxed
"""
NAMES = ("tinygsm", "omi1", "omi2", "short_boxed", "other")


def test_a_format_declared_in_a_study_file_is_classified_graded_counted_and_reported(
    tiny_policy, two_answer_prompts, grader, tmp_path
):
    data = tmp_path / "data"  # the fitted questions stand in for GSM8K's test split
    (data / "gsm8k").mkdir(parents=True)
    shutil.copy(two_answer_prompts, data / "gsm8k" / "test.jsonl")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY)
    study = load_study(study_file, preset="smoke", overrides=[
        "algo=grpo", "eval.benchmarks=[gsm8k]", f"eval.data={data}", "eval.limit=6", "eval.n=4",
        "eval.max_new_tokens=32", "rl.prompts.dataset=gsm8k", f"rl.prompts.path={two_answer_prompts}",
        "rl.max_steps=2", "rl.eval_every=0", "rl.grpo.lr=1e-4", "rl.tensorboard=false", "rl.progress=false",
        "rl.rollout.prompts_per_step=4", "rl.rollout.samples_per_prompt=4", "rl.rollout.max_new_tokens=32",
    ])  # fmt: skip
    assert study.rl.formats == study.formats  # the study places its registry in the RL section
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(to_dict(study), sort_keys=False)
    )  # as the pipeline writes it

    # RL: rollouts labelled and graded under the study's registry.
    config = dataclasses.replace(study.rl, policy=str(tiny_policy), out=str(run / "rl"))
    final = run_rl(config, algo="grpo", grader=grader)
    rollouts = [
        row for step in (1, 2) for row in read_rollouts(run / "rl" / "rollouts" / f"step_{step:06d}.jsonl.gz")
    ]
    mine = [row for row in rollouts if row["format"] == "short_boxed"]
    assert {row["format"] for row in rollouts} <= {"short_boxed", "tinygsm"} and mine
    assert {row["answer"] for row in mine} <= {"2", "5"}  # read by the declared `boxed` rule
    assert {row["correct"] for row in mine} == {True, False}  # graded: gold 2 or 5, answer 2 or 5
    assert all(row["status"] == "ok" for row in mine)
    lines = read_metrics(run / "rl" / "metrics.jsonl", "rl")
    for step, line in enumerate(lines, start=1):
        assert tuple(line["format_share"]) == NAMES == tuple(line["format_accuracy"])
        step_rows = read_rollouts(run / "rl" / "rollouts" / f"step_{step:06d}.jsonl.gz")
        share = sum(row["format"] == "short_boxed" for row in step_rows) / len(step_rows)
        assert line["format_share"]["short_boxed"] == share

    # The final evaluation: counted in results.json, the declared format recorded in full.
    results = evaluate_benchmark(
        load_model(final), load_tokenizer(final), study.evaluation("gsm8k"), run / "eval" / "final" / "gsm8k",
        grader=grader, progress=False,
    )  # fmt: skip
    stored = json.loads((run / "eval" / "final" / "gsm8k" / "results.json").read_text())
    assert stored["config"]["formats"][3] == {
        "name": "short_boxed", "priority": 5, "recognise": {"starts_with": "The answer is \\boxed{"},
        "answer": "boxed", "description": "one sentence around a boxed answer",
    }  # fmt: skip
    assert stored["config"]["formats"][0]["recognise"] == "python_function"  # built-ins written out too
    sampled = results["sampled"]["formats"]
    assert tuple(sampled) == NAMES and sampled["short_boxed"]["count"] > 0
    assert sum(stats["count"] for stats in sampled.values()) == results["sampled"]["n_generations"] == 24
    assert results["sampled"]["format_confusion"]["short_boxed"]["omi2"] == sampled["short_boxed"]["count"]

    # The report reads the names from the run folder: the declared format has its rows and filter.
    page = build_report(run).read_text()
    assert "short_boxed share" in page and "short_boxed accuracy" in page
    assert '<option value="short_boxed">' in page
    assert len(list((run / "report").glob("*-format_share.png"))) == 1  # the format-share chart over RL steps
