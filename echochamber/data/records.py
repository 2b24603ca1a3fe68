"""The one record type every data source produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Solution styles a record can carry. The first three are the study's output formats
# (see echochamber.formats); the rest are pretraining/eval styles that are not tracked as formats.
SOLUTION_STYLES = ("tinygsm", "omi1", "omi2", "gsm8k", "math", "metamathqa", "text")


@dataclass(frozen=True)
class Record:
    """One problem with (optionally) one worked solution.

    `prompt` is what a model is given (the question text, no template); `solution` the text a
    pretraining document appends after `prompt + "\\n\\n"`; `answer` the gold answer as a string
    (normalised by the adapter, e.g. AIME's "033" -> "33"); `source` names where it came from
    ("world", "gsm8k", "math500", ...); `style` is one of SOLUTION_STYLES; `id` is stable across
    runs so generations and rollouts can be joined on it.
    """

    id: str
    prompt: str
    solution: str
    answer: str
    source: str
    style: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
