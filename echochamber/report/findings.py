"""The paper's findings, measured on whatever a run or sweep folder holds (`compute_findings`).

Each finding is a dict {name, statement, reproduced, numbers, ci, note}: `reproduced` is True, False,
or None with a note saying which data are missing ("not enough data" is a result, never a silent
pass). Confidence intervals are 95 % percentile bootstraps of a mean: over seeds when a setting
(the cell parameters other than the seed) has two or more seeds, otherwise over the prompts of the
one run, paired by prompt id where two evaluations share prompts. Tolerances are named constants so
a reader can see what "flat" and "similar" mean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from echochamber.report.collect import (
    PromptEval,
    RunData,
    SweepData,
    dominant,
    eval_benchmark,
    find_axis,
    format_shares,
    format_summary,
    group_settings,
    headline,
    number,
)

COLLAPSE_SHARE = 0.9  # the paper's "collapse": one format above 90 % of the generations
FLAT = 0.02  # pass@k "flat": it rises by no more than 2 points
SIMILAR = 0.05  # pass@1 "similar": within 5 points
DEFAULT_KL = 1e-3  # the paper's KL coefficient
MAIN_BENCHMARKS = ("gsm8k", "world-test")  # the test set of the RL prompts' distribution
HARD_BENCHMARKS = ("world-hard", "math500", "aime")  # transfer: harder than what RL trained on
RESAMPLES = 2000

Values = dict[str, float]  # prompt id -> a per-prompt value
Metric = Callable[[PromptEval], float | None]
Measure = Callable[[RunData], Values | None]  # a run -> per-prompt values


def compute_findings(sweep: SweepData) -> list[dict[str, Any]]:
    return [
        *_collapse(sweep),
        _passk_flat_majk_rises(sweep),
        *_kl(sweep),
        _algorithms(sweep),
        _hard_transfer(sweep),
        _mixture_flip(sweep),
        _model_size(sweep),
    ]


# ---------------------------------------------------------------------------------------------
# Statistics


def _resampled_means(values: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    return data[rng.integers(0, len(data), size=(RESAMPLES, len(data)))].mean(axis=1)


def bootstrap_ci(values: Sequence[float], minus: Sequence[float] | None = None) -> list[float] | None:
    """95 % percentile bootstrap interval of mean(values), or of mean(values) - mean(minus) for two
    independent samples (the seeds of two settings); None with fewer than two values in a sample."""
    if len(values) < 2 or (minus is not None and len(minus) < 2):
        return None
    rng = np.random.default_rng(0)  # a report is a pure function of its folder
    means = _resampled_means(values, rng) - (_resampled_means(minus, rng) if minus is not None else 0.0)
    return [float(x) for x in np.quantile(means, [0.025, 0.975])]


def _estimate(runs: Sequence[RunData], values: Measure) -> dict[str, Any] | None:
    """Mean and CI of a per-prompt quantity: over seeds with two or more runs, else over prompts."""
    per_run = [list(v.values()) for v in map(values, runs) if v]
    if not per_run:
        return None
    sample = [float(np.mean(v)) for v in per_run] if len(per_run) >= 2 else per_run[0]
    basis = f"{len(sample)} seeds" if len(per_run) >= 2 else f"{len(sample)} prompts"
    return {"mean": float(np.mean(sample)), "ci": bootstrap_ci(sample), "basis": basis}


def _compare(a: Sequence[RunData], b: Sequence[RunData], values: Measure) -> dict[str, Any] | None:
    """mean(a) - mean(b): over seeds when both settings have two or more, else paired over prompts."""
    va, vb = [v for v in map(values, a) if v], [v for v in map(values, b) if v]
    if not va or not vb:
        return None
    if len(va) >= 2 and len(vb) >= 2:
        ma, mb = ([float(np.mean(list(v.values()))) for v in group] for group in (va, vb))
        basis = f"{len(ma)} vs {len(mb)} seeds"
        return {"mean": float(np.mean(ma) - np.mean(mb)), "ci": bootstrap_ci(ma, minus=mb), "basis": basis}
    diffs = [va[0][key] - vb[0][key] for key in va[0].keys() & vb[0].keys()]
    if not diffs:
        return None
    return {"mean": float(np.mean(diffs)), "ci": bootstrap_ci(diffs), "basis": f"{len(diffs)} paired prompts"}


def _at(phase: str, benchmark: str | None, metric: Metric) -> Measure:
    """Per-prompt values of `metric` in one evaluation ("base" or "final") of a run."""

    def measure(run: RunData) -> Values | None:
        data = run.eval(phase, benchmark)
        if data is None:
            return None
        found = {key: metric(prompt) for key, prompt in data.prompts.items()}
        return {key: value for key, value in found.items() if value is not None} or None

    return measure


def _gain(benchmark: str | None, metric: Metric) -> Measure:
    """Per-prompt after - before, paired by prompt id."""
    before, after = _at("base", benchmark, metric), _at("final", benchmark, metric)

    def measure(run: RunData) -> Values | None:
        old, new = before(run), after(run)
        if not old or not new:
            return None
        return {key: new[key] - old[key] for key in new.keys() & old.keys()} or None

    return measure


def _pass1(prompt: PromptEval) -> float | None:
    return prompt.pass1


def _share_of(name: str) -> Metric:
    return lambda prompt: prompt.share(name)


def _pass_at(k: int) -> Metric:
    return lambda prompt: prompt.pass_at.get(k)


def _maj_at(k: int) -> Metric:
    return lambda prompt: prompt.maj_at.get(k)


# ---------------------------------------------------------------------------------------------
# Choosing what to compare


def main_benchmark(runs: Sequence[RunData]) -> str | None:
    """The first benchmark evaluated both before and after RL, preferring the RL distribution's test set."""
    for run in runs:
        common = [name for name in run.evals.get("base", {}) if name in run.evals.get("final", {})]
        for name in [*MAIN_BENCHMARKS, *[n for n in common if n not in HARD_BENCHMARKS]]:
            if name in common:
                return name
    return None


def _final_format(run: RunData, benchmark: str | None) -> tuple[str, float] | None:
    """The format that dominates after RL: the final evaluation's, else the last RL step's."""
    final = run.eval("final", benchmark)
    found = dominant(format_summary(final.results)) if final is not None else None
    return found or (dominant(run.rl[-1].get("format_share")) if run.rl else None)


def _finding(
    name: str,
    statement: str,
    verdicts: list[bool | None],
    numbers: dict[str, Any],
    ci: dict[str, Any],
    missing: str,
) -> dict[str, Any]:
    """All verdicts True -> reproduced; any False -> not; nothing measurable -> None + why."""
    if not numbers:
        reproduced, note = None, f"not enough data: {missing}"
    elif any(v is False for v in verdicts):
        reproduced, note = False, None
    elif verdicts and all(v is True for v in verdicts):
        reproduced, note = True, None
    else:
        reproduced, note = None, "not enough data for a confidence interval"
    return dict(name=name, statement=statement, reproduced=reproduced, numbers=numbers, ci=ci, note=note)


# ---------------------------------------------------------------------------------------------
# The findings


def _policy_gradient(runs: Sequence[RunData]) -> list[RunData]:
    """The runs the paper's main findings are about: PPO and GRPO. Expert Iteration is a different
    claim (it moves formats only mildly), judged in the algorithm comparison."""
    return [run for run in runs if run.algo != "ei"]


def _collapse(sweep: SweepData) -> list[dict[str, Any]]:
    """Two findings: the collapse itself, and (among the runs that collapsed) whether it came with
    the largest pass@1 gain. Kept apart so a run that collapses after its accuracy rose reads as
    what it is, not as "no collapse"."""
    numbers, ci, collapsed, timing_numbers, timing = {}, {}, [], {}, []
    for run in _policy_gradient(sweep.runs):
        # A KL stronger than the paper's default is meant to keep formats (its own finding below).
        if not run.rl or (run.kl_coef or 0.0) > DEFAULT_KL:
            continue
        bench = main_benchmark([run])
        name, share = _final_format(run, bench) or ("other", 0.0)
        estimate = _estimate([run], _at("final", bench, _share_of(name)))
        share = estimate["mean"] if estimate else share  # the final evaluation when there is one
        tops = [(row["step"], dominant(row.get("format_share"))) for row in run.rl]
        collapse = next((step for step, top in tops if top and top[1] > COLLAPSE_SHARE), None)
        numbers[run.name] = {"format": name, "max share after RL": share, "first step above threshold": collapse}
        if estimate and estimate["ci"]:
            ci[f"{run.name}: {name} share"] = estimate["ci"]
        collapsed.append(share > COLLAPSE_SHARE)
        window = _largest_gain(run, bench)
        if share > COLLAPSE_SHARE and collapse is not None and window is not None:
            start, end, signal = window
            timing_numbers[run.name] = {
                "first step above threshold": collapse,
                "largest pass@1 gain (steps)": f"{start}–{end} ({signal})",
            }
            timing.append(start - (end - start) < collapse <= end + (end - start))  # within one interval
    return [
        _finding(
            "collapse",
            f"PPO/GRPO (KL ≤ {DEFAULT_KL:g}) collapse the outputs onto one format (max share > {COLLAPSE_SHARE:.0%} "
            "after RL).",
            collapsed, numbers, ci, "no RL metrics",
        ),
        _finding(
            "collapse_with_gain",
            "Where PPO/GRPO collapse, the collapse coincides with the largest pass@1 gain (within one "
            "measurement interval).",
            timing, timing_numbers, {}, "no run collapsed with periodic evaluations or training accuracy to time it",
        ),
    ]  # fmt: skip


def _largest_gain(run: RunData, benchmark: str | None) -> tuple[int, int, str] | None:
    """(from step, to step, signal) of the largest pass@1 rise: between RL's periodic evaluations when
    there are two or more, else in the training accuracy averaged over a tenth of the steps."""
    benchmark = benchmark or next((eval_benchmark(line) for line in run.rl_eval), None)
    points = [
        (line["step"], value)
        for line in run.rl_eval
        if eval_benchmark(line) == benchmark and (value := headline(line)) is not None
    ]
    if len(points) >= 2:
        i = max(range(1, len(points)), key=lambda j: points[j][1] - points[j - 1][1])
        return points[i - 1][0], points[i][0], f"{benchmark} pass@1"
    rows = [(row["step"], acc) for row in run.rl if (acc := number(row.get("accuracy"))) is not None]
    width = max(1, len(rows) // 10)
    if len(rows) < 2 * width + 1:
        return None
    # means[j] averages rows j .. j+width-1; the rise from one window to the next is the gain.
    means = np.convolve([acc for _, acc in rows], np.ones(width) / width, mode="valid")
    j = int(np.argmax(means[width:] - means[:-width])) + width
    return rows[j - 1][0], rows[j + width - 1][0], "training accuracy"


def _common_k(runs: Sequence[RunData], bench: str | None) -> int:
    """The largest k with pass@k / maj@k for every prompt of both evaluations of every run (1 if none)."""
    ks: set[int] | None = None
    for run in runs:
        for phase in ("base", "final"):
            data = run.eval(phase, bench)
            for prompt in data.prompts.values() if data else ():
                ks = set(prompt.pass_at) if ks is None else ks & set(prompt.pass_at)
    return max(ks or {1})


def _passk_flat_majk_rises(sweep: SweepData) -> dict[str, Any]:
    numbers, ci, verdicts = {}, {}, []
    for key, group in group_settings(sweep).items():
        runs = _policy_gradient(group)
        bench = main_benchmark(runs)
        k = _common_k(runs, bench)
        if k < 2:  # pass@1 = maj@1: nothing to compare
            continue
        d_pass = _estimate(runs, _gain(bench, _pass_at(k)))
        d_maj = _estimate(runs, _gain(bench, _maj_at(k)))
        if d_pass is None or d_maj is None:
            continue
        over = d_maj["basis"]
        numbers[key] = {
            "benchmark": bench,
            f"Δpass@{k}": d_pass["mean"],
            f"Δmaj@{k}": d_maj["mean"],
            "over": over,
        }
        ci.update({f"{key}: Δpass@{k}": d_pass["ci"], f"{key}: Δmaj@{k}": d_maj["ci"]})
        verdicts.append(None if d_maj["ci"] is None else d_maj["ci"][0] > 0 and d_pass["mean"] <= FLAT)
    return _finding(
        "passk_flat_majk_rises",
        f"After PPO/GRPO, maj@k rises (CI above 0) while pass@k stays flat or falls (rises by at most {FLAT:.0%}).",
        verdicts, numbers, ci, "no sampled evaluation (n ≥ 2) both before and after RL",
    )  # fmt: skip


def _by_value(runs: Sequence[RunData], value: Callable[[RunData], Any], bench: str | None) -> dict[Any, list]:
    """Runs with a final evaluation, grouped by `value` (the KL coefficient, the algorithm, ...)."""
    groups: dict[Any, list[RunData]] = defaultdict(list)
    for run in runs:
        if value(run) is not None and run.eval("final", bench) is not None:
            groups[value(run)].append(run)
    return dict(groups)


def _mean(runs: Sequence[RunData], measure: Measure) -> float | None:
    estimate = _estimate(runs, measure)
    return estimate["mean"] if estimate else None


def _kl(sweep: SweepData) -> list[dict[str, Any]]:
    axis = find_axis(sweep, "kl_coef", "kl")
    keeps: dict[str, Any] = {"numbers": {}, "ci": {}, "verdicts": []}
    zero: dict[str, Any] = {"numbers": {}, "ci": {}, "verdicts": []}
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_kl = _by_value(runs, lambda r: r.kl_coef, bench)
        top = _final_format(by_kl[min(by_kl)][0], bench) if len(by_kl) >= 2 else None
        if top is None:
            continue
        low, high = min(by_kl), max(by_kl)
        share = {kl: _mean(by_kl[kl], _at("final", bench, _share_of(top[0]))) for kl in (low, high)}
        d_share = _compare(by_kl[high], by_kl[low], _at("final", bench, _share_of(top[0])))
        d_pass = _compare(by_kl[high], by_kl[low], _at("final", bench, _pass1))
        if d_pass is not None and d_share is not None:
            keeps["numbers"][key] = {
                "format": top[0], f"its share at kl={low:g}": share[low], f"its share at kl={high:g}": share[high],
                f"Δpass@1 (kl={high:g} − kl={low:g})": d_pass["mean"], "over": d_pass["basis"],
            }  # fmt: skip
            keeps["ci"].update({f"{key}: Δ{top[0]} share": d_share["ci"], f"{key}: Δpass@1": d_pass["ci"]})
            kept = None if d_share["ci"] is None else d_share["ci"][1] < 0  # significantly less collapsed
            keeps["verdicts"].append(kept and abs(d_pass["mean"]) <= SIMILAR if kept is not None else None)
        default = next((kl for kl in by_kl if math.isclose(kl, 1e-3)), None)
        if 0.0 not in by_kl or default is None:
            continue
        formats = {kl: _final_format(by_kl[kl][0], bench) for kl in (0.0, default)}
        d_zero = _compare(by_kl[0.0], by_kl[default], _at("final", bench, _pass1))
        if d_zero is not None and formats[0.0] and formats[default]:
            zero["numbers"][key] = {
                "format at kl=0": formats[0.0][0], "format at kl=1e-3": formats[default][0],
                "Δpass@1 (kl=0 − kl=1e-3)": d_zero["mean"], "over": d_zero["basis"],
            }  # fmt: skip
            zero["ci"][f"{key}: Δpass@1"] = d_zero["ci"]
            zero["verdicts"].append(formats[0.0][0] == formats[default][0] and abs(d_zero["mean"]) <= SIMILAR)
    return [
        _finding(
            "kl_keeps_formats",
            "A stronger KL penalty keeps more of the other formats (a lower share of the dominant one after RL) "
            f"at similar pass@1 (within {SIMILAR:.0%}).",
            keeps["verdicts"], keeps["numbers"], keeps["ci"], "no sweep axis over the KL coefficient with final evaluations",
        ),
        _finding(
            "kl0_like_default",
            f"KL coefficient 0 behaves like 1e-3: the same format wins and pass@1 is within {SIMILAR:.0%}.",
            zero["verdicts"], zero["numbers"], zero["ci"], "no pair of KL 0 and 1e-3 cells with final evaluations",
        ),
    ]  # fmt: skip


def _algorithms(sweep: SweepData) -> dict[str, Any]:
    axis = find_axis(sweep, "algo")
    numbers, ci, verdicts = {}, {}, []
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_algo = _by_value(runs, lambda r: r.algo, bench)
        if len(by_algo) < 2:
            continue
        row: dict[str, Any] = {"benchmark": bench}
        pass1: dict[str, float | None] = {}
        shift: dict[str, float] = {}  # how far RL moved the share of the format that wins
        for algo, members in sorted(by_algo.items()):
            pass1[algo] = row[f"{algo} pass@1"] = _mean(members, _at("final", bench, _pass1))
            top = _final_format(members[0], bench)
            moved = _mean(members, _gain(bench, _share_of(top[0]))) if top is not None else None
            if top is not None and moved is not None:
                shift[algo] = moved
                row[f"{algo} format"] = f"{top[0]} ({top[1]:.0%}, {moved:+.0%} vs base)"
            dip = _largest_dip(members[0])
            if dip is not None:
                row[f"{algo} largest accuracy dip"] = f"{dip[0]:.2f} ({'' if dip[1] else 'not '}recovered)"
        for other in ("grpo", "ei"):
            pair = {"ppo", other} <= by_algo.keys()
            if (
                pair
                and (diff := _compare(by_algo["ppo"], by_algo[other], _at("final", bench, _pass1)))
                is not None
            ):
                row[f"Δpass@1 (ppo − {other})"] = diff["mean"]
                ci[f"{key}: Δpass@1 ppo − {other}"] = diff["ci"]
        ppo, ei = pass1.get("ppo"), pass1.get("ei")
        if ppo is not None and ei is not None and {"ppo", "ei"} <= shift.keys():
            verdicts.append(ei < ppo and shift["ei"] < shift["ppo"])
        if "grpo" in by_algo:
            top = _final_format(by_algo["grpo"][0], bench)
            verdicts.append(top is not None and top[1] > COLLAPSE_SHARE)
        numbers[key] = row
    return _finding(
        "algorithms",
        "GRPO collapses onto one format like PPO (it may crash briefly, then recover); Expert Iteration "
        "shifts the format less and reaches a lower pass@1 than PPO.",
        verdicts, numbers, ci, "no sweep axis over the algorithm with final evaluations",
    )  # fmt: skip


def _largest_dip(run: RunData) -> tuple[float, bool] | None:
    """(largest fall of training accuracy below its running maximum, whether it came back within 5 points)."""
    acc = np.array([a for row in run.rl if (a := number(row.get("accuracy"))) is not None])
    if len(acc) < 3:
        return None
    peak = np.maximum.accumulate(acc)
    i = int(np.argmax(peak - acc))
    return float(peak[i] - acc[i]), bool(acc[i:].max() >= peak[i] - SIMILAR)


def _hard_transfer(sweep: SweepData) -> dict[str, Any]:
    numbers, ci, verdicts = {}, {}, []
    for key, group in group_settings(sweep).items():
        runs = _policy_gradient(group)
        for bench in HARD_BENCHMARKS:
            gain = _estimate(runs, _gain(bench, _pass1))
            if gain is None:
                continue
            numbers[f"{key} · {bench}"] = {
                "pass@1 before": _mean(runs, _at("base", bench, _pass1)), "Δpass@1": gain["mean"], "over": gain["basis"],
            }  # fmt: skip
            ci[f"{key} · {bench}: Δpass@1"] = gain["ci"]
            verdicts.append(None if gain["ci"] is None else gain["ci"][0] > 0)
    return _finding(
        "hard_transfer", "PPO/GRPO on the training distribution transfer to the harder split: pass@1 rises (CI above 0).",
        verdicts, numbers, ci, f"no evaluation on {', '.join(HARD_BENCHMARKS)} both before and after RL",
    )  # fmt: skip


def _mixture_flip(sweep: SweepData) -> dict[str, Any]:
    numbers, ci, verdicts = {}, {}, []
    for run in _policy_gradient(sweep.runs):
        bench = main_benchmark([run])
        base_eval, final_eval = run.eval("base", bench), run.eval("final", bench)
        base = format_summary(base_eval.results) if base_eval else None
        after = format_shares(
            format_summary(final_eval.results)
            if final_eval
            else (run.rl[-1].get("format_share") if run.rl else None)
        )
        frequent = dominant(base)
        # A format rarer than 5 % before RL has no meaningful accuracy.
        accuracy = {
            name: acc for name, stats in (base or {}).items()
            if (number(stats.get("share")) or 0.0) >= 0.05 and (acc := number(stats.get("accuracy"))) is not None
        }  # fmt: skip
        if not after or frequent is None or not accuracy:
            continue
        before = format_shares(base)
        amplified = max(after, key=lambda name: after[name] - before.get(name, 0.0))
        accurate = max(accuracy, key=accuracy.__getitem__)
        numbers[run.name] = {
            "most frequent before": f"{frequent[0]} ({frequent[1]:.0%})",
            "most accurate before": f"{accurate} ({accuracy[accurate]:.0%} correct)",
            "amplified by RL": f"{amplified} ({before.get(amplified, 0.0):.0%} → {after[amplified]:.0%})",
            "flip": amplified != frequent[0],
        }
        gain = _estimate([run], _gain(bench, _share_of(amplified)))
        if gain and gain["ci"]:
            ci[f"{run.name}: Δ{amplified} share"] = gain["ci"]
        verdicts.append(amplified == accurate)
    return _finding(
        "mixture_flip",
        "PPO/GRPO amplify the format that was most accurate before RL, even when another format was more "
        "frequent (a flip).",
        verdicts, numbers, ci, "no run evaluated (with format statistics) both before and after RL",
    )  # fmt: skip


def _model_size(sweep: SweepData) -> dict[str, Any]:
    axis = find_axis(sweep, "size", "model")
    numbers, ci, differs = {}, {}, []
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_size = _by_value(runs, lambda r: r.params.get(axis), bench)
        if len(by_size) < 2:
            continue
        order = [size for size in sweep.axes[axis] if size in by_size]  # the sweep lists sizes small -> large
        formats = {size: _final_format(by_size[size][0], bench) for size in order}
        numbers[key] = {
            f"{size}": f"{top[0]} ({top[1]:.0%}), pass@1 {_mean(by_size[size], _at('final', bench, _pass1)) or 0:.3f}"
            for size, top in formats.items()
            if top is not None
        }
        diff = _compare(by_size[order[-1]], by_size[order[0]], _at("final", bench, _pass1))
        if diff is not None:
            numbers[key][f"Δpass@1 ({order[-1]} − {order[0]})"] = diff["mean"]
            ci[f"{key}: Δpass@1 {order[-1]} − {order[0]}"] = diff["ci"]
        differs.append(len({top[0] for top in formats.values() if top is not None}) > 1)
    return _finding(
        "model_size",
        "Which format RL picks depends on model size in at least one setting (paper: on TinyGSM+OMI1+OMI2, "
        "150M → tinygsm code, 1B → omi2 text).",
        [any(differs)] if differs else [], numbers, ci, "no sweep axis over the model size with final evaluations",
    )  # fmt: skip
