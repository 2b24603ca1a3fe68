"""Dataset adapters: gold answers extracted by each schema's rule (no files needed)."""

from __future__ import annotations

from echochamber.data.adapters import SOURCES, aime_answer, gsm8k_answer, last_boxed, metamath_answer


def test_last_boxed_handles_nesting_and_edge_cases() -> None:
    assert last_boxed("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}") == "\\sqrt{\\frac{a}{b}}"
    assert last_boxed("answer: \\boxed 5$.") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # never closes
    assert last_boxed("no box here") is None


def test_gsm8k_and_aime_answers_and_every_adapter_named_by_its_key() -> None:
    assert gsm8k_answer("She pays 1000 + 200 = 1,200 dollars.\n#### 1,200") == "1200"
    assert gsm8k_answer("no marker") is None
    assert aime_answer("033") == "33" and aime_answer(7) == "7" and aime_answer("x") is None
    assert metamath_answer("x = 3.\nThe answer is: \\frac{1}{2} \n") == "\\frac{1}{2}"
    assert metamath_answer("The answer is: 4\nThe answer is: 5") == "5"  # the last one
    assert metamath_answer("The answer is:  ") is None and metamath_answer("no line") is None
    assert all(spec.name == name for name, spec in SOURCES.items())
