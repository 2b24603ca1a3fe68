"""The verifier end to end: per-format extraction through the sandbox, real reference solutions,
the controlled world in every format, grading from a thread, and `echochamber grade`."""

from __future__ import annotations

import json
import threading

import pytest

from echochamber.cli import main
from echochamber.formats.registry import build_registry
from echochamber.verify.grade import Grader, Summary

TINYGSM = '''def simple_math_problem() -> int:
    """
    Janet has 16 eggs. She eats 3 for breakfast. How many eggs are left?
    """
    eggs = 16
    eaten = 3
    result = eggs - eaten
    return result
'''
OMI1 = (
    "Let's solve this problem using Python code.\n<llm-code>\neggs = 16\neaten = 3\neggs - eaten\n</llm-code>\n"
    "<llm-code-output>\n99\n</llm-code-output>\nThus Janet has \\boxed{99} eggs left."
)
OMI2 = "Janet starts with 16 eggs and eats 3.\nSo she has $16 - 3 = 13$ eggs left.\nThus she has \\boxed{13} eggs."


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, verify_timeout_s=2.0) as grader:
        yield grader


def test_each_format_is_graded_by_its_own_answer(grader):
    completions = [TINYGSM, OMI1, OMI2, "Janet has 16 - 3 = 13 eggs left."]
    grades = grader.grade(completions, ["13"] * 4)
    assert [grade.format for grade in grades] == ["tinygsm", "omi1", "omi2", "other"]
    assert [grade.answer for grade in grades] == ["13", "13", "13", "13"]
    assert all(grade.correct and grade.status == "ok" for grade in grades)
    # The OMI1 block is executed; the model's own (wrong) <llm-code-output> and boxed 99 are ignored.
    assert not grader.grade([OMI1], ["99"])[0].correct


def test_grades_record_the_papers_format_rule_beside_ours(grader):
    defective = "Of 40 parts, 12 were defective, so 40 - 12 = 28 were fine. The answer is \\boxed{28}."
    grades = grader.grade([TINYGSM, OMI1, OMI2, defective], ["13", "13", "13", "28"])
    assert [grade.format for grade in grades] == ["tinygsm", "omi1", "omi2", "omi2"]
    assert [grade.paper_format for grade in grades] == ["tinygsm", "omi1", "omi2", "tinygsm"]
    assert grades[3].correct  # the label is a record, not a grading rule


def test_float_noise_of_a_program_is_not_a_wrong_answer(grader):
    """0.1 * 3 * 60 is 18.000000000000004 in floats; math-verify alone calls that != 18."""
    noisy = TINYGSM.replace("result = eggs - eaten", "result = 0.1 * 3 * 60")
    omi1 = OMI1.replace("eggs - eaten\n</llm-code>", "0.1 * 3 * 60\n</llm-code>")
    off = TINYGSM.replace("result = eggs - eaten", "result = 18.5")
    grades = grader.grade([noisy, omi1, off, noisy], ["18", "18", "18", "19"])
    assert [grade.correct for grade in grades] == [True, True, False, False]
    assert grades[0].answer == "18.000000000000004"  # the value as the program returned it


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "1/2", True),
        ("18", "19", False),
        ("0.333333", "\\frac{1}{3}", True),  # a float rounds to 6 decimals against a fraction
        ("0.33", "\\frac{1}{3}", False),
        ("1.414214", "\\sqrt{2}", True),
        ("18.0000004", "18", False),  # ... but never against an integer
        ("18.000000000000004", "18", False),  # (why vote_key rounds float noise away first)
        ("333333/1000000", "\\frac{1}{3}", False),  # two fractions: exactly
        ("50\\%", "0.5", True),
        ("x=3", "3", True),
        ("2x+1=3", "3", False),  # verify() says equal one way round only
        ("(1, 2)", "[1, 2]", False),
        ("\\text{(A)}", "A", True),
    ],
)
def test_same_answers_is_math_verify_both_ways_round(grader, first, second, same):
    assert grader.same_answers([(first, second), (second, first)]) == [same, same]


def test_omi1_block_that_prints_its_answer(grader):
    grade = grader.grade([OMI1.replace("eggs - eaten", "print(eggs - eaten)")], ["13"])[0]
    assert (grade.correct, grade.answer) == (True, "13")


def test_failures_are_statuses_not_silent_zeros(grader):
    completions = [
        TINYGSM.replace("eggs - eaten", "eggs / 0"),
        TINYGSM.replace("result = eggs - eaten", "result = eggs - ("),  # does not parse
        "def simple_math_problem() -> int:\n    while True:\n        pass\n    return 1\n",
        OMI1[: OMI1.index("</llm-code>")],
        "I am not sure how many eggs are left.",
        TINYGSM.replace("return result", "return None"),
    ]
    grades = grader.grade(completions, ["13"] * len(completions))
    assert [grade.status for grade in grades] == [
        "exec_error",
        "parse_error",
        "timeout",
        "parse_error",
        "no_answer",
        "no_answer",
    ]
    assert not any(grade.correct for grade in grades)
    assert "ZeroDivisionError" in grades[0].detail


def test_grading_from_a_worker_thread(grader):
    """Where math-verify's SIGALRM timeouts break (RL reward workers run in threads)."""
    results = []
    thread = threading.Thread(target=lambda: results.append(grader.grade([TINYGSM, OMI2], ["13", "13"])))
    thread.start()
    thread.join(timeout=60)
    assert results and [grade.correct for grade in results[0]] == [True, True]


def test_pathological_expression_times_out_in_bounded_time(grader):
    grades = grader.grade(["So the answer is \\boxed{9^{9^{9^{9}}}}.", OMI2], ["5", "13"])
    assert grades[0].status == "timeout" and not grades[0].correct
    assert grades[1].correct


def test_gsm8k_reference_solutions_grade_correct(grader, shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k/test.jsonl").open()]
    golds = [row["answer"].rsplit("####", 1)[1].strip() for row in rows]
    assert sum("," in gold for gold in golds) > 0  # commas in numbers are part of what is tested
    perturbed = [
        (row["answer"], str(int(gold.replace(",", "")) + 1))
        for row, gold in list(zip(rows, golds, strict=True))[::10]
    ]
    completions = [row["answer"] for row in rows] + [answer for answer, _ in perturbed]
    grades = grader.grade(completions, golds + [gold for _, gold in perturbed])
    misses = [
        (gold, grade) for gold, grade in zip(golds, grades[: len(rows)], strict=True) if not grade.correct
    ]
    assert misses == []
    assert not any(grade.correct for grade in grades[len(rows) :])
    assert all(grade.status == "ok" for grade in grades)


def test_math500_reference_solutions_grade_correct(grader, shared_data):
    rows = [json.loads(line) for line in (shared_data / "math500/test.jsonl").open()]
    grades = grader.grade([row["solution"] for row in rows], [row["answer"] for row in rows])
    misses = [
        (row["unique_id"], row["answer"], grade)
        for row, grade in zip(rows, grades, strict=True)
        if not grade.correct
    ]
    assert len(misses) <= len(rows) // 100, misses


def test_world_solutions_grade_correct_in_every_format(grader):
    from echochamber.data.world import WorldConfig, world_records

    config = WorldConfig(seed=3, n_pretrain=10, n_rl=10, n_test=150, n_hard=60)
    for style in ("tinygsm", "omi1", "omi2"):
        records = world_records(config, "test", style) + world_records(config, "hard", style)
        grades = grader.grade([record.solution for record in records], [record.answer for record in records])
        assert {grade.format for grade in grades} == {style}
        assert [r.id for r, g in zip(records, grades, strict=True) if not g.correct] == [], style
        wrong = grader.grade(
            [record.solution for record in records[:20]], [f"{record.answer}1" for record in records[:20]]
        )
        assert not any(grade.correct for grade in wrong)


def test_summary_counts_formats_and_statuses(grader):
    summary = Summary()
    summary.add(grader.grade([TINYGSM, OMI2, "no idea"], ["13", "14", "13"]))
    assert (summary.total, summary.correct) == (3, 1)
    assert summary.format_counts["tinygsm"] == 1 and summary.status_counts["no_answer"] == 1
    text = summary.render()
    assert "accuracy 0.3333 (1/3)" in text and "no_answer=1" in text


def test_cli_round_trip(tmp_path, capsys):
    lines = [
        {"id": "a", "completion": TINYGSM, "gold": "13"},
        {"id": "b", "completion": OMI1, "gold": 13},
        {"id": "c", "completion": OMI2, "gold": "$14$"},
        {"id": "d", "completion": "no idea", "gold": "13"},
    ]
    source, graded = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    assert main(["grade", str(source), "--out", str(graded), "--workers", "1"]) == 0
    rows = [json.loads(line) for line in graded.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", "b", "c", "d"]
    assert [row["correct"] for row in rows] == [True, True, False, False]
    assert [row["format"] for row in rows] == ["tinygsm", "omi1", "omi2", "other"]
    assert [row["paper_format"] for row in rows] == ["tinygsm", "omi1", "omi2", "omi2"]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "no_answer"]
    assert rows[1]["gold"] == 13 and rows[0]["answer"] == "13"
    out = capsys.readouterr().out
    assert "accuracy 0.5000 (2/4)" in out and "no_answer=1" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"completion": "x", "gold": "1"}\n{"completion": "x", "gold": \n', ":2: not valid JSON"),
        ('{"completion": "x", "gold": "1"}\n\n{"gold": "1"}\n', ":3: field 'completion' is missing"),
        ('{"completion": "x"}\n', ":1: field 'gold' is missing"),
        ('{"completion": "x", "gold": true}\n', ":1: field 'gold' is not a string or number"),
        ('["completion", "gold"]\n', ":1: expected a JSON object"),
    ],
)
def test_cli_rejects_malformed_lines(tmp_path, capsys, content, message):
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    assert main(["grade", str(source)]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_file(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "absent.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_formats_beyond_the_default_are_graded_by_their_answer_rule(grader, fixtures_dir):
    registry = build_registry(["tinygsm", "omi1", "omi2", "metamathqa", "gsm8k"])
    rows = [json.loads(line) for line in (fixtures_dir / "formats/metamathqa.jsonl").open()]
    completions = [row["response"] for row in rows] + [
        "Janet has 16 - 3 = <<16-3=13>>13 eggs.\n#### 1,013",
        "Half of the eggs.\nThe answer is: \\frac{1}{2}",
    ]
    golds = ["\\sqrt{5}", "752", "1200", "1013", "0.5"]
    grades = grader.grade(completions, golds, registry)
    assert [grade.format for grade in grades] == ["metamathqa"] * 3 + ["gsm8k", "metamathqa"]
    assert [grade.answer for grade in grades] == ["\\sqrt{5}", "752", "1200", "1,013", "\\frac{1}{2}"]
    assert all(grade.correct and grade.status == "ok" for grade in grades)
    wrong = grader.grade(completions, ["\\sqrt{6}", "753", "1201", "1014", "0.25"], registry)
    assert [(grade.correct, grade.status) for grade in wrong] == [(False, "ok")] * 5
    # Under the default registry the same texts are `other`, read by math-verify from the text.
    assert {grade.format for grade in grader.grade(completions[1:2], golds[1:2])} == {"other"}


def test_a_rule_that_finds_no_answer_is_a_counted_no_answer(grader):
    spec = {
        "name": "final",
        "priority": 5,
        "recognise": {"contains": "Final"},
        "answer": {"regex_group": "Final: (\\d+)"},
    }
    grade = grader.grade(["Final: thirteen"], ["13"], build_registry([spec]))[0]
    assert (grade.format, grade.correct, grade.status, grade.answer) == ("final", False, "no_answer", None)


def test_cli_grades_under_the_formats_it_is_given(tmp_path, capsys):
    source, declared = tmp_path / "in.jsonl", tmp_path / "formats.yaml"
    source.write_text(json.dumps({"completion": "Work.\n#### 13", "gold": "13"}) + "\n")
    assert main(["grade", str(source), "--formats", "omi2,gsm8k", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.0000 (1/1)" in out and "gsm8k" in out and "tinygsm" not in out
    declared.write_text(
        "formats:\n  - omi2\n  - {name: hashes, priority: 1, recognise: {contains: '####'}, answer: last_number}\n"
    )
    assert main(["grade", str(source), "--formats", str(declared), "--workers", "1"]) == 0
    assert "hashes " in capsys.readouterr().out
    assert main(["grade", str(source), "--formats", "omi2,other"]) == 2
    assert "unknown format preset 'other'" in capsys.readouterr().err
