"""The closed vocabulary formats are declared in: recognisers and answer rules, compiled from data.

A format (registry.py) says in YAML how to recognise a completion of it and how to read its answer.
Both are built from the named blocks below and nothing else: a config can combine them, never
supply code, so a study file cannot run anything. A rule is a one-key mapping `{block: argument}`,
or the bare block name when it takes no argument.

Recognisers (`recognise:`) answer "is this completion in the format?" with a match, no match, or
`Broken` (it attempts the format but cannot be run: the completion is `other` with no answer):

    contains: TEXT              TEXT occurs anywhere
    starts_with: TEXT           the completion, leading whitespace aside, starts with TEXT
    regex: PATTERN              Python `re.search`, `^`/`$` at line ends (re.MULTILINE)
    code_block: {open, close}   a complete first block; an opened block never closed is Broken
    python_function             opens with a `def` that parses and returns a value (TinyGSM); one
                                that does not parse or never returns is Broken unless the text
                                holds a closed \\boxed{} (then the def was an aside)
    boxed: {min_solution_chars} a closed \\boxed{} and at least that many non-space characters
                                outside the boxed spans (default 0)
    all: [RULE, ...]            every rule matches (the first Broken one wins)
    any: [RULE, ...]            the first rule that matches or is Broken
    not: RULE                   RULE does not match (Broken counts as not matching)

Answer rules (`answer:`) say where the answer is; the verifier then compares it with the gold:

    text                        math-verify reads the whole text: its last \\boxed{}, else a final
                                `#### N` line, else its last number
    python_function             run the opening function in the sandbox; its return value
    code_block: {open, close}   run the first block; the value of its last expression (or the last
                                line it printed)
    boxed                       the contents of the last closed \\boxed{}
    last_number                 the last number written in the text
    regex_group: PATTERN        group 1 of the last match (`{pattern, group}` picks another group)

Patterns run on one completion at a time (a few kB); a pattern with catastrophic backtracking would
still be slow, so keep them anchored and simple.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from echochamber.errors import UserError
from echochamber.formats.classify import boxed_spans, find_function, first_block, is_degenerate

_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


class Completion:
    """One completion and its structure, each part computed at most once however many rules ask."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._blocks: dict[tuple[str, str], str | None | bool] = {}

    @cached_property
    def function(self) -> tuple[str, str] | str | None:
        return find_function(self.text)

    @cached_property
    def boxed(self) -> list[tuple[int, int]]:
        return boxed_spans(self.text)

    @cached_property
    def degenerate(self) -> bool:
        return is_degenerate(self.text)

    def block(self, opening: str, closing: str) -> str | None | bool:
        key = (opening, closing)
        if key not in self._blocks:
            self._blocks[key] = first_block(self.text, opening, closing)
        return self._blocks[key]


@dataclass(frozen=True)
class Broken:
    """The completion attempts the format but holds nothing that can be run."""

    problem: str


@dataclass(frozen=True)
class Reading:
    """Where a completion's answer is: `code` to run (`entry` the function to call, None = the value
    of the last expression), or the text read by math-verify (`how` "text"), or an answer already
    read from the text (`how` "extracted", `answer` None when the rule found none). `problem` set:
    there is no answer (attempted code that cannot be run)."""

    how: str  # "program", "text" or "extracted"
    code: str | None = None
    entry: str | None = None
    answer: str | None = None
    problem: str = ""


Recogniser = Callable[[Completion], "bool | Broken"]
AnswerRule = Callable[[Completion], Reading]
TEXT = Reading("text")


# ---------------------------------------------------------------------------------------------
# Recognisers


def _contains(arg: Any, where: str) -> Recogniser:
    needle = _text(arg, where)
    return lambda c: needle in c.text


def _starts_with(arg: Any, where: str) -> Recogniser:
    prefix = _text(arg, where)
    return lambda c: c.text.lstrip().startswith(prefix)


def _regex(arg: Any, where: str) -> Recogniser:
    pattern = _pattern(arg, where)
    return lambda c: pattern.search(c.text) is not None


def _code_block(arg: Any, where: str) -> Recogniser:
    opening, closing = _markers(arg, where)

    def recognise(c: Completion) -> bool | Broken:
        body = c.block(opening, closing)
        return Broken(f"unterminated {opening} block") if body is False else body is not None

    return recognise


def _python_function(arg: Any, where: str) -> Recogniser:
    _no_argument(arg, where)

    def recognise(c: Completion) -> bool | Broken:
        if isinstance(c.function, str):
            return False if c.boxed else Broken(c.function)
        return c.function is not None

    return recognise


def _boxed(arg: Any, where: str) -> Recogniser:
    options = _options(arg, where, {"min_solution_chars": 0})
    minimum = options["min_solution_chars"]
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 0:
        raise UserError(f"{where}: min_solution_chars must be an integer >= 0, got {minimum!r}")

    def recognise(c: Completion) -> bool:
        if not c.boxed:
            return False
        outside = c.text
        for start, end in reversed(c.boxed):
            outside = outside[:start] + outside[end:]
        return len("".join(outside.split())) >= minimum

    return recognise


def _all(arg: Any, where: str) -> Recogniser:
    parts = [recogniser(rule, f"{where}[{i}]") for i, rule in enumerate(_rules(arg, where))]

    def recognise(c: Completion) -> bool | Broken:
        for part in parts:
            verdict = part(c)
            if verdict is not True:
                return verdict
        return True

    return recognise


def _any(arg: Any, where: str) -> Recogniser:
    parts = [recogniser(rule, f"{where}[{i}]") for i, rule in enumerate(_rules(arg, where))]

    def recognise(c: Completion) -> bool | Broken:
        for part in parts:
            verdict = part(c)
            if verdict is not False:
                return verdict
        return False

    return recognise


def _not(arg: Any, where: str) -> Recogniser:
    inner = recogniser(arg, where)
    return lambda c: inner(c) is not True


RECOGNISERS: dict[str, Callable[[Any, str], Recogniser]] = {
    "contains": _contains, "starts_with": _starts_with, "regex": _regex, "code_block": _code_block,
    "python_function": _python_function, "boxed": _boxed, "all": _all, "any": _any, "not": _not,
}  # fmt: skip


def recogniser(rule: Any, where: str) -> Recogniser:
    """Compile one recogniser rule; a bad rule is a one-line UserError naming `where` it is."""
    name, arg = _block(rule, where, RECOGNISERS)
    return RECOGNISERS[name](arg, f"{where}.{name}")


# ---------------------------------------------------------------------------------------------
# Answer rules


def _text_answer(arg: Any, where: str) -> AnswerRule:
    _no_argument(arg, where)
    return lambda c: TEXT


def _function_answer(arg: Any, where: str) -> AnswerRule:
    _no_argument(arg, where)

    def read(c: Completion) -> Reading:
        if isinstance(c.function, tuple):
            return Reading("program", code=c.function[0], entry=c.function[1])
        return Reading("program", problem=c.function or "no function opens the completion")

    return read


def _block_answer(arg: Any, where: str) -> AnswerRule:
    opening, closing = _markers(arg, where)

    def read(c: Completion) -> Reading:
        body = c.block(opening, closing)
        if isinstance(body, str):
            return Reading("program", code=body)
        return Reading(
            "program", problem=f"unterminated {opening} block" if body is False else f"no {opening} block"
        )

    return read


def _boxed_answer(arg: Any, where: str) -> AnswerRule:
    _no_argument(arg, where)

    def read(c: Completion) -> Reading:
        if not c.boxed:
            return Reading("extracted")
        start, end = c.boxed[-1]
        return Reading("extracted", answer=c.text[start + len("\\boxed{") : end - 1])

    return read


def _last_number_answer(arg: Any, where: str) -> AnswerRule:
    _no_argument(arg, where)

    def read(c: Completion) -> Reading:
        numbers = _LAST_NUMBER.findall(c.text)
        return Reading("extracted", answer=numbers[-1].rstrip(",") if numbers else None)

    return read


def _regex_group_answer(arg: Any, where: str) -> AnswerRule:
    options = _options(arg, where, {"pattern": None, "group": 1}, shorthand="pattern")
    pattern = _pattern(options["pattern"], f"{where}.pattern")
    group = options["group"]
    if isinstance(group, bool) or not isinstance(group, int | str):
        raise UserError(f"{where}.group must be a group number or name, got {group!r}")
    known = group in pattern.groupindex if isinstance(group, str) else 0 <= group <= pattern.groups
    if not known:
        raise UserError(f"{where}: pattern {pattern.pattern!r} has no group {group!r}")

    def read(c: Completion) -> Reading:
        matches = list(pattern.finditer(c.text))
        value = matches[-1].group(group) if matches else None
        return Reading("extracted", answer=value.strip() if value and value.strip() else None)

    return read


ANSWERS: dict[str, Callable[[Any, str], AnswerRule]] = {
    "text": _text_answer, "python_function": _function_answer, "code_block": _block_answer,
    "boxed": _boxed_answer, "last_number": _last_number_answer, "regex_group": _regex_group_answer,
}  # fmt: skip


def answer_rule(rule: Any, where: str) -> AnswerRule:
    """Compile one answer rule; a bad rule is a one-line UserError naming `where` it is."""
    name, arg = _block(rule, where, ANSWERS)
    return ANSWERS[name](arg, f"{where}.{name}")


# ---------------------------------------------------------------------------------------------
# Checking a rule's shape


def _block(rule: Any, where: str, known: Mapping[str, object]) -> tuple[str, Any]:
    """(block name, its argument) of `NAME` or `{NAME: argument}`."""
    if isinstance(rule, str):
        name, arg = rule, None
    elif isinstance(rule, Mapping) and len(rule) == 1:
        ((name, arg),) = rule.items()
    else:
        raise UserError(
            f"{where}: a rule is one block name or a one-key mapping {{block: argument}}, got {rule!r}"
        )
    if name not in known:
        raise UserError(f"{where}: unknown block {name!r} (known: {', '.join(known)})")
    return str(name), arg


def _no_argument(arg: Any, where: str) -> None:
    if not (arg is None or arg is True or arg == {}):
        raise UserError(f"{where} takes no argument, got {arg!r}")


def _text(arg: Any, where: str) -> str:
    if not isinstance(arg, str) or not arg:
        raise UserError(f"{where} needs a non-empty string, got {arg!r}")
    return arg


def _pattern(arg: Any, where: str) -> re.Pattern[str]:
    try:
        return re.compile(_text(arg, where), re.MULTILINE)
    except re.error as error:
        raise UserError(f"{where}: {arg!r} is not a valid regular expression ({error})") from None


def _markers(arg: Any, where: str) -> tuple[str, str]:
    options = _options(arg, where, {"open": None, "close": None})
    return _text(options["open"], f"{where}.open"), _text(options["close"], f"{where}.close")


def _rules(arg: Any, where: str) -> list[Any]:
    if not isinstance(arg, list) or not arg:
        raise UserError(f"{where} needs a non-empty list of rules, got {arg!r}")
    return arg


def _options(arg: Any, where: str, defaults: dict[str, Any], shorthand: str | None = None) -> dict[str, Any]:
    """A block's keyword arguments over their defaults (None = required); `shorthand` names the
    option a bare value stands for (`regex_group: PATTERN`)."""
    if shorthand is not None and isinstance(arg, str):
        arg = {shorthand: arg}
    if arg is None or arg is True:
        arg = {}
    if not isinstance(arg, Mapping):
        raise UserError(f"{where}: expected a mapping of {', '.join(defaults)}, got {arg!r}")
    unknown = set(arg) - set(defaults)
    if unknown:
        raise UserError(f"{where}: unknown option {sorted(unknown)[0]!r} (known: {', '.join(defaults)})")
    options = {**defaults, **arg}
    missing = [key for key, value in options.items() if value is None]
    if missing:
        raise UserError(f"{where}: missing option {missing[0]!r}")
    return options
