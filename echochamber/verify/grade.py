"""The verifier: grade completions against gold answers, in batches. Reward, eval and
`echochamber grade` all call this; nothing else decides whether an answer is right.

Per completion: label its format with the run's format registry (formats.registry), take its
answer the way that format's answer rule says (run the TinyGSM function and take the return value;
run the first OMI1 code block and take the value of its last expression, ignoring the model's own
`<llm-code-output>`, as the paper does; an answer a rule read from the text, such as MetaMathQA's
"The answer is: X"; otherwise math-verify reads `\\boxed{}`, a `#### N` line or the final number of
the text), then compare with math-verify. A batch costs one sandbox round trip and one parallel
pass of math-verify workers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from echochamber.errors import UserError
from echochamber.formats.classify import paper_format
from echochamber.formats.registry import Registry, default_registry
from echochamber.verify.answers import Comparison, MathVerifyPool
from echochamber.verify.normalize import normalize_gold
from echochamber.verify.sandbox import ExecJob, ExecResult, SandboxPool

# Lines graded per batch by grade_file: large enough to keep every worker busy, small enough that
# a huge file does not hold all its sandbox results at once.
FILE_BATCH = 4096


@dataclass(frozen=True)
class Grade:
    """`status` says how grading went: "ok" (answer compared; `correct` is the verdict),
    "no_answer", "parse_error", "bad_gold", "verify_error", or a sandbox status ("exec_error",
    "syntax_error", "timeout", "memory", "killed", "output_limit", "forbidden"). Only "ok" can be
    correct; every other status is a reason for 0 that is counted, not hidden. `format` is our
    classifier's label, `paper_format` the paper's own rule (formats.classify.paper_format)."""

    correct: bool
    format: str
    paper_format: str
    answer: str | None
    status: str
    detail: str = ""


class Grader:
    """Owns a sandbox pool (runs generated code) and math-verify workers (compares answers).

    Thread-safe; use as a context manager so the worker processes end with it.
    """

    def __init__(self, workers: int = 2, exec_timeout_s: float = 3.0, verify_timeout_s: float = 5.0):
        self._sandbox = SandboxPool(workers=workers, timeout_s=exec_timeout_s)
        try:
            self._math = MathVerifyPool(workers=workers, timeout_s=verify_timeout_s)
        except BaseException:
            self._sandbox.close()
            raise

    def grade(
        self, completions: Sequence[str], golds: Sequence[str], formats: Registry | None = None
    ) -> list[Grade]:
        """Grade each completion against its gold, its format labelled and its answer located by
        `formats` (the run's registry; None = the default one)."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        registry = formats or default_registry()
        analyses = [registry.analyze(completion) for completion in completions]
        papers = [paper_format(completion) for completion in completions]
        normalized = [normalize_gold(gold) for gold in golds]
        grades: list[Grade | None] = [None] * len(completions)
        to_run = [i for i, analysis in enumerate(analyses) if analysis.code is not None]
        results = (
            self._sandbox.run([ExecJob(analyses[i].code, analyses[i].entry) for i in to_run])
            if to_run
            else []
        )

        to_compare: list[int] = []
        comparisons: list[Comparison] = []
        for i, analysis in enumerate(analyses):
            if analysis.problem:
                grades[i] = Grade(False, analysis.format, papers[i], None, "parse_error", analysis.problem)
            elif analysis.how == "extracted" and analysis.answer is None:
                grades[i] = Grade(
                    False,
                    analysis.format,
                    papers[i],
                    None,
                    "no_answer",
                    "the format's answer rule found none",
                )
            elif analysis.how == "extracted":
                to_compare.append(i)
                comparisons.append(Comparison(normalized[i], normalize_gold(analysis.answer), "extracted"))
            elif analysis.code is None:
                to_compare.append(i)
                comparisons.append(Comparison(normalized[i], completions[i], "text"))
        for i, result in zip(to_run, results, strict=True):
            value = _program_value(result, analyses[i].entry)
            if value is not None:
                to_compare.append(i)
                comparisons.append(Comparison(normalized[i], value, "value"))
            elif result.status in ("ok", "no_result"):
                grades[i] = Grade(
                    False,
                    analyses[i].format,
                    papers[i],
                    None,
                    "no_answer",
                    result.detail or "code produced no value",
                )
            else:
                grades[i] = Grade(False, analyses[i].format, papers[i], None, result.status, result.detail)

        verdicts = self._math.compare(comparisons) if comparisons else []
        for i, comparison, verdict in zip(to_compare, comparisons, verdicts, strict=True):
            # A program's value as returned, an answer as the format's rule read it: not math-verify's reading.
            answer = analyses[i].answer if comparison.mode == "extracted" else verdict.answer
            answer = comparison.prediction if comparison.mode == "value" else answer
            grades[i] = Grade(
                verdict.correct, analyses[i].format, papers[i], answer, verdict.status, verdict.detail
            )
        if any(grade is None for grade in grades):
            raise RuntimeError("grader left a completion ungraded")
        return grades  # type: ignore[return-value]  (checked complete just above)

    def same_answers(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether math-verify holds each pair of extracted answers to be one answer, both ways round,
        in the worker processes. A comparison that fails (timeout, parse or sympy error) counts as
        different: the two answers then vote apart, which is what they did before any comparison."""
        verdicts = self._math.compare([Comparison(first, second, "answer") for first, second in pairs])
        return [verdict.status == "ok" and verdict.correct for verdict in verdicts]

    def close(self) -> None:
        self._math.close()
        self._sandbox.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _program_value(result: ExecResult, entry: str | None) -> str | None:
    """What a program answered: its value; for an OMI1 block (no entry) whose last line printed
    rather than evaluated, the last line it printed, which is what OMI1's interpreter output shows."""
    if result.status == "ok":
        return result.value
    if result.status == "no_result" and entry is None:
        printed = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if printed:
            return printed[-1]
    return None


@dataclass
class Summary:
    """Accuracy overall, per format (`names`: the registry's labels) and the count of every status."""

    names: tuple[str, ...] = field(default_factory=lambda: default_registry().names)
    total: int = 0
    correct: int = 0
    format_counts: Counter[str] = field(default_factory=Counter)
    format_correct: Counter[str] = field(default_factory=Counter)
    status_counts: Counter[str] = field(default_factory=Counter)

    def add(self, grades: Sequence[Grade]) -> None:
        for grade in grades:
            self.total += 1
            self.correct += grade.correct
            self.format_counts[grade.format] += 1
            self.format_correct[grade.format] += grade.correct
            self.status_counts[grade.status] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def render(self) -> str:
        lines = [f"graded {self.total}: accuracy {self.accuracy:.4f} ({self.correct}/{self.total})"]
        width = max(8, *(len(name) for name in self.names))
        lines.append(f"{'format':<{width}} {'count':>7} {'share':>7} {'correct':>8} {'accuracy':>9}")
        for name in self.names:
            count = self.format_counts[name]
            share = count / self.total if self.total else 0.0
            accuracy = f"{self.format_correct[name] / count:.4f}" if count else "-"
            lines.append(f"{name:<{width}} {count:>7} {share:>7.3f} {self.format_correct[name]:>8} {accuracy:>9}")
        statuses = ", ".join(f"{status}={count}" for status, count in self.status_counts.most_common())
        lines.append(f"status: {statuses or 'none'}")
        return "\n".join(lines)


def grade_file(
    in_path: Path, out_path: Path | None, workers: int = 2, formats: Registry | None = None
) -> Summary:
    """Grade a jsonl file of {"completion", "gold", ...} objects under `formats` (None = the default
    registry); write each object back with `format`, `paper_format`, `answer`, `correct`, `status`
    and `detail` added when `out_path` is given."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    rows = _read_rows(in_path)
    registry = formats or default_registry()
    summary = Summary(registry.names)
    with Grader(workers=workers) as grader:
        out = out_path.open("w", encoding="utf-8") if out_path is not None else None
        try:
            for start in range(0, len(rows), FILE_BATCH):
                batch = rows[start : start + FILE_BATCH]
                grades = grader.grade(
                    [row["completion"] for row, _ in batch], [gold for _, gold in batch], registry
                )
                summary.add(grades)
                if out is not None:
                    for (row, _), grade in zip(batch, grades, strict=True):
                        graded = {
                            **row,
                            "format": grade.format,
                            "paper_format": grade.paper_format,
                            "answer": grade.answer,
                            "correct": grade.correct,
                            "status": grade.status,
                            "detail": grade.detail,
                        }
                        out.write(json.dumps(graded, ensure_ascii=False) + "\n")
        finally:
            if out is not None:
                out.close()
    return summary


def _read_rows(path: Path) -> list[tuple[dict, str]]:
    """(object, gold as a string) for every non-blank line, all checked before grading starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        if not isinstance(row.get("completion"), str):
            problem = "missing" if "completion" not in row else "not a string"
            raise UserError(f"{path}:{number}: field 'completion' is {problem}")
        gold = row.get("gold")
        # JSON numbers are accepted as golds (18, 0.5); booleans are a mistake, not a number.
        if isinstance(gold, int | float) and not isinstance(gold, bool):
            gold = str(gold)
        if not isinstance(gold, str) or not gold.strip():
            problem = (
                "missing"
                if "gold" not in row
                else "empty"
                if isinstance(gold, str)
                else "not a string or number"
            )
            raise UserError(f"{path}:{number}: field 'gold' is {problem}")
        rows.append((row, gold))
    return rows
