"""HTML tables of the report page: the findings (rendered from the findings.json objects, the one
source of truth) and, per evaluation, our format classifier against the paper's rule."""

from __future__ import annotations

import html
from typing import Any

from echochamber.formats import PAPER_FORMATS
from echochamber.report.collect import EvalData

VERDICT_WORDS = {
    "reproduced": ("yes", "reproduced"), "not_reproduced": ("no", "not reproduced"),
    "inconclusive": ("na", "inconclusive"), "not_tested": ("na", "not tested"),
}  # fmt: skip


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {fmt(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(fmt(item) for item in value)
    return str(value)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------
# Findings


def _number(value: float | None, unit: str) -> str:
    """An effect in its unit: steps, percentage points of a difference (Δ), or a percentage."""
    if value is None:
        return "—"
    if "steps" in unit:
        return f"{value:+.1f} steps"
    return f"{100 * value:+.1f} pts" if unit.startswith("Δ") else f"{100 * value:.1f}%"


def effect_words(result: dict[str, Any], unit: str) -> str:
    """ "+12.0 pts [+3.1 pts, +20.9 pts] · 3 seeds": a finding's or setting's effect in its unit."""
    if result["effect"] is None:
        return "—"
    interval = result["interval"]
    bounds = (
        f" [{_number(interval[0], unit)}, {_number(interval[1], unit)}]" if interval else " [no interval]"
    )
    basis = f" · {result['basis']}" if result.get("basis") else ""
    return f"{_number(result['effect'], unit)}{bounds}{basis}"


def evidence_words(result: dict[str, Any]) -> str:
    """ "replicated · 3 seeds", or "1 seed, not replicated": what the verdict rests on."""
    if result["verdict"] == "not_tested":
        return ""
    seeds = result["seeds"]
    if result["evidence"] == "replicated":
        return f"replicated · {seeds} seeds"
    return f"{seeds} seed{'' if seeds == 1 else 's'}, not replicated"


def _badge(result: dict[str, Any]) -> str:
    cls, word = VERDICT_WORDS[result["verdict"]]
    return (
        f'<span class="badge {cls}">{word}</span> <span class="evidence">{e(evidence_words(result))}</span>'
    )


def _setting_html(result: dict[str, Any], unit: str) -> str:
    per_seed = ", ".join(f"{item['seed']}: {_number(item['effect'], unit)}" for item in result["per_seed"])
    lines = [
        f"<b>{e(result['setting'])}</b>: {_badge(result)}",
        f'<div class="ci">{e(effect_words(result, unit))}</div>',
        *([f'<div class="ci">per seed: {e(per_seed)}</div>'] if len(result["per_seed"]) > 1 else []),
        *([f"<div>{e(fmt(result['details']))}</div>"] if result["details"] else []),
        *([f'<div class="note">{e(result["note"])}</div>'] if result["note"] else []),
    ]
    return f'<div class="setting">{"".join(lines)}</div>'


def findings_html(findings: list[dict[str, Any]]) -> str:
    rows = []
    for item in findings:
        note = f'<div class="note">{e(item["note"])}</div>' if item["note"] else ""
        where = (
            f'<div class="ci">{e(item["setting"])}</div>'
            if item["setting"] and len(item["settings"]) > 1
            else ""
        )
        rows.append([
            f"<code>{e(item['id'])}</code>", e(item["title"]), _badge(item) + note,
            e(effect_words(item, item["unit"])) + where + f'<div class="ci">{e(item["unit"])}</div>',
            "".join(_setting_html(result, item["unit"]) for result in item["settings"]) or "—",
        ])  # fmt: skip
    intro = (
        "<p>Each finding of the paper as a claim with its margin, judged per setting (the cell parameters other "
        "than the seed) from a 95 % interval: Student-t over seeds where a setting has two or more, over the "
        "prompts of its one run otherwise (which ignores training-seed variance). <i>replicated</i> needs ≥ 3 "
        "seeds, all pointing the verdict's way. The same objects are in <code>findings.json</code>; the procedure "
        "is in docs/statistics.md.</p>"
    )
    header = ["finding", "claim", "verdict", "effect [95 % interval]", "per setting"]
    return intro + table(header, rows, "findings")


# ---------------------------------------------------------------------------------------------
# Our format classifier against the paper's rule


def format_rules_html(label: str, data: EvalData | None) -> str:
    """Our shares next to the paper rule's, and the ours x paper table of one evaluation."""
    if data is None:
        return ""
    crosstab = data.rule_table()
    if crosstab is None:
        return f'<p class="note">{e(label)}: the paper-rule format is not recorded (generations written before `paper_format`).</p>'
    total, names = sum(crosstab.values()), data.formats
    ours = {name: sum(n for (mine, _), n in crosstab.items() if mine == name) for name in names}
    paper = {name: sum(n for (_, theirs), n in crosstab.items() if theirs == name) for name in PAPER_FORMATS}
    agree = sum(n for (mine, theirs), n in crosstab.items() if mine == theirs)
    shares = [[e(name), pct(ours[name] / total), pct(paper.get(name, 0) / total) if name in PAPER_FORMATS else "—"]
              for name in names]  # fmt: skip
    cells = [[e(mine), *[str(crosstab.get((mine, theirs), 0)) for theirs in PAPER_FORMATS]] for mine in names]
    return (
        f"<h5>{e(label)}: format shares, ours vs the paper's rule · {pct(agree / total)} of {total} generations agree</h5>"
        + '<div class="grid">'
        + table(["format", "ours", "paper rule"], shares, "compact")
        + table(["ours ↓ · paper rule →", *PAPER_FORMATS], cells, "compact")
        + "</div>"
    )


# ---------------------------------------------------------------------------------------------
# Provenance's dominant source against our format classifier


def source_agreement_html(phases: list[tuple[str, EvalData | None]]) -> str:
    """Per evaluation, the format x dominant-source table: what the classifier calls each generation
    against the pretraining source most of its n-grams are found in alone (no format rule involved),
    and how often they agree where the label names a source (world mixtures name their sources after
    the formats they render)."""
    parts = [_agreement(label, data) for label, data in phases if data is not None]
    if not parts:
        return ""
    if not any(part.startswith("<div") for part in parts):
        return "".join(parts)  # notes only: nothing traced
    note = (
        '<p class="note">dominant source: the one holding most of a generation\'s n-grams found in one source '
        "alone; none: no n-gram is unique to one source (novel or shared text).</p>"
    )
    return '<div class="grid">' + "".join(parts) + "</div>" + note


def _agreement(label: str, data: EvalData) -> str:
    crosstab = data.source_table()
    if crosstab is None:
        return (
            f'<p class="note">{e(label)}: provenance is not recorded (generations not traced against the '
            "pretraining shards: a run before provenance, or an evaluation without --shards).</p>"
        )
    sources = data.sources()
    seen = {ours for ours, _ in crosstab}
    formats = [name for name in data.formats if name in seen]  # the registry's order, `other` last
    named = {(ours, source): n for (ours, source), n in crosstab.items() if ours in sources}
    if named:
        agree = sum(n for (ours, source), n in named.items() if ours == source)
        summary = f"{pct(agree / sum(named.values()))} of the {sum(named.values())} generations labelled with a source's name come mostly from it"
    else:
        summary = "no format is named like a source: agreement is not defined"
    cells = [[e(ours), *[str(crosstab.get((ours, source), 0)) for source in (*sources, None)]] for ours in formats]
    header = ["ours ↓ · dominant source →", *map(e, sources), "none"]
    return (
        f"<div><h5>{e(label)}: our format label against provenance's dominant source · {e(summary)}</h5>"
        + table(header, cells, "compact")
        + "</div>"
    )


def context_flag(what: str, record: dict[str, Any] | None) -> str:
    """" ⚠ of 500 prompts: 37 skipped, 5 with a shortened budget (prompt + 2048 new tokens over the
    context of 512, ...)" when the context check (eval/context.py) left prompts out or cut their
    budget; "" otherwise."""
    if not record or not (record.get("skipped") or record.get("shortened")):
        return ""
    done = [f"{record['skipped']} skipped"] if record.get("skipped") else []
    done += [f"{record['shortened']} with a shortened budget"] if record.get("shortened") else []
    return (
        f" ⚠ of {record['prompts']} {what}: {', '.join(done)} (prompt + {record['max_new_tokens']} new tokens "
        f"over the context of {record['context']}, over_context={record['over_context']})"
    )
