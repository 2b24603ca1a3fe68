"""One adapter per public dataset: where it lives and how one of its rows becomes a `Record`.

Each source is a `SourceSpec` in `SOURCES`: where it lives on the hub, which fields a row must have,
and a plain function from a row to (prompt, solution, gold answer). Rules worth knowing:
- OMI1 keeps only rows whose `is_correct` is true when that column exists (the real dataset holds
  the wrong Mixtral solutions too); other sources keep every row.
- pretraining-only text (FineMath, Algebraic-Stack) has prompt "" and the document in `solution`;
  TinyGSM and the text sources have no gold answer (answer "").
- a gold answer the rules cannot extract (GSM8K without `#### N`, MetaMathQA without its closing
  `The answer is: X` line, MATH without `\\boxed{}`, a non-integer AIME answer) is None here and a
  `UserError` naming the row when it is read (sources.py), never a silent empty answer.
Reading the rows (local files, save_to_disk folders, the hub) is sources.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from echochamber.errors import UserError
from echochamber.formats.classify import closing_brace

Row = Mapping[str, Any]
# What converting one row yields: (prompt, solution, gold answer); a None answer means the source
# promises a gold answer but this row's could not be extracted.
Fields = tuple[str, str, str | None]


@dataclass(frozen=True)
class SourceSpec:
    """How to find one public dataset and turn its rows into `Record`s."""

    name: str
    hub_id: str
    required: tuple[str, ...]  # fields every row must carry (non-null)
    style: str  # one of records.SOLUTION_STYLES
    convert: Callable[[Row], Fields]
    gold_rule: str = ""  # how the gold answer is found, for the error when it is not
    hub_config: str | None = None
    # Glob inside the hub repo (with "{split}") read with the json builder, for repos whose own
    # loader is a script that `datasets` no longer runs (proof-pile-2).
    hub_files: str | None = None
    default_split: str = "train"
    keep: Callable[[Row], bool] | None = None  # rows for which this is False are dropped


# --- gold-answer extraction ------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_METAMATH_ANSWER = "The answer is:"


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces kept.

    `\\boxed 5` (no braces, which a few MATH solutions use) gives the token after it. None when
    there is no box or its braces never close.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    if not text.startswith("{", start):
        token = re.match(r"[^\s$]+", text[start:])
        return token.group(0) if token else None
    end = closing_brace(text, start)
    return text[start + 1 : end] if end is not None else None


def gsm8k_answer(solution: str) -> str | None:
    """The number after GSM8K's final `#### `, thousands commas removed ("#### 1,000" -> "1000")."""
    marker = solution.rfind("####")
    if marker < 0:
        return None
    answer = solution[marker + 4 :].strip().replace(",", "")
    return answer or None


def metamath_answer(response: str) -> str | None:
    """The X of MetaMathQA's final `The answer is: X` line ("The answer is: \\frac{3}{4}" -> "\\frac{3}{4}")."""
    marker = response.rfind(_METAMATH_ANSWER)
    if marker < 0:
        return None
    answer = response[marker + len(_METAMATH_ANSWER) :].split("\n", 1)[0].strip()
    return answer or None


def aime_answer(value: Any) -> str | None:
    """AIME answers as an integer string: the hub stores 20 of 2022-24's 90 zero-padded ("033" -> "33")."""
    try:
        return str(int(str(value).strip()))
    except ValueError:
        return None


# --- row -> (prompt, solution, answer), one plain function per schema -----------------------------


def _tinygsm(row: Row) -> Fields:
    return str(row["question"]), str(row["code"]), ""


def _omi1(row: Row) -> Fields:
    return str(row["question"]), str(row["generated_solution"]), str(row["expected_answer"])


def _omi2(row: Row) -> Fields:
    return str(row["problem"]), str(row["generated_solution"]), str(row["expected_answer"])


def _gsm8k(row: Row) -> Fields:
    # The solution keeps GSM8K's `<<a*b=c>>` calculator annotations and `#### N` line verbatim.
    return str(row["question"]), str(row["answer"]), gsm8k_answer(str(row["answer"]))


def _math(row: Row) -> Fields:
    solution = str(row["solution"])
    answer = row.get("answer")
    return str(row["problem"]), solution, str(answer) if answer is not None else last_boxed(solution)


def _aime(row: Row) -> Fields:
    solution = row.get("solution")  # AIME dumps of later years carry no solutions
    return str(row["problem"]), "" if solution is None else str(solution), aime_answer(row["answer"])


def _metamathqa(row: Row) -> Fields:
    # `query` is the (possibly rephrased) question the response answers; `original_question` is not used.
    return str(row["query"]), str(row["response"]), metamath_answer(str(row["response"]))


def _text(row: Row) -> Fields:
    return "", str(row["text"]), ""


def _omi1_keep(row: Row) -> bool:
    # Absent column -> keep (a pre-filtered dump); present -> only rows judged correct.
    return "is_correct" not in row or row["is_correct"] is True


_MATH_GOLD = "the 'answer' field or the last \\boxed{} of 'solution'"

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec("tinygsm", "TinyGSM/TinyGSM", ("question", "code"), "tinygsm", _tinygsm),
        SourceSpec(
            "omi1",
            "nvidia/OpenMathInstruct-1",
            ("question", "generated_solution", "expected_answer"),
            "omi1",
            _omi1,
            keep=_omi1_keep,
        ),
        SourceSpec(
            "omi2",
            "nvidia/OpenMathInstruct-2",
            ("problem", "generated_solution", "expected_answer"),
            "omi2",
            _omi2,
        ),
        SourceSpec(
            "gsm8k",
            "openai/gsm8k",
            ("question", "answer"),
            "gsm8k",
            _gsm8k,
            "a final '#### N' line",
            hub_config="main",
        ),
        # MATH's original hub home (hendrycks/competition_math) is gone; this is the usual parquet copy.
        SourceSpec(
            "math", "DigitalLearningGmbH/MATH-lighteval", ("problem", "solution"), "math", _math, _MATH_GOLD
        ),
        SourceSpec(
            "math500",
            "HuggingFaceH4/MATH-500",
            ("problem", "solution"),
            "math",
            _math,
            _MATH_GOLD,
            default_split="test",
        ),
        SourceSpec(
            "aime", "AI-MO/aimo-validation-aime", ("problem", "answer"), "math", _aime, "an integer 'answer'"
        ),
        SourceSpec(
            "metamathqa",
            "meta-math/MetaMathQA",
            ("query", "response"),
            "metamathqa",
            _metamathqa,
            "a final 'The answer is: X' line of 'response'",
        ),
        SourceSpec(
            "finemath", "HuggingFaceTB/finemath", ("text",), "text", _text, hub_config="finemath-3plus"
        ),
        SourceSpec(
            "algebraic-stack",
            "EleutherAI/proof-pile-2",
            ("text",),
            "text",
            _text,
            hub_files="algebraic-stack/{split}/*.jsonl.zst",  # needs the `zstandard` package
        ),
    )
}

def get_spec(name: str) -> SourceSpec:
    if name not in SOURCES:
        raise UserError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[name]
