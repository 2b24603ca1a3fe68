"""KL as a dose: what PPO/GRPO end on across KL coefficients, and whether it moves with the dose.

A dose series is one setting's cells that differ only in the KL coefficient (three or more values;
each seed's cells share its pretraining and base evaluation). At each KL it holds, after RL, the
share of the default KL's winning format, the share of the runner-up (the other real format with
the largest share averaged over the doses), pass@1 and pass@k, each as a mean with its 95 %
interval over seeds (over prompts with one seed: stats.estimate).

The trend finding asks whether a stronger KL keeps more of the other formats, using every dose at
once: per prompt, the least-squares slope of the winner's share against the dose's rank in the
sweep (0, 1e-3, 1e-2, 1e-1 are ranks 0-3: one step is x10 between non-zero doses, and KL 0 is the
step below the smallest), then per seed the mean over prompts, then t over seeds. Ranks rather than
log KL because KL 0 has no logarithm and the sweep spaces its doses evenly on a log scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from echochamber.report.collect import RunData, SweepData, find_axis, group_settings
from echochamber.report.measure import (
    NEGLIGIBLE,
    Measure,
    at,
    by_value,
    common_k,
    find_value,
    finding,
    judge,
    main_benchmark,
    over_seeds,
    pass1,
    pass_at,
    policy_gradient,
    pooled_shares,
    share_of,
    winner,
)
from echochamber.report.results import real_formats
from echochamber.report.stats import Claim, Estimate, estimate
from echochamber.rl.config import DEFAULT_KL_COEF

MIN_DOSES = 3  # two KL values are a pair (the comparisons' findings), not a dose-response


@dataclass(frozen=True)
class DoseSeries:
    setting: str
    benchmark: str
    doses: tuple[float, ...]  # ascending
    default: float  # the dose the winner is taken at (the config's default KL, else the smallest)
    winner: str
    runner_up: str | None
    k: int  # pass@k's k: the largest every evaluation has
    curves: dict[str, tuple[Estimate | None, ...]]  # label -> one estimate per dose
    by_dose: dict[float, list[RunData]]


def dose_series(sweep: SweepData) -> list[DoseSeries]:
    """Every setting with PPO/GRPO cells at MIN_DOSES or more KL coefficients (with final evaluations)."""
    axis = find_axis(sweep, "kl_coef", "kl")
    found = []
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_kl = by_value(policy_gradient(runs), lambda r: r.kl_coef, bench)
        if len(by_kl) < MIN_DOSES or bench is None:
            continue
        doses = tuple(sorted(by_kl))
        default = find_value(by_kl, DEFAULT_KL_COEF)
        default = doses[0] if default is None else default
        top = winner(by_kl[default], bench)
        if top is None:
            continue
        found.append(_series(key, bench, doses, default, top[0], {d: by_kl[d] for d in doses}))
    return found


def _series(
    key: str,
    bench: str,
    doses: tuple[float, ...],
    default: float,
    top: str,
    by_kl: dict[float, list[RunData]],
) -> DoseSeries:
    mixes = [pooled_shares(by_kl[d], "final", bench) or {} for d in doses]
    others = [name for name in real_formats(list({n for mix in mixes for n in mix})) if name != top]
    runner = max(
        others, key=lambda name: (np.mean([mix.get(name, 0.0) for mix in mixes]), name), default=None
    )
    k = common_k([run for runs in by_kl.values() for run in runs], bench)
    metrics = {f"{top} share": share_of(top), "pass@1": pass1, f"pass@{k}": pass_at(k)}
    if runner is not None:
        metrics[f"{runner} share"] = share_of(runner)
    curves = {
        label: tuple(over_seeds(by_kl[d], at("final", bench, metric)) for d in doses)
        for label, metric in metrics.items()
    }
    return DoseSeries(key, bench, doses, default, top, runner, k, curves, by_kl)


def dose_slope(series: DoseSeries, measure: Measure) -> Estimate | None:
    """The per-prompt least-squares slope of `measure` against the dose's rank, per seed (the seeds
    evaluated at every dose, over the prompts every dose evaluated), then over seeds."""
    ranks = np.arange(len(series.doses), dtype=float)
    centred = ranks - ranks.mean()
    per_seed: dict[Any, list[float]] = {}
    seeds = set.intersection(*({run.seed for run in series.by_dose[d]} for d in series.doses))
    for seed in sorted(seeds, key=str):
        values = [next(measure(r) for r in series.by_dose[d] if r.seed == seed) for d in series.doses]
        if any(v is None for v in values):
            continue
        prompts = sorted(set.intersection(*(set(v) for v in values)))
        if prompts:
            y = np.array([[v[p] for v in values] for p in prompts])  # prompts x doses
            per_seed[seed] = ((y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)).tolist()
    return estimate(list(per_seed.values()), list(per_seed)) if per_seed else None


def kl_dose_trend(sweep: SweepData) -> dict[str, Any]:
    """The winner's share falls as the KL dose rises: -slope > 0 (directional, margin NEGLIGIBLE)."""
    claim = Claim("directional", NEGLIGIBLE)
    settings = []
    for series in dose_series(sweep):
        slope = dose_slope(series, at("final", series.benchmark, share_of(series.winner)))
        falls = None if slope is None else _negated(slope)
        details = {
            "benchmark": series.benchmark, "format": series.winner, "doses": [f"{d:g}" for d in series.doses],
            "share per dose": [e.effect if e else None for e in series.curves[f"{series.winner} share"]],
        }  # fmt: skip
        settings.append(judge(series.setting, claim, falls, details))
    return finding(
        "kl_dose_trend",
        "The stronger the KL penalty, the more of the other formats RL keeps: the default's winning format "
        f"loses share with every step of the KL dose (its per-step fall above 0; within ±{NEGLIGIBLE:.0%} "
        "per step is no trend).",
        claim, "fall in the winner's share per dose step (x10 KL)", settings,
        f"no setting with PPO/GRPO cells at {MIN_DOSES} or more KL coefficients with final evaluations",
    )  # fmt: skip


def _negated(found: Estimate) -> Estimate:
    interval = None if found.interval is None else (-found.interval[1], -found.interval[0])
    return Estimate(
        -found.effect, interval, tuple(-v for v in found.per_seed), found.seeds, found.n_prompts,
        found.level, found.n_seeds,
    )  # fmt: skip
