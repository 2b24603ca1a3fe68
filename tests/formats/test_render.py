"""World renderers: real field names and surface forms, and every rendered answer actually right.

The generated code is our own trusted output, so it is executed in-process here (generated *model*
completions never are: they go through the sandbox).
"""

from __future__ import annotations

import ast
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from echochamber.config import from_dict
from echochamber.data.world import Problem, WorldConfig, generate_world
from echochamber.errors import UserError
from echochamber.formats.render import RENDER_STYLES, render, solution_text

FIELDS = {
    "tinygsm": {"question", "code"},
    "omi1": {"question", "generated_solution", "expected_answer"},
    "omi2": {"problem", "generated_solution", "expected_answer", "problem_source"},
    "gsm8k": {"question", "answer"},
}
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
LATEX_CALC = re.compile(r"\$(\d+) (\+|-|\\times|/) (\d+) = (\d+)\$")
ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>(\S+)")
OMI1 = re.compile(
    r"\ALet's solve this problem using Python code\.\n<llm-code>\n(.*)\n</llm-code>\n"
    r"<llm-code-output>\n(.*)\n</llm-code-output>\n(Thus .*)\Z",
    re.DOTALL,
)


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    config = from_dict(WorldConfig, {"n_pretrain": 400, "n_rl": 0, "n_test": 200, "n_hard": 200})
    world = generate_world(config)
    return world["pretrain"] + world["test"] + world["hard"]


def exact(a: int, op: str, b: int) -> Fraction:
    return {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, b)}[op]


def test_rows_have_the_real_field_names(problems: list[Problem]) -> None:
    for style in RENDER_STYLES:
        for p in problems[:20]:
            row = render(p, style)
            assert set(row) == FIELDS[style]
            assert row.get("question", row.get("problem")) == p.question
            assert row.get("expected_answer", str(p.answer)) == str(p.answer)


def test_generated_rows_match_real_omi2_and_gsm8k_rows(shared_data: Path, problems: list[Problem]) -> None:
    real_omi2 = json.loads((shared_data / "samples" / "omi2.jsonl").read_text().splitlines()[0])
    real_gsm8k = json.loads((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[0])
    ours_omi2, ours_gsm8k = render(problems[-1], "omi2"), render(problems[-1], "gsm8k")
    # side by side when run with -s: the surface forms a reader should compare
    print(
        "REAL OMI2:", real_omi2["generated_solution"][-200:], "\nOURS OMI2:", ours_omi2["generated_solution"]
    )
    print("REAL GSM8K:", real_gsm8k["answer"], "\nOURS GSM8K:", ours_gsm8k["answer"])
    assert set(ours_omi2) == set(real_omi2)
    assert set(ours_gsm8k) == set(real_gsm8k)
    for row in (real_omi2, ours_omi2):
        assert BOXED.search(row["generated_solution"]) and isinstance(row["expected_answer"], str)
        assert "<llm-code>" not in row["generated_solution"] and "def " not in row["generated_solution"]
    for row in (real_gsm8k, ours_gsm8k):
        assert ANNOTATION.search(row["answer"])
        assert re.search(r"\n#### -?\d+\Z", row["answer"])


def test_tinygsm_functions_run_and_return_the_answer(problems: list[Problem]) -> None:
    for p in problems:
        code = render(p, "tinygsm")["code"]
        lines = code.split("\n")
        assert lines[0] == "def simple_math_problem() -> int:"
        assert lines[-2:] == [f"    result = {p.steps[-1].name}", "    return result"]
        docstring = [line.strip() for line in code.split("'''")[1].split("\n") if line.strip()]
        assert " ".join(docstring) == p.question  # repeats the question, one sentence a line
        for q in p.quantities:
            assert f"    {q.name} = {q.value}" in lines  # one variable per quantity
        namespace: dict[str, object] = {}
        exec(code, namespace)
        result = namespace["simple_math_problem"]()  # type: ignore[operator]
        assert type(result) is int and result == p.answer, p.id


def test_omi1_code_block_ends_in_an_expression_that_evaluates_to_the_answer(problems: list[Problem]) -> None:
    for p in problems:
        match = OMI1.match(solution_text(p, "omi1"))
        assert match, p.id
        code, output, closing = match.groups()
        *body, last = code.split("\n")
        assert isinstance(ast.parse(code).body[-1], ast.Expr)
        namespace: dict[str, object] = {}
        exec("\n".join(body), namespace)
        assert eval(last, namespace) == p.answer, p.id  # what the official reward code checks
        assert output == str(p.answer)
        assert BOXED.findall(closing) == [str(p.answer)]


def test_omi2_writes_every_result_itself_and_boxes_the_answer(problems: list[Problem]) -> None:
    for p in problems:
        text = solution_text(p, "omi2")
        assert BOXED.findall(text) == [str(p.answer)]
        assert text.splitlines()[-1].startswith("Thus, ")
        calcs = LATEX_CALC.findall(text)
        assert len(calcs) == len(p.steps), p.id  # one written-out calculation per step
        for (a, op, b, c), step in zip(calcs, p.steps, strict=True):
            assert exact(int(a), "*" if op == "\\times" else op, int(b)) == int(c) == step.value, p.id
        assert "<llm-code>" not in text and "def " not in text and "<<" not in text


def test_gsm8k_annotations_are_right_and_the_final_line_is_the_answer(problems: list[Problem]) -> None:
    for p in problems:
        text = solution_text(p, "gsm8k")
        assert text.splitlines()[-1] == f"#### {p.answer}"
        annotations = ANNOTATION.findall(text)
        assert len(annotations) == len(p.steps), p.id
        for (expression, value, shown), step in zip(annotations, p.steps, strict=True):
            a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)", expression).groups()  # type: ignore[union-attr]
            assert exact(int(a), op, int(b)) == int(value) == step.value, p.id
            assert shown == value or shown.rstrip(".,") == value


def test_unknown_style_is_a_user_error(problems: list[Problem]) -> None:
    with pytest.raises(UserError, match="unknown render style 'latex'"):
        solution_text(problems[0], "latex")
    with pytest.raises(UserError, match="unknown render style"):
        render(problems[0], "math")
