"""The format registry: the output formats a run tracks, how each is recognised, where its answer is.

A format is declared data, never code (`FormatSpec`): a name, a priority, a recogniser and an answer
rule, both written in the closed vocabulary of rules.py. The built-in formats are packaged files,
`echochamber/configs/formats/NAME.yaml`, each written exactly as a user writes one in a study's
`formats:` list; a run's registry is that list: built-ins by name, other formats declared in full.

    formats:
      - tinygsm                     # built-ins by name (tinygsm, omi1, omi2, metamathqa, gsm8k)
      - omi1
      - omi2
      - name: final_answer          # declared here
        priority: 60                # recognition order: lowest first, unique in a registry
        recognise: {regex: '^Final answer: \\S'}
        answer: {regex_group: '^Final answer: (.+)$'}

`Registry.analyze` tries the formats by ascending priority; the first whose recogniser matches
labels the completion and its answer rule says where the answer is. Two labels no declaration can
change: degenerate text (classify.is_degenerate) is `other` whatever matched (its answer is still
read by the matched format's rule: the reward judges the answer, the label the format), and a
completion no format recognises is `other`, its answer read from the text. `other` is never a
declared name. The list order is the display order (results.json, metrics lines, the report);
priorities only order recognition, so the built-ins keep the study's display order
(tinygsm, omi1, omi2) while OMI1's `<llm-code>` block is tried before TinyGSM's function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from echochamber.config import from_dict, preset_names, read_preset, read_yaml
from echochamber.errors import UserError
from echochamber.formats.rules import AnswerRule, Broken, Completion, Recogniser, answer_rule, recogniser

OTHER = "other"  # degenerate text and text in no tracked format; never a declared name
# The registry of a config that declares none: the study's three pretraining formats.
DEFAULT_FORMATS = ("tinygsm", "omi1", "omi2")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,39}")


@dataclass
class FormatSpec:
    """One format as declared in YAML (a study's `formats:` list, or configs/formats/NAME.yaml)."""

    name: str  # the label: letters, digits and _.+- (it names metrics keys and chart legends); never `other`
    priority: int  # recognition order: lowest first, unique within a registry
    recognise: dict[str, Any] | str  # a recogniser rule (rules.py)
    answer: dict[str, Any] | str  # an answer rule (rules.py)
    description: str = ""  # one line for the report

    def validate(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise UserError(
                f"format name {self.name!r} must be a letter, then letters, digits and _.+- (at most 40)"
            )
        if self.name.lower() == OTHER:
            raise UserError(
                f"'{OTHER}' is not a format that can be declared: it is the label of everything else"
            )
        self.compile()

    def compile(self) -> tuple[Recogniser, AnswerRule]:
        where = f"format '{self.name}'"
        return recogniser(self.recognise, f"{where}.recognise"), answer_rule(self.answer, f"{where}.answer")


@dataclass(frozen=True)
class Analysis:
    """What a completion is and where its answer lives.

    `format` is one of the registry's names (`other` included). `code` is the program whose result is
    the answer and `entry` the function to call (None = the value of the last expression); with
    `code` None the answer is read from the text: by math-verify (`how` "text"), or it was read by
    the format's rule into `answer` (`how` "extracted"; None = the rule found none). `problem` is
    non-empty when the completion attempted code that cannot be run: it has no answer.
    """

    format: str
    code: str | None = None
    entry: str | None = None
    problem: str = ""
    how: str = "text"
    answer: str | None = None


class Registry:
    """The formats of one run, compiled: `names` in display order (`other` last), `analyze` by priority."""

    def __init__(self, specs: Sequence[FormatSpec]) -> None:
        if not specs:
            raise UserError("formats must list at least one format")
        seen: dict[str, FormatSpec] = {}
        priorities: dict[int, str] = {}
        for spec in specs:
            if spec.name in seen:
                raise UserError(f"format '{spec.name}' is listed twice in formats")
            if spec.priority in priorities:
                raise UserError(
                    f"formats '{priorities[spec.priority]}' and '{spec.name}' share priority {spec.priority}: "
                    "priorities order recognition and must differ"
                )
            seen[spec.name], priorities[spec.priority] = spec, spec.name
        self.specs = tuple(specs)
        self._rules = [(spec.name, *spec.compile()) for spec in sorted(specs, key=lambda spec: spec.priority)]

    @property
    def real(self) -> tuple[str, ...]:
        """The declared format names, in display order."""
        return tuple(spec.name for spec in self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        """Every label a completion can get: the declared formats, then `other`."""
        return (*self.real, OTHER)

    def analyze(self, completion: str) -> Analysis:
        """Label a completion (never pass the prompt) and locate its answer. Pure; microseconds for
        typical completions."""
        text = Completion(completion)
        for name, recognise, read in self._rules:
            verdict = recognise(text)
            if isinstance(verdict, Broken):
                return Analysis(OTHER, problem=verdict.problem)
            if verdict:
                reading = read(text)
                label = OTHER if text.degenerate else name
                return Analysis(
                    label, reading.code, reading.entry, reading.problem, reading.how, reading.answer
                )
        return Analysis(OTHER)

    def classify(self, completion: str) -> str:
        """The label of one completion: one of `names`."""
        return self.analyze(completion).format

    def record(self) -> list[dict[str, Any]]:
        """Every format in full (built-ins expanded), as results.json and config.yaml record the
        registry in force; `build_registry` reads it back."""
        return [asdict(spec) for spec in self.specs]


# ---------------------------------------------------------------------------------------------
# From config entries to a registry


def builtin_names() -> tuple[str, ...]:
    """The packaged formats (echochamber/configs/formats/*.yaml)."""
    return preset_names("formats")


@cache
def _builtin_data(name: str) -> dict[str, Any]:
    return read_preset("formats", name, "format")


def builtin(name: str) -> FormatSpec:
    """A packaged format by name; an unknown name is a one-line error listing the built-ins."""
    spec = from_dict(FormatSpec, _builtin_data(name), prefix=f"formats/{name}.yaml: ")
    if spec.name != name:
        raise RuntimeError(f"configs/formats/{name}.yaml declares format {spec.name!r}")  # a packaging bug
    return spec


def build_registry(entries: Sequence[str | FormatSpec | Mapping[str, Any]]) -> Registry:
    """The registry of a `formats:` list: built-in names, FormatSpecs, or their recorded mappings.

    A declared format may carry a built-in's name only with the built-in's exact definition (as a
    recorded registry does); otherwise it needs a name of its own.
    """
    specs = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            specs.append(builtin(entry))
            continue
        spec = (
            entry
            if isinstance(entry, FormatSpec)
            else from_dict(FormatSpec, dict(entry), prefix=f"formats[{index}].")
        )
        if spec.name in builtin_names() and asdict(spec) != asdict(builtin(spec.name)):
            raise UserError(
                f"format '{spec.name}' is built in and declared differently here: list '{spec.name}' to use "
                "the built-in, or give yours another name"
            )
        specs.append(spec)
    return Registry(specs)


def load_registry(spec: str) -> Registry:
    """A command line's `--formats`: comma-separated built-in names, or a YAML file whose `formats:`
    list is written as in a study."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        entries = read_yaml(path).get("formats")
        if not isinstance(entries, list):
            raise UserError(f"{path}: expected a 'formats:' list (built-in names or declarations)")
        return build_registry(entries)
    return build_registry([name.strip() for name in spec.split(",") if name.strip()])


def format_names(entries: Sequence[str | FormatSpec | Mapping[str, Any]] | None) -> tuple[str, ...]:
    """The labels of a recorded `formats:` list (names or declarations), `other` last, without
    compiling anything; the default registry's for a run recorded before registries existed."""
    if not entries:
        entries = DEFAULT_FORMATS
    names = [entry if isinstance(entry, str) else str(_field(entry, "name")) for entry in entries]
    return (*names, OTHER)


def _field(entry: FormatSpec | Mapping[str, Any], key: str) -> Any:
    return entry.get(key) if isinstance(entry, Mapping) else getattr(entry, key)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of a config that declares none (DEFAULT_FORMATS)."""
    return build_registry(DEFAULT_FORMATS)


def default_entries() -> list[str | FormatSpec]:
    """A config's `formats:` when it declares none (a fresh list: configs own their lists)."""
    return list(DEFAULT_FORMATS)
