"""The report page: one self-contained index.html, with its figures also written beside it as PNG.

`build_report(path, out)` is `echochamber report`: collect the run or sweep folder, compute the
findings (written as findings.json beside the page, and rendered from those same objects), draw
the charts, write the page. The page needs nothing but itself: CSS and JS are
inline, figures are base64 data URIs, and the generation browser's prompts are embedded as JSON
(at most `BROWSER_MAX_PROMPTS`, filtered in the browser), so it opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echochamber.errors import UserError
from echochamber.report.assets import CSS, JS
from echochamber.report.collect import (
    EvalData,
    PromptEval,
    RunData,
    SweepData,
    collect,
    find_axis,
    group_settings,
)
from echochamber.report.curves import crossover_html
from echochamber.report.dose import dose_series
from echochamber.report.figures import RUN_CHARTS, render_comparison, render_dose, render_run_figures, slug
from echochamber.report.findings import compute_findings
from echochamber.report.measure import main_benchmark
from echochamber.report.results import degenerate, dominant, format_summary, headline, number
from echochamber.report.tables import context_flag as _context_flag
from echochamber.report.tables import e as _e
from echochamber.report.tables import findings_html, fmt, format_rules_html, pct, source_agreement_html, table

FINDINGS_FILE = "findings.json"
BROWSER_MAX_PROMPTS = 300  # over all runs and benchmarks (shared equally): keeps the page a few MB at most
TEXT_LIMIT = 2500  # characters of a generation shown; longer ones are cut with a marker
MATCH_LIMIT = 600  # characters of a matched span shown inside its document (the generation shows it all)
COMPARISONS = (("KL comparison", ("kl_coef", "kl")), ("Algorithm comparison", ("algo",)))


def build_report(path: Path, out: Path | None = None) -> Path:
    """Write the report of a run or sweep folder into `out` (default PATH/report/); returns index.html."""
    sweep = collect(Path(path))
    out = Path(out) if out is not None else Path(path) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create report folder {out}: {error.strerror}") from None
    prefixes = _unique_prefixes(sweep.runs)
    charts = [render_run_figures(run, out, prefix) for run, prefix in zip(sweep.runs, prefixes, strict=True)]
    comparisons = _comparisons(sweep, out)
    findings = json_safe(compute_findings(sweep))
    (out / FINDINGS_FILE).write_text(
        json.dumps(findings, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    )
    page = render_page(sweep, findings, charts, comparisons)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None and tuples as lists: what findings.json can hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _unique_prefixes(runs: list[RunData]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    prefixes = []
    for run in runs:
        base = slug(run.name)
        seen[base] += 1
        prefixes.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return prefixes


def _comparisons(sweep: SweepData, out: Path) -> list[tuple[str, str, Path | None]]:
    """(section, setting, PNG) for each group of cells that differ only in the KL coefficient or the algorithm."""
    found: list[tuple[str, str, Path | None]] = []
    seeds = [axis for axis in sweep.axes if "seed" in axis.lower()]
    for section, needles in COMPARISONS:
        axis = find_axis(sweep, *needles)
        if axis is None:
            continue
        label = _labeller([axis, *seeds])
        for key, runs in group_settings(sweep, {axis}).items():
            path = out / f"compare-{slug(section)}-{slug(key)}.png"
            if len({str(run.params.get(axis)) for run in runs}) >= 2:  # seeds of one value compare nothing
                found.append((section, key, render_comparison(runs, label, f"{section} · {key}", path)))
    for series in dose_series(sweep):  # KL as a dose: the end of RL against KL, with seed intervals
        path = out / f"dose-KL-{slug(series.setting)}.png"
        found.append((COMPARISONS[0][0], f"{series.setting} · dose", render_dose(series, path)))
    return found


def _labeller(axes: list[str]) -> Callable[[RunData], str]:
    """A run's legend label: its values on `axes` ("rl.kl_coef=0.01, seed=1")."""
    return lambda run: ", ".join(f"{name}={run.params[name]}" for name in axes if name in run.params)


# ---------------------------------------------------------------------------------------------
# HTML


def render_page(
    sweep: SweepData,
    findings: list[dict[str, Any]],
    charts: list[dict[str, Path]],
    comparisons: list[tuple[str, str, Path | None]],
) -> str:
    sections = [
        ("findings", "Findings", findings_html(findings)),
        *([("cells", "Cells", _cells_html(sweep))] if sweep.kind == "sweep" else []),
        ("comparisons", "KL and algorithm comparisons", _comparisons_html(sweep, comparisons)),
        ("crossover", "pass@k at large k: does the base model catch up?", crossover_html(sweep)),
        *[(f"run-{i}", f"Run {run.name}", _run_html(run, charts[i])) for i, run in enumerate(sweep.runs)],
        ("browser", "Generation browser", _browser_html(sweep)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in sections)
    body = "".join(
        f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>' for key, title, content in sections
    )
    what = f"sweep of {len(sweep.runs)} cells" if sweep.kind == "sweep" else "run"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>echochamber report · {_e(sweep.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>echochamber report · {_e(sweep.name)}</h1><p class=sub>{_e(what)} · {_e(str(sweep.path))}</p>"
        f"<nav>{nav}</nav></header><main>{body}</main><script>{JS}</script></body></html>\n"
    )


def _img(path: Path, alt: str) -> str:
    png = path.read_bytes()
    wide = int.from_bytes(png[16:20], "big") > 600  # the IHDR width: multi-panel charts take a whole row
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="{"wide" if wide else ""}"><img src="data:image/png;base64,{data}" alt="{_e(alt)}" data-file="{_e(path.name)}">'
        f'<figcaption>{_e(alt)} · <a href="{_e(path.name)}">{_e(path.name)}</a></figcaption></figure>'
    )


def _missing(what: str, why: str) -> str:
    return f'<div class="missing"><b>{_e(what)}</b>: not run ({_e(why)})</div>'


def _cells_html(sweep: SweepData) -> str:
    axes = "".join(
        f"<li><code>{_e(axis)}</code>: {_e(', '.join(map(str, values)))}</li>"
        for axis, values in sweep.axes.items()
    )
    rows = []
    for i, run in enumerate(sweep.runs):
        bench = main_benchmark([run])
        before, after = (
            headline(run.eval(phase, bench).results) if run.eval(phase, bench) else None
            for phase in ("base", "final")
        )
        rows.append([
            f'<a href="#run-{i}">{_e(run.name)}</a>', _e(fmt(run.params) if run.params else "—"), _e(_stages_line(run)),
            _e(bench or "—"), pct(before), pct(after), _delta(before, after), _e(_format_after(run, bench)),
        ])  # fmt: skip
    header = [
        "cell",
        "parameters",
        "stages",
        "benchmark",
        "pass@1 before",
        "pass@1 after",
        "Δ",
        "format after RL",
    ]
    return f"<p>{_e(sweep.progress())}.</p><ul>{axes}</ul>" + table(header, rows)


def _format_after(run: RunData, bench: str | None) -> str:
    """The winning real format after RL, or "degenerate" where `other` is the most frequent label."""
    final = run.eval("final", bench)
    summary = format_summary(final.results) if final else None
    if (other := degenerate(summary)) is not None:
        return f"degenerate (other {other:.0%})"
    top = dominant(summary)
    return f"{top[0]} ({top[1]:.0%})" if top else "—"


def _stages_line(run: RunData) -> str:
    if run.missing:
        return "not run"
    stages = run.info.get("stages") or {}
    if stages:
        return ", ".join(
            f"{name} {'✓' if (info or {}).get('done') else '…'}" for name, info in stages.items()
        )
    found = [
        name
        for name, present in (("pretrain", run.pretrain), ("rl", run.rl), ("eval", any(run.evals.values())))
        if present
    ]
    return ", ".join(found) or "not run"


def _delta(before: float | None, after: float | None) -> str:
    return "—" if before is None or after is None else f"{100 * (after - before):+.1f} pts"


def _comparisons_html(sweep: SweepData, comparisons: list[tuple[str, str, Path | None]]) -> str:
    parts = []
    for section, needles in COMPARISONS:
        axis = find_axis(sweep, *needles)
        if axis is None:
            parts.append(_missing(section, f"the sweep has no axis over {'/'.join(needles)}"))
            continue
        figures = [_img(path, f"{section} · {key}") for s, key, path in comparisons if s == section and path]
        if not figures:
            figures = [_missing(section, f"no two cells with RL metrics differ only in {axis}")]
        parts.append(
            f"<h3>{_e(section)} (axis <code>{_e(axis)}</code>)</h3><div class=grid>{''.join(figures)}</div>"
        )
    return "".join(parts)


def _run_html(run: RunData, charts: dict[str, Path]) -> str:
    if run.missing:
        return _missing(run.name, run.missing)
    facts = [
        ("parameters", fmt(run.params) if run.params else "—"),
        ("stages", _stages_line(run)),
        ("pretraining", f"{len(run.pretrain)} logged steps" if run.pretrain else
         f"the checkpoint {run.config['pretrained']}" if run.config.get("pretrained") else "not run"),  # fmt: skip
        (
            "RL",
            f"{run.algo or '?'}, {len(run.rl)} steps, KL coefficient {fmt(run.kl_coef)}"
            f"{_context_flag('prompts', run.rl_prompts.get('context'))}"
            if run.rl
            else "not run",
        ),
        *[
            (
                f"eval {phase}",
                ", ".join(
                    f"{b} ({d.source}){_context_flag('prompts', (d.results or {}).get('context'))}"
                    for b, d in run.evals[phase].items()
                )
                or "not run",
            )
            for phase in ("base", "final")
        ],
    ]
    info = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    figures = [
        _img(charts[key], caption) if key in charts else _missing(caption, why)
        for key, (caption, why, _) in RUN_CHARTS.items()
    ]
    tables = [_before_after_html(run, bench) for bench in run.benchmarks()] or [
        _missing("Before/after tables", "no evaluation")
    ]
    return f"<dl>{info}</dl><div class=grid>{''.join(figures)}</div><h3>Before and after RL</h3>{''.join(tables)}"


def _result_rows(results: dict[str, Any] | None) -> dict[str, tuple[float | None, str]]:
    """Label -> (value, kind) of a results.json: kind "pct" or "tokens"."""
    if not results:
        return {}
    rows: dict[str, tuple[float | None, str]] = {}
    greedy, sampled = results.get("greedy") or {}, results.get("sampled") or {}
    if greedy:
        rows["pass@1 (greedy)"] = (number(greedy.get("pass@1")), "pct")
    ks = sorted(int(key.split("@")[1]) for key in sampled if key.startswith("pass@"))
    for k in ks:
        rows[f"pass@{k} (sampled)"] = (number(sampled.get(f"pass@{k}")), "pct")
        rows[f"maj@{k} (sampled)"] = (number(sampled.get(f"maj@{k}")), "pct")
    summary = sampled or greedy
    rows["accuracy, all generations"] = (number(summary.get("accuracy")), "pct")
    rows["truncation rate"] = (number(summary.get("truncation_rate")), "pct")
    rows["mean tokens"] = (number(summary.get("mean_tokens")), "tokens")
    for name, stats in (format_summary(results) or {}).items():
        rows[f"{name} share"] = (number(stats.get("share")), "pct")
        rows[f"{name} accuracy"] = (number(stats.get("accuracy")), "pct")
    echo = summary.get("provenance") or {}
    for name, share in (echo.get("unique_share") or {}).items():
        rows[f"n-grams in {name} alone"] = (number(share), "pct")
    if echo:
        rows["novel n-grams"] = (number(echo.get("novelty")), "pct")
        rows["longest verbatim span (mean tokens)"] = (number(echo.get("longest_match_mean")), "tokens")
    return rows


def _before_after_html(run: RunData, bench: str) -> str:
    base, final = run.eval("base", bench), run.eval("final", bench)
    before = _result_rows(base.results if base else None)
    after = _result_rows(final.results if final else None)
    labels = list(dict.fromkeys([*before, *after]))
    if not labels:
        return _missing(f"{bench}: before/after", "no results.json yet")

    def cell(value: float | None, kind: str) -> str:
        return pct(value) if kind == "pct" else ("—" if value is None else f"{value:.1f}")

    rows = []
    for label in labels:
        b, a = before.get(label, (None, ""))[0], after.get(label, (None, ""))[0]
        kind = (before.get(label) or after[label])[1]
        change = _delta(b, a) if kind == "pct" else ("—" if a is None or b is None else f"{a - b:+.1f}")
        rows.append([_e(label), cell(b, kind), cell(a, kind), change])
    source = f"before: {base.source if base else 'not run'} · after: {final.source if final else 'not run'}"
    rules = format_rules_html("before RL", base) + format_rules_html("after RL", final)
    rules += source_agreement_html([("before RL", base), ("after RL", final)])
    return (
        f"<h4>{_e(bench)} <small>{_e(source)}</small></h4>"
        + table(["metric", "before RL", "after RL", "Δ"], rows, "compact")
        + rules
    )


# ---------------------------------------------------------------------------------------------
# Generation browser


def _browser_html(sweep: SweepData) -> str:
    entries = browser_entries(sweep)
    if not entries:
        return _missing("Generation browser", "no generations.jsonl in any evaluation")
    notes = sorted(
        {d.note for run in sweep.runs for phase in run.evals.values() for d in phase.values() if d.note}
    )

    def select(name: str, label: str, options: list[tuple[str, str]]) -> str:
        items = "".join(
            f'<option value="{_e(v)}">{_e(text)}</option>' for v, text in [("any", "any"), *options]
        )
        return f'<label>{_e(label)} <select name="{name}">{items}</select></label>'

    formats = [(name, name) for name in sweep.formats]
    correct = [("true", "correct"), ("false", "wrong")]
    runs = [(name, name) for name in dict.fromkeys(e["run"] for e in entries)]
    benches = [(name, name) for name in dict.fromkeys(e["benchmark"] for e in entries)]
    controls = "".join([
        select("run", "run", runs), select("benchmark", "benchmark", benches),
        select("before_format", "format before", formats), select("before_correct", "before", correct),
        select("after_format", "format after", formats), select("after_correct", "after", correct),
    ])  # fmt: skip
    payload = json.dumps(entries, ensure_ascii=False).replace(
        "<", "\\u003c"
    )  # no "</script>" inside the JSON
    note = "".join(f'<p class="note">{_e(text)}</p>' for text in notes)
    return (
        f"<p>The same prompt before and after RL (greedy generation when evaluated, else the first sample); "
        f"{len(entries)} prompts embedded, chosen to cover every (correct before, correct after, format) combination.</p>{note}"
        f'<div id="browser-controls">{controls} <span id="browser-count"></span></div>'
        f'<script type="application/json" id="browser-data">{payload}</script><div id="browser-list"></div>'
    )


def browser_entries(sweep: SweepData) -> list[dict[str, Any]]:
    """The prompts the browser embeds, each with its before/after generation.

    Bounded by BROWSER_MAX_PROMPTS; within each (run, benchmark) the prompts are taken round-robin
    over (correct before, correct after, format before, format after) groups, so rare cases (a
    prompt RL broke, a format that vanished) are represented, not just the first prompts in order.
    """
    pairs = [(run, bench) for run in sweep.runs for bench in run.benchmarks()]
    per_pair = max(1, BROWSER_MAX_PROMPTS // max(len(pairs), 1))
    entries: list[dict[str, Any]] = []
    for run, bench in pairs:
        base, final = run.eval("base", bench), run.eval("final", bench)
        ids = list(dict.fromkeys([*(final.prompts if final else {}), *(base.prompts if base else {})]))
        groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
        for prompt_id in ids:
            sides = [_side(data, prompt_id) for data in (base, final)]
            groups[tuple((s or {}).get(key) for key in ("correct", "format") for s in sides)].append(
                prompt_id
            )
        budget = min(per_pair, BROWSER_MAX_PROMPTS - len(entries))
        for prompt_id in _round_robin(list(groups.values()), budget):
            source = final if final is not None and prompt_id in final.prompts else base
            assert source is not None
            entries.append({
                "run": run.name, "benchmark": bench, "id": prompt_id,
                "prompt": (base.prompt_texts if base else {}).get(prompt_id) or source.prompt_texts.get(prompt_id),
                "gold": source.prompts[prompt_id].gold,
                "before": _side(base, prompt_id), "after": _side(final, prompt_id),
            })  # fmt: skip
    return entries


def _round_robin(groups: list[list[str]], budget: int) -> list[str]:
    picked: list[str] = []
    depth = 0
    while len(picked) < budget and any(depth < len(group) for group in groups):
        picked.extend(group[depth] for group in groups if depth < len(group))
        depth += 1
    return picked[: max(budget, 0)]


def _side(data: EvalData | None, prompt_id: str) -> dict[str, Any] | None:
    prompt: PromptEval | None = data.prompts.get(prompt_id) if data else None
    if prompt is None:
        return None
    row = prompt.greedy or prompt.sample
    assert row is not None  # a prompt exists only once one of its rows was read
    text = str(row.get("text", ""))
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"\n… [{len(text) - TEXT_LIMIT} more characters]"
    sampled = None
    if prompt.n_sampled:
        mix = ", ".join(f"{name} {count}" for name, count in prompt.formats.most_common())
        sampled = f"{prompt.n_correct}/{prompt.n_sampled} samples correct · {mix}"
    return {
        "mode": row["mode"], "format": row["format"], "correct": bool(row["correct"]), "answer": row.get("answer"),
        "status": row.get("status"), "truncated": bool(row["truncated"]), "tokens": row.get("n_tokens"),
        "text": text, "sampled": sampled, "echo": _echo(row.get("provenance")),
    }  # fmt: skip


def _echo(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the browser shows of a generation's provenance: the longest verbatim span (its place in the
    shown text, cut at TEXT_LIMIT) and the training document around it (the span cut at MATCH_LIMIT)."""
    if not isinstance(provenance, dict):
        return None
    match = provenance.get("longest_match") or {}
    chars, span = match.get("chars"), str(match.get("text") or "")
    if chars is not None and chars[0] >= TEXT_LIMIT:
        chars = None  # the span lies past the shown text
    elif chars is not None:
        chars = [chars[0], min(chars[1], TEXT_LIMIT)]
    if len(span) > MATCH_LIMIT:
        half = MATCH_LIMIT // 2
        span = f"{span[:half]}\n… [{len(span) - MATCH_LIMIT} more characters, highlighted in the generation] …\n{span[-half:]}"
    return {
        "tokens": match.get("tokens"), "source": match.get("source"), "doc": match.get("doc"),
        "doc_offset": match.get("doc_offset"), "chars": chars, "span": span, "context": match.get("context"),
        "novelty": provenance.get("novelty"), "dominant": provenance.get("dominant_source"),
    }  # fmt: skip
