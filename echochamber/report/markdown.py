"""`echochamber report DIR --markdown`: the report's science as Markdown, for a README or a note.

Three tables, regenerated from the run folder rather than typed by hand:

- the findings, rendered from the findings.json the report just wrote (the one source of truth
  the HTML page is rendered from too): claim, verdict, evidence, effect with its 95 % interval
  and the seeds behind it;
- per setting, the transfer table: the RL level and each rung of the ladder (easiest first, then
  world-hard and the real benchmarks), greedy pass@1, pass@K and maj@K before → after RL (means
  over the setting's seeds), and Δ pass@1 with its interval;
- per setting, each format's share of the samples on the RL level before → after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echochamber.report.collect import RunData, SweepData, collect, group_settings
from echochamber.report.measure import (
    at,
    common_k,
    gain,
    harder_benchmarks,
    main_benchmark,
    maj_at,
    over_seeds,
    pass1,
    pass_at,
    pooled_shares,
)
from echochamber.report.page import FINDINGS_FILE, build_report
from echochamber.report.stats import Estimate
from echochamber.report.tables import VERDICT_WORDS, effect_words, evidence_words


def cell(text: Any) -> str:
    """A table cell: pipes escaped, line breaks flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def findings_markdown(findings: Sequence[dict[str, Any]]) -> str:
    """One row per tested finding of findings.json (what the page's findings table says, in
    Markdown), then a list of those this run could not test, each with why (a lone run has no KL or
    algorithm axis: a table of "not tested" rows would bury the ones it did)."""
    rows = []
    untested = [f"- `{item['id']}`: {item['note']}" for item in findings if item["verdict"] == "not_tested"]
    for item in (item for item in findings if item["verdict"] != "not_tested"):
        verdict = VERDICT_WORDS[item["verdict"]][1]
        where = f" ({item['setting']})" if item["setting"] and len(item["settings"]) > 1 else ""
        note = f" — {item['note']}" if item["note"] else ""
        rows.append([
            f"`{item['id']}`", item["title"], f"**{verdict}**{note}", evidence_words(item) or "—",
            f"{effect_words(item, item['unit'])}{where}", item["seeds"],
        ])  # fmt: skip
    header = ["finding", "claim", "verdict", "evidence", "effect [95 % interval]", "seeds"]
    text = md_table(header, rows) if rows else "No finding could be tested in this folder."
    if untested:
        text += "\n\nNot tested here:\n" + "\n".join(untested)
    return text


def _pct(found: Estimate | None) -> str:
    return "—" if found is None else f"{100 * found.effect:.1f} %"


def _before_after(runs: list[RunData], bench: str, metric: Any) -> str:
    before, after = over_seeds(runs, at("base", bench, metric)), over_seeds(runs, at("final", bench, metric))
    return f"{_pct(before)} → {_pct(after)}"


def _delta(found: Estimate | None) -> str:
    if found is None:
        return "—"
    interval = found.interval
    bounds = f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else ""
    return f"{100 * found.effect:+.1f} pts{bounds}"


def transfer_markdown(runs: list[RunData]) -> str | None:
    """The RL level and every harder split of one setting, before → after RL; None if nothing was
    evaluated both before and after."""
    main = main_benchmark(runs)
    rows = []
    for bench in [*([main] if main else []), *harder_benchmarks(runs)]:
        found = over_seeds(runs, gain(bench, pass1))
        if found is None:
            continue
        k = common_k(runs, bench)
        sampled = [_before_after(runs, bench, metric(k)) if k > 1 else "—" for metric in (pass_at, maj_at)]
        role = "RL level" if bench == main else "harder"
        rows.append([bench, role, _before_after(runs, bench, pass1), k, *sampled, _delta(found), found.basis])
    if not rows:
        return None
    header = ["benchmark", "level", "pass@1 (greedy)", "k", "pass@k", "maj@k"]
    header += ["Δ greedy pass@1 [95 % interval]", "basis"]
    return md_table(header, rows)


def formats_markdown(runs: list[RunData]) -> str | None:
    """Each format's share of the samples on the RL level, before → after RL (mean over seeds)."""
    main = main_benchmark(runs)
    before, after = pooled_shares(runs, "base", main), pooled_shares(runs, "final", main)
    if main is None or before is None or after is None:
        return None
    names = list(dict.fromkeys([*before, *after]))
    rows = [[name, *(f"{100 * side.get(name, 0.0):.1f} %" for side in (before, after))] for name in names]
    return md_table([f"format ({main})", "before RL", "after RL"], rows)


def report_markdown(sweep: SweepData, findings: Sequence[dict[str, Any]]) -> str:
    """The Markdown document: findings, then per setting its transfer and format tables."""
    parts = [f"### Findings ({sweep.name})", ""]
    if sweep.kind == "sweep":
        parts += [sweep.progress() + ".", ""]
    parts += [findings_markdown(findings)]
    for setting, runs in group_settings(sweep).items():
        for title, text in (
            ("Before and after RL, per rung", transfer_markdown(runs)),
            ("Format shares", formats_markdown(runs)),
        ):
            if text:
                parts += ["", f"### {title} ({setting})", "", text]
    return "\n".join(parts) + "\n"


def markdown_report(path: Path, out: Path | None = None) -> tuple[Path, str]:
    """Build the report of `path` (page, charts, findings.json), then its Markdown, the findings read
    back from the findings.json just written; (index.html, Markdown). The folder is collected a
    second time for the other tables (seconds for a quickstart run) so the page's builder stays as
    it is."""
    index = build_report(path, out)
    findings = json.loads((index.parent / FINDINGS_FILE).read_text(encoding="utf-8"))
    return index, report_markdown(collect(Path(path)), findings)
