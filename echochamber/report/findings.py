"""The paper's findings, measured on whatever a run or sweep folder holds (`compute_findings`).

Each finding is one claim with a stated margin or threshold, judged per setting (the cell
parameters other than the seed) from a 95 % interval: Student-t over seeds when a setting has two
or more, else over the prompts of its one run (stats.py, docs/statistics.md). Each finding is a
dict of the findings.json schema (measure.finding): id, title, verdict in {reproduced,
not_reproduced, inconclusive, not_tested}, evidence in {replicated, single_seed}, seeds, effect,
interval, per_seed, kind, null, unit, settings, note. Missing data is a `not_tested` verdict with
a note, never a silent pass. This module holds the findings about one setting (collapse and its
timing, pass@k / maj@k, transfer, the mixture flip); comparisons.py those that compare settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from echochamber.report.collect import RunData, SweepData, group_settings
from echochamber.report.comparisons import comparison_findings, largest_dip
from echochamber.report.measure import (
    NEGLIGIBLE,
    accuracy_gap,
    at,
    common_k,
    degenerate_note,
    finding,
    gain,
    harder_benchmarks,
    inconclusive,
    is_default_kl_or_below,
    judge,
    main_benchmark,
    maj_at,
    not_tested,
    over_seeds,
    pass1,
    pass_at,
    policy_gradient,
    pooled_shares,
    share_of,
    winner,
)
from echochamber.report.results import dominant, merge_names, number, real_formats
from echochamber.report.stats import (
    REPLICATION_SEEDS,
    Claim,
    Estimate,
    fisher,
    lag_interval,
    lag_permutation_p,
    t_interval,
)

COLLAPSE_SHARE = 0.9  # the paper's "collapse": one format above 90 % of the generations
FLAT = 0.05  # pass@k "flat": rises by at most 5 points (the size of the paper's maj@64 rise)
MIN_FORMAT_COUNT = 20  # base-model generations of a format needed to know its accuracy
SMOOTH_STEPS = 5  # RL steps per window when locating the fastest rise of a training curve
PERMUTATIONS = 2000  # of the permutation null of the collapse/gain lag
LAG_RESAMPLES = 1000  # of one run's residual bootstrap of the lag
ALPHA = 0.05  # the permutation test's level (Fisher-combined over seeds)


def compute_findings(sweep: SweepData) -> list[dict[str, Any]]:
    return [
        _collapse(sweep),
        _collapse_timing(sweep),
        *_passk_majk(sweep),
        _hard_transfer(sweep),
        _mixture_flip(sweep),
        *comparison_findings(sweep),
    ]


def _collapse_settings(sweep: SweepData) -> dict[str, list[RunData]]:
    """PPO/GRPO runs at the default KL or weaker, by setting (a stronger KL is meant to keep formats)."""
    groups = {
        key: [r for r in policy_gradient(runs) if is_default_kl_or_below(r)]
        for key, runs in group_settings(sweep).items()
    }
    return {key: runs for key, runs in groups.items() if runs}


def _collapse(sweep: SweepData) -> dict[str, Any]:
    claim = Claim("threshold", COLLAPSE_SHARE)
    settings = []
    for key, runs in _collapse_settings(sweep).items():
        bench = main_benchmark(runs)
        top = winner(runs, bench)
        if bench is None or top is None:
            settings.append(not_tested(key, "no evaluation before and after RL"))
            continue
        dips = {str(run.seed): dip for run in runs if (dip := largest_dip(run)) is not None}
        details = {
            "benchmark": bench,
            "format": top[0],
            "largest training-accuracy dip per seed": dips or None,
        }
        found = over_seeds(runs, at("final", bench, share_of(top[0])))
        settings.append(judge(key, claim, found, details, degenerate_note(runs, bench), limits=(0.0, 1.0)))
    return finding(
        "collapse",
        f"PPO/GRPO (KL ≤ the default) collapse the outputs onto one format: its share after RL is above "
        f"{COLLAPSE_SHARE:.0%} (`other`, text in no format, never counts as one).",
        claim, "share of generations", settings, "no PPO/GRPO run evaluated after RL",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Does the collapse coincide with the largest accuracy gain?


def _training_series(run: RunData) -> tuple[str, np.ndarray, np.ndarray, list[int]] | None:
    """(winning format, its share, training accuracy, steps) over the RL steps that log both."""
    rows = [
        row
        for row in run.rl
        if isinstance(row.get("format_share"), dict) and number(row.get("accuracy")) is not None
    ]
    top = dominant(rows[-1]["format_share"]) if rows else None
    if top is None:
        return None
    share = np.array([number(row["format_share"].get(top[0])) or 0.0 for row in rows])
    accuracy = np.array([number(row["accuracy"]) for row in rows], dtype=float)
    return top[0], share, accuracy, [row["step"] for row in rows]


def _lag(run: RunData) -> dict[str, Any] | str:
    """One run's lag (collapse step - gain step) with its permutation p, or why there is none."""
    series = _training_series(run)
    if series is None:
        return "no per-step format shares and training accuracy"
    name, share, accuracy, steps = series
    if len(share) < 4 * SMOOTH_STEPS:
        return f"{len(share)} RL steps logged, too few to locate a rise with {SMOOTH_STEPS}-step windows"
    if share[-SMOOTH_STEPS:].mean() <= COLLAPSE_SHARE:
        return f"{name} ends training at {share[-SMOOTH_STEPS:].mean():.0%}: no collapse to time"
    rng = np.random.default_rng(0)  # a report is a pure function of its folder
    lag, p = lag_permutation_p(share, accuracy, SMOOTH_STEPS, PERMUTATIONS, rng)
    low, high = lag_interval(share, accuracy, SMOOTH_STEPS, LAG_RESAMPLES, rng)
    every = float(np.median(np.diff(steps)))  # RL steps per logged line (1: every step is logged)
    return {"seed": run.seed, "format": name, "lag": lag * every, "p": p, "interval": (low * every, high * every),
            "steps": len(steps)}  # fmt: skip


def _collapse_timing(sweep: SweepData) -> dict[str, Any]:
    claim = Claim("permutation", SMOOTH_STEPS)
    settings = []
    for key, runs in _collapse_settings(sweep).items():
        measured = [_lag(run) for run in runs]
        lags = [lag for lag in measured if not isinstance(lag, str)]
        if not lags:
            settings.append(
                not_tested(key, "; ".join(sorted({why for why in measured if isinstance(why, str)})))
            )
            continue
        values = [float(lag["lag"]) for lag in lags]
        interval = t_interval(values) if len(lags) >= 2 else lags[0]["interval"]
        found = Estimate(
            float(np.mean(values)), interval, tuple(values), tuple(lag["seed"] for lag in lags),
            tuple(lag["steps"] for lag in lags), "seed" if len(lags) >= 2 else "prompt", len(lags),
        )  # fmt: skip
        combined = fisher([lag["p"] for lag in lags])
        if combined < ALPHA:
            verdict = "reproduced"
        elif interval[0] > SMOOTH_STEPS or interval[1] < -SMOOTH_STEPS:
            verdict = "not_reproduced"
        else:
            verdict = "inconclusive"
        near = [abs(v) <= SMOOTH_STEPS for v in values]
        agree = all(near) if verdict == "reproduced" else not any(near)
        replicated = len(lags) >= REPLICATION_SEEDS and verdict != "inconclusive" and agree
        details = {
            "format": lags[0]["format"], "permutation p (Fisher over seeds)": combined,
            "p per seed": {str(lag["seed"]): lag["p"] for lag in lags},
        }  # fmt: skip
        result = judge(key, claim, found, details, verdict=verdict, replicated=replicated, limits=None)
        for row, lag in zip(result["per_seed"], lags, strict=True):
            row.update(p=lag["p"], n_prompts=None, steps=lag["steps"])
        settings.append(result)
    return finding(
        "collapse_with_gain",
        f"Where PPO/GRPO collapse, the winning format's fastest rise in share coincides with the fastest rise "
        f"of training accuracy ({SMOOTH_STEPS}-step windows): their lag is closer than chance (permutation "
        f"test, p < {ALPHA}); not reproduced when the lag's interval lies beyond ±{SMOOTH_STEPS} steps.",
        claim, "RL steps (share rise - accuracy rise)", settings, "no PPO/GRPO run with per-step RL metrics",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# pass@k / maj@k, transfer


def _passk_majk(sweep: SweepData) -> list[dict[str, Any]]:
    """maj@k rises (directional) and pass@k stays flat (non-superiority), per PPO/GRPO setting."""
    rises, flat = Claim("directional", NEGLIGIBLE), Claim("non_superiority", FLAT)
    maj_settings, pass_settings = [], []
    for key, group in group_settings(sweep).items():
        runs = policy_gradient(group)
        bench = main_benchmark(runs)
        k = common_k(runs, bench)
        if not runs or k < 2:  # pass@1 = maj@1: nothing to compare
            continue
        details = {"benchmark": bench, "k": k}
        maj_settings.append(judge(key, rises, over_seeds(runs, gain(bench, maj_at(k))), details))
        pass_settings.append(judge(key, flat, over_seeds(runs, gain(bench, pass_at(k))), details))
    missing = "no sampled evaluation (n ≥ 2) of a PPO/GRPO run both before and after RL"
    return [
        finding(
            "majk_rises", f"After PPO/GRPO, maj@k rises (interval above 0; within ±{NEGLIGIBLE:.0%} counts as no change).",
            rises, "Δ maj@k (fraction of prompts)", maj_settings, missing,
        ),
        finding(
            "passk_flat", f"After PPO/GRPO, pass@k stays flat or falls: it rises by at most {FLAT:.0%} (the interval's upper end).",
            flat, "Δ pass@k (fraction of prompts)", pass_settings, missing,
        ),
    ]  # fmt: skip


def _hard_transfer(sweep: SweepData) -> dict[str, Any]:
    """Per setting and harder split: the change of pass@1 measured as the mean over a prompt's
    samples where the evaluation drew several (64 samples resolve a 2 % prompt; greedy decoding
    reads 0 or 1 and sits at the floor on a rung the base rarely solves), else greedy correctness."""
    claim = Claim("directional", NEGLIGIBLE)
    settings = []
    for key, group in group_settings(sweep).items():
        runs = policy_gradient(group)
        for bench in harder_benchmarks(runs):
            k = common_k(runs, bench)
            metric, name = (pass_at(1), "sampled pass@1") if k > 1 else (pass1, "greedy pass@1")
            found = over_seeds(runs, gain(bench, metric))
            if found is not None:
                before = over_seeds(runs, at("base", bench, metric))
                details = {
                    "benchmark": bench,
                    "measure": name,
                    f"{name} before": before.effect if before else None,
                }
                if k > 1:
                    headroom = over_seeds(runs, at("base", bench, pass_at(k)))
                    details[f"pass@{k} before (headroom)"] = headroom.effect if headroom else None
                settings.append(judge(f"{key} · {bench}", claim, found, details))
    return finding(
        "hard_transfer",
        f"PPO/GRPO on the training distribution transfer to each harder split: pass@1 (over samples where "
        f"sampled, else greedy) rises (interval above 0; within ±{NEGLIGIBLE:.0%} counts as no change).",
        claim, "Δ pass@1 (fraction of prompts)", settings,
        "no evaluation of a harder split (a ladder rung world-<k>step, world-hard, math500, aime) both before and after RL",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The mixture flip: RL amplifies the most accurate format, not the most frequent one


def _declared(runs: list[RunData]) -> list[str]:
    """The declared formats (not `other`) of a setting's runs."""
    return real_formats(merge_names([run.formats for run in runs]))


def _format_counts(runs: list[RunData], bench: str | None) -> dict[str, list[int]]:
    """Per real format, its base-model generations in each seed."""
    counts: dict[str, list[int]] = {name: [] for name in _declared(runs)}
    for run in runs:
        data = run.eval("base", bench)
        for name in counts:
            counts[name].append(sum(p.formats[name] for p in data.prompts.values()) if data else 0)
    return counts


def _mixture_flip(sweep: SweepData) -> dict[str, Any]:
    claim = Claim("directional", NEGLIGIBLE)
    settings = []
    for key, group in group_settings(sweep).items():
        runs = policy_gradient(group)
        bench = main_benchmark(runs)
        runs = [run for run in runs if run.eval("base", bench) and run.eval("final", bench)]
        before, after = pooled_shares(runs, "base", bench), pooled_shares(runs, "final", bench)
        if not runs or not before or not after:
            continue
        if (note := degenerate_note(runs, bench)) is not None:
            settings.append(inconclusive(key, note, {"benchmark": bench}, len(runs)))
            continue
        settings.append(_flip_setting(key, runs, bench, before, after, claim))
    return finding(
        "mixture_flip",
        "PPO/GRPO amplify the format that was most accurate before RL, even where another was more frequent: "
        f"the amplified format's base accuracy minus the best other format's is above 0 (formats need "
        f"≥ {MIN_FORMAT_COUNT} base generations in every seed to be judged).",
        claim, "Δ base accuracy (amplified − best other format)", settings,
        "no PPO/GRPO run evaluated (with format statistics) both before and after RL",
    )  # fmt: skip


def _flip_setting(
    key: str,
    runs: list[RunData],
    bench: str | None,
    before: dict[str, float],
    after: dict[str, float],
    claim: Claim,
) -> dict[str, Any]:
    declared = _declared(runs)
    amplified = max(declared, key=lambda name: after.get(name, 0.0) - before.get(name, 0.0))
    frequent = max(declared, key=lambda name: before.get(name, 0.0))
    counts = _format_counts(runs, bench)
    rare = [name for name, n in counts.items() if max(n) > 0 and min(n) < MIN_FORMAT_COUNT]
    measured = [name for name, n in counts.items() if name != amplified and min(n) >= MIN_FORMAT_COUNT]
    accuracy = _base_accuracy(runs, bench)
    details: dict[str, Any] = {
        "benchmark": bench, "most frequent before": f"{frequent} ({before.get(frequent, 0.0):.0%})",
        "amplified by RL": f"{amplified} ({before.get(amplified, 0.0):.0%} → {after.get(amplified, 0.0):.0%})",
        "flip": amplified != frequent, "base generations per format (per seed)": counts,
        "base accuracy per format": accuracy,
    }  # fmt: skip
    if min(counts[amplified]) < MIN_FORMAT_COUNT:
        note = f"{amplified} has too few base generations ({min(counts[amplified])} < {MIN_FORMAT_COUNT}) to know its accuracy"
        return inconclusive(key, note, details, len(runs))
    if not measured:
        return not_tested(key, "no other format with enough base generations to compare with", details)
    best = max(measured, key=lambda name: accuracy.get(name) or 0.0)
    details["compared with"] = best
    found = over_seeds(runs, accuracy_gap(bench, amplified, best))
    verdict = claim.verdict(found.interval) if found else None
    unknown = [name for name in rare if name != amplified]
    if verdict == "reproduced" and unknown:
        note = f"{', '.join(unknown)}: too few base generations (< {MIN_FORMAT_COUNT}) to rule out a higher accuracy"
        return judge(key, claim, found, details, note, verdict="inconclusive")
    return judge(key, claim, found, details)


def _base_accuracy(runs: list[RunData], bench: str | None) -> dict[str, float | None]:
    """Per real format, its pooled base-model accuracy over the seeds (None without generations)."""
    declared = _declared(runs)
    correct = dict.fromkeys(declared, 0)
    total = dict.fromkeys(declared, 0)
    for run in runs:
        data = run.eval("base", bench)
        for prompt in data.prompts.values() if data else ():
            for name in declared:
                correct[name] += prompt.format_correct[name]
                total[name] += prompt.formats[name]
    return {name: correct[name] / total[name] if total[name] else None for name in declared}
