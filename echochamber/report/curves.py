"""pass@k and maj@k curves over k = 1..K, before against after RL, and where the base curve crosses
the RL curve (the large-k question of Yue et al. 2025, arXiv 2504.13837).

A curve is the mean over an evaluation's prompts of each prompt's unbiased pass@k (maj@k) at every
k from 1 to K, the most samples every prompt has (collect.py scores every k; the estimators are
eval/passk.py's). Before and after are compared on the prompts both evaluated, so a curve gap is a
gap on the same questions.

Over seeds, the crossover is stated two ways: each seed's crossover k (`eval.passk.crossover` on
that seed's two curves), and per k the paired after - before difference of pass@k with its 95 %
interval over seeds (over prompts when there is one seed: `measure.over_seeds`), summarised as the
ks where RL is surely ahead (interval above 0) and where the base model is (interval below 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echochamber.eval.passk import crossover
from echochamber.report.collect import PromptEval, RunData, SweepData, group_settings
from echochamber.report.measure import gain, harder_benchmarks, main_benchmark, over_seeds, pass_at
from echochamber.report.stats import Estimate
from echochamber.report.tables import e, pct, table

MIN_K = 2  # a "curve" of pass@1 alone says nothing about large k


@dataclass(frozen=True)
class Curves:
    """One benchmark of one run: pass@k and maj@k at k = 1..K, before ("base") and after ("final") RL."""

    benchmark: str
    ks: list[int]
    passk: dict[str, list[float]]  # phase -> curve
    majk: dict[str, list[float]]
    prompts: int  # how many prompts each point averages


def ladder_order(runs: list[RunData]) -> list[str]:
    """The runs' benchmarks in reading order: the RL level, each rung of the ladder easiest first,
    world-hard and the real benchmarks, then any other."""
    main = main_benchmark(runs)
    first = [*([main] if main else []), *harder_benchmarks(runs)]
    return [*first, *sorted({b for run in runs for b in run.benchmarks()} - set(first))]


def depth(pass_at: dict[int, float]) -> int:
    """The largest K with pass@k for every k = 1..K (0: none)."""
    k = 0
    while k + 1 in pass_at:
        k += 1
    return k


def run_curves(run: RunData, bench: str) -> Curves | None:
    """`bench`'s curves in `run`, over the prompts evaluated both before and after RL, up to the
    largest K every one of them reaches; None unless that is at least MIN_K."""
    evals = {phase: run.eval(phase, bench) for phase in ("base", "final")}
    if None in evals.values():
        return None
    common = sorted(set.intersection(*(set(data.prompts) for data in evals.values() if data)))
    prompts = {phase: [data.prompts[i] for i in common] for phase, data in evals.items() if data}
    top = min((depth(p.pass_at) for found in prompts.values() for p in found), default=0)
    if top < MIN_K:
        return None
    ks = list(range(1, top + 1))

    def curve(found: list[PromptEval], table: str) -> list[float]:
        return [sum(getattr(p, table)[k] for p in found) / len(found) for k in ks]

    return Curves(
        bench, ks, {phase: curve(found, "pass_at") for phase, found in prompts.items()},
        {phase: curve(found, "maj_at") for phase, found in prompts.items()}, len(common),
    )  # fmt: skip


@dataclass(frozen=True)
class Crossover:
    """One setting's base-vs-RL pass@k comparison on one benchmark, over its seeds."""

    setting: str
    benchmark: str
    k_max: int
    per_seed: dict[Any, int | None]  # seed -> crossover k (1: base never behind; None: RL ahead at k_max)
    deltas: list[Estimate]  # after - before pass@k at k = 1..k_max

    def ks_where(self, ahead: str) -> list[int]:
        """The ks whose interval lies above 0 ("rl") or below 0 ("base")."""
        sign = 1 if ahead == "rl" else -1
        return [
            k for k, found in enumerate(self.deltas, start=1)
            if found.interval is not None and min(sign * bound for bound in found.interval) > 0
        ]  # fmt: skip


def crossovers(sweep: SweepData) -> list[Crossover]:
    """Per setting (its seeds together) and benchmark with sampled evaluations before and after RL."""
    found = []
    for setting, runs in group_settings(sweep).items():
        for bench in ladder_order(runs):
            curves = {run.seed: c for run in runs if (c := run_curves(run, bench)) is not None}
            if not curves:
                continue
            top = min(len(c.ks) for c in curves.values())
            per_seed = {
                seed: crossover(c.passk["final"][:top], c.passk["base"][:top]) for seed, c in curves.items()
            }
            seeded = [run for run in runs if run.seed in curves]
            deltas = [over_seeds(seeded, gain(bench, pass_at(k))) for k in range(1, top + 1)]
            estimates = [d for d in deltas if d is not None]  # all of them: every prompt has k <= top
            if len(estimates) == top:
                found.append(Crossover(setting, bench, top, per_seed, estimates))
    return found


def seed_words(k: int | None, k_max: int) -> str:
    """One seed's crossover in words."""
    if k is None:
        return f"none up to k={k_max} (RL ahead)"
    return "base never behind" if k == 1 else f"k={k}"


def spans(ks: list[int]) -> str:
    """1, 2, 3, 7, 8 -> "1–3, 7–8" (— for none)."""
    if not ks:
        return "—"
    runs: list[list[int]] = []
    for k in ks:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _delta(found: Estimate) -> str:
    interval = found.interval
    bounds = f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else " [no interval]"
    return f"{100 * found.effect:+.1f} pts{bounds}"


def crossover_html(sweep: SweepData) -> str:
    """The page's table: per setting and benchmark, Δ pass@1 and Δ pass@K with intervals, where RL
    or the base model is surely ahead, and each seed's crossover k."""
    rows = []
    for found in crossovers(sweep):
        first, last = found.deltas[0], found.deltas[-1]
        rows.append([
            e(found.setting), e(found.benchmark), e(first.basis), e(_delta(first)),
            f"k={found.k_max}: {e(_delta(last))}", e(spans(found.ks_where("rl"))),
            e(spans(found.ks_where("base"))),
            e("; ".join(f"seed {s}: {seed_words(k, found.k_max)}" for s, k in found.per_seed.items())),
        ])  # fmt: skip
    if not rows:
        return f"<p class=missing>no benchmark was sampled (n ≥ {MIN_K}) both before and after RL</p>"
    header = [
        "setting", "benchmark", "basis", "Δ pass@1 (RL − base)", "Δ pass@K", "RL ahead at k",
        "base ahead at k", "crossover (base ≥ RL from k on), per seed",
    ]  # fmt: skip
    note = (
        "<p class=sub>Intervals: 95 % over seeds (over prompts for one seed); "
        "“ahead” = the interval of Δ pass@k excludes 0. The curves: each run's pass@k chart.</p>"
    )
    return table(header, rows, "compact") + note


def curve_summary(curves: Curves) -> str:
    """A chart title's numbers: pass@1 and pass@K before → after."""
    top = curves.ks[-1]
    p = curves.passk
    return (
        f"pass@1 {pct(p['base'][0])}→{pct(p['final'][0])}, "
        f"pass@{top} {pct(p['base'][-1])}→{pct(p['final'][-1])}"
    )
