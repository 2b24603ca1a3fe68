"""The format registry: the built-ins on real rows, priorities, the rule vocabulary, and what a
declaration can never change (`other`, degenerate text)."""

from __future__ import annotations

import json

import pytest

from echochamber.config import from_dict
from echochamber.data.sources import load_source
from echochamber.data.world import WorldConfig, generate_world
from echochamber.errors import UserError
from echochamber.formats.registry import (
    DEFAULT_FORMATS,
    FormatSpec,
    build_registry,
    builtin_names,
    default_registry,
    format_names,
)
from echochamber.formats.render import RENDER_STYLES, solution_text
from echochamber.verify.normalize import normalize_gold

CATALOGUE = build_registry(["tinygsm", "omi1", "omi2", "metamathqa", "gsm8k"])
LOOP = "Then she eats 3 eggs and has 13. " * 40


def declared(**fields) -> FormatSpec:
    return from_dict(FormatSpec, {"name": "mine", "priority": 5, "answer": "text", **fields})


def test_the_builtins_are_the_packaged_files_and_the_default_is_the_studys_three():
    assert set(builtin_names()) == {"tinygsm", "omi1", "omi2", "metamathqa", "gsm8k"}
    assert default_registry().names == (*DEFAULT_FORMATS, "other") == ("tinygsm", "omi1", "omi2", "other")
    assert CATALOGUE.names[-1] == "other"


def test_every_gsm8k_row_is_gsm8k_and_its_answer_is_the_final_line(shared_data):
    rows = [
        json.loads(line)
        for split in ("train", "test")
        for line in (shared_data / f"gsm8k/{split}.jsonl").open()
    ]
    analyses = [CATALOGUE.analyze(row["answer"]) for row in rows]
    assert {analysis.format for analysis in analyses} == {"gsm8k"}
    golds = [normalize_gold(row["answer"].rsplit("####", 1)[1]) for row in rows]
    assert [normalize_gold(analysis.answer) for analysis in analyses] == golds
    # Without gsm8k in the registry the same rows are `other`, as they were before registries.
    assert {default_registry().classify(row["answer"]) for row in rows[:200]} == {"other"}


def test_omi2_and_math500_solutions_stay_omi2_beside_every_builtin(shared_data):
    """32 OMI2 rows write "The answer is:" with the answer boxed on the next line: not MetaMathQA."""
    omi2 = [json.loads(line)["generated_solution"] for line in (shared_data / "samples/omi2.jsonl").open()]
    math500 = [json.loads(line)["solution"] for line in (shared_data / "math500/test.jsonl").open()]
    assert sum("The answer is:" in text for text in omi2) == 32
    assert [text for text in omi2 + math500 if CATALOGUE.classify(text) != "omi2"] == []


def test_metamathqa_rows_win_over_their_gsm8k_and_boxed_markers(fixtures_dir):
    rows = [json.loads(line) for line in (fixtures_dir / "formats/metamathqa.jsonl").open()]
    analyses = [CATALOGUE.analyze(row["response"]) for row in rows]
    assert [a.format for a in analyses] == ["metamathqa"] * 3
    assert [a.answer for a in analyses] == ["\\sqrt{5}", "752", "1200"]
    assert all(a.how == "extracted" for a in analyses)
    # Each row also carries a later format's marker: only the priorities decide.
    assert "\\boxed{" in rows[0]["response"] and "#### 752" in rows[1]["response"]
    without = build_registry(["omi2", "gsm8k"])
    assert [without.classify(row["response"]) for row in rows] == ["omi2", "gsm8k", "gsm8k"]


def test_tinygsm_and_omi1_fixture_rows(fixtures_dir):
    for name in ("tinygsm", "omi1"):
        records = load_source(
            name, fixtures_dir / "sources" / f"{name}.{'jsonl' if name == 'tinygsm' else 'parquet'}"
        )
        assert records and {CATALOGUE.classify(record.solution) for record in records} == {name}
        assert all(CATALOGUE.analyze(record.solution).code for record in records)


def test_every_world_rendering_in_a_builtin_format_is_recognised_as_it():
    config = from_dict(WorldConfig, {"n_pretrain": 60, "n_rl": 0, "n_test": 0, "n_hard": 0})
    problems = generate_world(config, ("pretrain",))["pretrain"]
    tracked = [style for style in RENDER_STYLES if style in builtin_names()]
    assert tracked == list(RENDER_STYLES)  # every world style is a built-in format
    for style in tracked:
        labels = {CATALOGUE.classify(solution_text(problem, style)) for problem in problems}
        assert labels == {style}, style


def test_priority_not_list_order_decides_between_formats_that_both_match():
    text = "Janet has 13 eggs.\n#### 13\nThe answer is: 13"
    early = declared(name="hashes", priority=35, recognise={"regex": "^####"}, answer="last_number")
    assert build_registry(["gsm8k", "metamathqa"]).classify(text) == "metamathqa"
    assert build_registry(["metamathqa", early]).classify(text) == "metamathqa"  # 30 before 35
    first = declared(name="hashes", priority=25, recognise={"regex": "^####"}, answer="last_number")
    registry = build_registry(["metamathqa", first])
    assert registry.classify(text) == "hashes" and registry.names == ("metamathqa", "hashes", "other")


def test_degenerate_text_is_other_whatever_a_declared_format_says():
    eggs = declared(recognise={"contains": "eggs"}, answer="last_number")
    registry = build_registry(["omi2", eggs])
    assert registry.classify("Janet has 13 eggs.") == "mine"
    looping = registry.analyze("Janet has 13 eggs. " + LOOP)
    assert looping.format == "other"
    assert looping.answer == "13"  # the matched format still reads the answer: the reward judges answers


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "other", "recognise": "boxed"}, "'other' is not a format that can be declared"),
        ({"name": "Other", "recognise": "boxed"}, "'other' is not a format"),
        ({"name": "two words", "recognise": "boxed"}, "must be a letter"),
        ({"recognise": {"regexp": "x"}}, "unknown block 'regexp' (known: contains"),
        ({"recognise": {"regex": "(unclosed"}}, "not a valid regular expression"),
        ({"recognise": {"regex": ""}}, "needs a non-empty string"),
        ({"recognise": {"contains": "a", "regex": "b"}}, "one block name or a one-key mapping"),
        ({"recognise": {"code_block": {"open": "<a>"}}}, "missing option 'close'"),
        ({"recognise": {"boxed": {"min_chars": 3}}}, "unknown option 'min_chars'"),
        ({"recognise": {"boxed": {"min_solution_chars": -1}}}, "must be an integer >= 0"),
        ({"recognise": {"all": []}}, "needs a non-empty list of rules"),
        ({"recognise": {"not": {"exec": "import os"}}}, "unknown block 'exec'"),
        ({"recognise": "boxed", "answer": {"regex_group": "no group"}}, "has no group 1"),
        (
            {"recognise": "boxed", "answer": {"regex_group": {"pattern": "(?P<x>.)", "group": "y"}}},
            "has no group 'y'",
        ),
        ({"recognise": "boxed", "answer": {"python": "print(1)"}}, "unknown block 'python'"),
        ({"recognise": "boxed", "answer": {"boxed": 3}}, "takes no argument"),
    ],
)
def test_a_bad_declaration_is_one_line_naming_where(fields, message):
    with pytest.raises(UserError, match="format") as error:
        declared(**fields)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "at least one format"),
        (["omi2", "omi2"], "listed twice"),
        (
            ["omi2", {"name": "boxy", "priority": 50, "recognise": "boxed", "answer": "text"}],
            "share priority 50",
        ),
        (
            [{"name": "omi2", "priority": 5, "recognise": "boxed", "answer": "text"}],
            "is built in and declared differently",
        ),
        (["mmlu"], "unknown format preset 'mmlu' (known: gsm8k, metamathqa, omi1, omi2, tinygsm)"),
    ],
)
def test_a_bad_registry_is_one_line(entries, message):
    with pytest.raises(UserError) as error:
        build_registry(entries)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("recognise", "matches", "misses"),
    [
        ({"contains": "Answer:"}, "So.\nAnswer: 4", "answer: 4"),
        ({"starts_with": "Solution:"}, "\n  Solution: 4", "My Solution: 4"),
        ({"regex": "^Answer: \\d+$"}, "Work.\nAnswer: 4\n", "Answer: four"),
        ({"code_block": {"open": "```python", "close": "```"}}, "Run:\n```python\nx = 4\nx\n```", "no code"),
        ("python_function", "def f():\n    return 4\n", "We define f."),
        ({"boxed": {"min_solution_chars": 5}}, "Two and two: \\boxed{4}", "\\boxed{4}"),
        ({"all": [{"contains": "A"}, {"contains": "B"}]}, "A B", "A only"),
        ({"any": [{"contains": "A"}, {"contains": "B"}]}, "B only", "neither"),
        ({"not": {"contains": "def"}}, "plain prose", "def f(): pass"),
    ],
)
def test_each_recogniser(recognise, matches, misses):
    registry = build_registry([declared(recognise=recognise)])
    assert registry.classify(matches) == "mine"
    assert registry.classify(misses) == "other"


def test_broken_code_is_other_with_a_reason_and_no_answer():
    block = declared(recognise={"code_block": {"open": "```python", "close": "```"}},
                     answer={"code_block": {"open": "```python", "close": "```"}})  # fmt: skip
    broken = build_registry([block]).analyze("Run:\n```python\nx = 4\n")
    assert broken.format == "other" and broken.problem == "unterminated ```python block"
    # Inside `not`, a broken attempt is simply not a match.
    negated = build_registry([declared(recognise={"not": "python_function"})])
    assert negated.classify("def f(:\n    return 4\n") == "mine"


@pytest.mark.parametrize(
    ("answer", "text", "reading"),
    [
        ("text", "So \\boxed{4}.", ("text", None, None, None)),
        (
            "python_function",
            "def f():\n    return 4\nTrailing.",
            ("program", "def f():\n    return 4", "f", None),
        ),
        (
            {"code_block": {"open": "<c>", "close": "</c>"}},
            "x <c>\n  a = 4\n  a\n</c>",
            ("program", "a = 4\na", None, None),
        ),
        ("boxed", "\\boxed{3} then \\boxed{\\frac{1}{2}} so", ("extracted", None, None, "\\frac{1}{2}")),
        ("last_number", "It is 1,000 or -2.5, surely.", ("extracted", None, None, "-2.5")),
        ("last_number", "no digits", ("extracted", None, None, None)),
        ({"regex_group": "Answer: (\\S+)"}, "Answer: 3\nAnswer: 5", ("extracted", None, None, "5")),
        (
            {"regex_group": {"pattern": "(?P<a>\\d+) apples", "group": "a"}},
            "7 apples",
            ("extracted", None, None, "7"),
        ),
    ],
)
def test_each_answer_rule(answer, text, reading):
    analysis = build_registry([declared(recognise={"regex": "\\S"}, answer=answer)]).analyze(text)
    assert analysis.format == "mine"
    assert (analysis.how, analysis.code, analysis.entry, analysis.answer) == reading


def test_the_record_is_the_registry_in_full_and_reads_back():
    mine = declared(recognise={"regex": "^Final: "}, answer={"regex_group": "^Final: (.+)$"})
    registry = build_registry(["tinygsm", "omi2", mine])
    record = registry.record()
    assert [entry["name"] for entry in record] == ["tinygsm", "omi2", "mine"]
    assert record[0]["recognise"] == "python_function"  # built-ins expanded, not just named
    again = build_registry(json.loads(json.dumps(record)))
    assert again.names == registry.names == format_names(record) == format_names(["tinygsm", "omi2", mine])
    assert again.analyze("Work.\nFinal: 7") == registry.analyze("Work.\nFinal: 7")
    assert format_names(None) == default_registry().names  # a run recorded before registries
