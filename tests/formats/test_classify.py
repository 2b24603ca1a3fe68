"""The default registry's formats (tinygsm, omi1, omi2 and `other`): each format, and the look-alikes
that must not fool it. The registry itself (its vocabulary, user formats, priorities) is
test_registry.py's."""

from __future__ import annotations

import json
import time

import pytest

from echochamber.formats import PAPER_FORMATS
from echochamber.formats.classify import closing_brace, is_degenerate, paper_format
from echochamber.formats.registry import default_registry

REGISTRY = default_registry()
analyze, classify = REGISTRY.analyze, REGISTRY.classify

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
    "<llm-code-output>\n13\n</llm-code-output>\nThus Janet has \\boxed{13} eggs left."
)

OMI2 = "Janet starts with 16 eggs and eats 3.\nSo she has $16 - 3 = 13$ eggs left.\nThus she has \\boxed{13} eggs."


def test_each_format_is_recognised():
    assert classify(TINYGSM) == "tinygsm"
    assert classify(OMI1) == "omi1"
    assert classify(OMI2) == "omi2"
    assert classify("Janet has 16 - 3 = 13 eggs.\n#### 13") == "other"  # GSM8K is not in the default registry
    assert all(classify(text) in REGISTRY.names for text in (TINYGSM, OMI1, OMI2, "", "13"))
    assert REGISTRY.names == ("tinygsm", "omi1", "omi2", "other")


def test_tinygsm_analysis_points_at_the_function():
    analysis = analyze(TINYGSM)
    assert analysis.entry == "simple_math_problem"
    assert analysis.code is not None and analysis.code.rstrip().endswith("return result")


def test_tinygsm_tolerates_trailing_garbage_and_keeps_only_the_function():
    garbage = (
        "\nQuestion: Tom has 5 apples and buys 3 more.\n\ndef simple_math_problem() -> int:\n    apples = ("
    )
    analysis = analyze(TINYGSM + garbage)
    assert analysis.format == "tinygsm"
    assert "Question" not in analysis.code and "apples" not in analysis.code


def test_tinygsm_keeps_imports_written_above_the_function():
    analysis = analyze("import math\n\n" + TINYGSM.replace("eggs - eaten", "math.floor(eggs - eaten)"))
    assert analysis.format == "tinygsm"
    assert analysis.code.startswith("import math\n")


def test_docstring_with_unindented_lines_does_not_end_the_function():
    text = 'def simple_math_problem() -> int:\n    """\nJanet has 16 eggs.\nShe eats 3.\n    """\n    return 16 - 3\n'
    analysis = analyze(text)
    assert analysis.format == "tinygsm" and "return 16 - 3" in analysis.code


def test_word_def_in_a_question_or_prose_is_not_code():
    defective = "Of 40 parts, 12 were defective, so 40 - 12 = 28 were fine. The answer is \\boxed{28}."
    assert classify(defective) == "omi2"
    prose = "By def of a prime number, 7 has no divisors other than 1 and 7.\nSo the answer is \\boxed{7}."
    assert classify(prose) == "omi2"
    assert analyze(prose).code is None


def test_function_inside_a_prose_solution_is_omi2_not_tinygsm():
    text = (
        "We count with a short program:\n```python\ndef count():\n    return 90\n```\n"
        "Running this code, we get the answer:\n\\[ \\boxed{90} \\]"
    )
    assert classify(text) == "omi2"


@pytest.mark.parametrize(
    ("text", "ours", "paper"),
    [
        (TINYGSM, "tinygsm", "tinygsm"),
        (OMI1, "omi1", "omi1"),
        (OMI2, "omi2", "omi2"),
        # Where the repairs apply, the paper's substring rule says otherwise:
        ("Of 40 parts, 12 were defective, so 40 - 12 = 28 were fine. The answer is \\boxed{28}.", "omi2", "tinygsm"),
        (
            "We count with a short program:\n```python\ndef count():\n    return 90\n```\n"
            "Running this code, we get the answer:\n\\[ \\boxed{90} \\]",
            "omi2",
            "tinygsm",
        ),
        ("def f(): " * 60, "other", "tinygsm"),  # degenerate text that contains "def"
        (OMI2 + " \\boxed{13}" * 80, "other", "omi2"),  # boxed spam is text to the paper
        (OMI1[: OMI1.index("</llm-code>")], "other", "omi1"),  # an unterminated block
        ("Janet has 16 - 3 = 13 eggs left.", "other", "omi2"),  # no boxed answer
    ],
)
def test_paper_rule_is_the_substring_rule_and_differs_where_ours_repairs_it(text, ours, paper):
    assert classify(text) == ours
    assert paper_format(text) == paper and paper in PAPER_FORMATS


def test_truncated_code_is_other_with_a_reason():
    truncated = TINYGSM[: TINYGSM.index("result =")]
    analysis = analyze(truncated)
    assert analysis.format == "other" and "never returns" in analysis.problem
    cut_mid_expression = TINYGSM[: TINYGSM.index("eggs - eaten") + 6]
    analysis = analyze(cut_mid_expression)
    assert analysis.format == "other" and "does not parse" in analysis.problem
    unterminated = OMI1[: OMI1.index("</llm-code>")]
    analysis = analyze(unterminated)
    assert analysis.format == "other" and "unterminated" in analysis.problem


def test_omi1_runs_the_first_block_and_ignores_the_models_output():
    text = OMI1.replace("\\boxed{13}", "\\boxed{99}") + "\n<llm-code>\n1 / 0\n</llm-code>"
    analysis = analyze(text)
    assert analysis.format == "omi1"
    assert analysis.code == "eggs = 16\neaten = 3\neggs - eaten"
    assert analysis.entry is None


def test_boxed_spam_to_the_length_limit_is_other():
    spam = OMI2 + " \\boxed{13}" * 80
    assert is_degenerate(spam)
    assert classify(spam) == "other"
    assert analyze(spam).code is None  # the text still gets read for an answer


def test_repetition_loops_are_other():
    loop = "Janet has 16 eggs. " + "Then she eats 3 eggs and has 13. " * 40
    assert classify(loop) == "other"
    near_loop = OMI2 + "".join(
        f"\nStep {i}: add one." for i in range(200)
    )  # not exact: caught by compression
    assert classify(near_loop) == "other"
    assert classify(OMI2 + "\n" * 300) == "other"
    # A looping OMI1 completion is not format convergence either, but its code still runs.
    looping_omi1 = OMI1 + " So the answer is 13." * 30
    assert classify(looping_omi1) == "other" and analyze(looping_omi1).code is not None


def test_bare_boxed_answer_is_not_a_worked_solution():
    assert classify("\\boxed{13}") == "other"
    assert classify("We have $16 - 3 = \\boxed{13}$.") == "omi2"


def test_real_solutions_are_not_called_degenerate(shared_data):
    """Reference solutions are the positive controls: every one must keep its format."""
    omi2 = [json.loads(line)["generated_solution"] for line in (shared_data / "samples/omi2.jsonl").open()]
    math500 = [json.loads(line)["solution"] for line in (shared_data / "math500/test.jsonl").open()]
    gsm8k = [json.loads(line)["answer"] for line in (shared_data / "gsm8k/test.jsonl").open()]
    assert [text for text in omi2 + math500 if classify(text) != "omi2"] == []
    assert not any(is_degenerate(text) for text in gsm8k)


def test_classify_is_fast_on_long_inputs():
    long_text = TINYGSM + "\nQuestion: Tom has 5 apples. def x(\n" * 300
    start = time.perf_counter()
    for _ in range(20):
        classify(long_text)
        classify(OMI2 * 20)
    assert (time.perf_counter() - start) / 40 < 0.02


@pytest.mark.parametrize("text", ["", "   \n", "((((" * 500, "def f(" + "(" * 2000])
def test_pathological_text_is_other(text):
    assert classify(text) == "other"


def test_closing_brace_counts_nesting_and_says_when_a_brace_never_closes():
    text = "\\boxed{\\frac{1}{2}} and \\boxed{3"
    assert text[closing_brace(text, 6)] == "}" and closing_brace(text, 6) == 18
    assert closing_brace(text, text.rindex("{")) is None
