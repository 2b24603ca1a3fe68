"""Render one world problem as a row of each real dataset the study pretrains on.

Field names and surface forms copy the real data, so a model pretrained on the world learns the
same format markers the Echo Chamber paper tracks:
- TinyGSM (`question`, `code`): `def simple_math_problem() -> int:`, a docstring repeating the
  question one sentence a line, one variable per quantity, the steps, `result = ...`, `return result`.
- OpenMathInstruct-1 (`question`, `generated_solution`, `expected_answer`): "Let's solve this problem
  using Python code.", an `<llm-code>` block whose last line is an expression, its
  `<llm-code-output>`, and a closing sentence with `\\boxed{}`.
- OpenMathInstruct-2 (`problem`, `generated_solution`, `expected_answer`, `problem_source`): prose
  with LaTeX arithmetic (`$5 \\times 3 = 15$`) ending in `\\boxed{}`.
- GSM8K (`question`, `answer`): prose with `<<a*b=c>>` calculator annotations and `#### N`.

The code formats let the interpreter do the arithmetic; OMI2 and GSM8K write every result out.
That difference is what RL later selects on, so the text formats must state each result
themselves. Division in the world is always exact, so code uses `//` and every result is an int.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from echochamber.errors import UserError

if TYPE_CHECKING:  # world.py imports this module; the dataclasses are only needed for annotations
    from echochamber.data.world import Problem, Step

RENDER_STYLES = ("tinygsm", "omi1", "omi2", "gsm8k")

_CODE_OPS = {"+": "+", "-": "-", "*": "*", "/": "//"}
_GSM8K_OPS = {"+": "+", "-": "-", "*": "*", "/": "/"}
_LATEX_OPS = {"+": "+", "-": "-", "*": "\\times", "/": "/"}
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _say(step: Step, calc: str) -> str:
    return step.statement.replace("{calc}", calc)


def _boxed(answer: int) -> str:
    return "\\boxed{" + str(answer) + "}"


def _values(problem: Problem) -> dict[str, int]:
    return {q.name: q.value for q in problem.quantities} | {s.name: s.value for s in problem.steps}


def _code_lines(problem: Problem) -> list[str]:
    """One assignment per quantity, then one per step (the last step is assigned too)."""
    lines = [f"{q.name} = {q.value}" for q in problem.quantities]
    lines += [f"{s.name} = {s.left} {_CODE_OPS[s.op]} {s.right}" for s in problem.steps]
    return lines


def _tinygsm(problem: Problem) -> str:
    docstring = [f"    {sentence}" for sentence in _SENTENCE_END.split(problem.question)]
    body = [f"    {line}" for line in _code_lines(problem)]
    return "\n".join(
        [
            "def simple_math_problem() -> int:",
            "    '''",
            *docstring,
            "    '''",
            *body,
            f"    result = {problem.steps[-1].name}",
            "    return result",
        ]
    )


def _omi1(problem: Problem) -> str:
    # The block ends in a bare expression (the last step), whose value the interpreter echoes.
    last = problem.steps[-1]
    lines = _code_lines(problem)[:-1] + [f"{last.left} {_CODE_OPS[last.op]} {last.right}"]
    return "\n".join(
        [
            "Let's solve this problem using Python code.",
            "<llm-code>",
            *lines,
            "</llm-code>",
            "<llm-code-output>",
            str(problem.answer),
            "</llm-code-output>",
            "Thus " + _say(last, _boxed(problem.answer)),
        ]
    )


def _omi2(problem: Problem) -> str:
    values = _values(problem)
    lines = [
        _capitalize(_say(s, f"${values[s.left]} {_LATEX_OPS[s.op]} {values[s.right]} = {s.value}$"))
        for s in problem.steps
    ]
    lines.append("Thus, " + _say(problem.steps[-1], _boxed(problem.answer)))
    return "\n".join(lines)


def _gsm8k(problem: Problem) -> str:
    values = _values(problem)
    lines = []
    for s in problem.steps:
        a, op, b = values[s.left], _GSM8K_OPS[s.op], values[s.right]
        lines.append(_capitalize(_say(s, f"{a} {op} {b} = <<{a}{op}{b}={s.value}>>{s.value}")))
    lines.append(f"#### {problem.answer}")
    return "\n".join(lines)


_RENDERERS = {"tinygsm": _tinygsm, "omi1": _omi1, "omi2": _omi2, "gsm8k": _gsm8k}


def solution_text(problem: Problem, style: str) -> str:
    """The solution a pretraining document appends after the question, in one of RENDER_STYLES."""
    renderer = _RENDERERS.get(style)
    if renderer is None:
        raise UserError(f"unknown render style '{style}' (choose from {', '.join(RENDER_STYLES)})")
    return renderer(problem)


def render(problem: Problem, style: str) -> dict[str, str]:
    """The dataset row for `problem` in `style`, with the real dataset's field names."""
    text = solution_text(problem, style)
    answer = str(problem.answer)
    if style == "tinygsm":
        return {"question": problem.question, "code": text}
    if style == "omi1":
        return {"question": problem.question, "generated_solution": text, "expected_answer": answer}
    if style == "omi2":
        return {
            "problem": problem.question,
            "generated_solution": text,
            "expected_answer": answer,
            "problem_source": "world",
        }
    return {"question": problem.question, "answer": text}
