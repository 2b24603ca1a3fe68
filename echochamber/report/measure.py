"""From runs to the numbers the statistics need, and from estimates to finding objects.

A `Measure` turns one run into per-prompt values ({prompt id: value}); a setting's seeds give one
such sample each. `over_seeds` estimates a setting's mean, `paired` compares two settings that
share each seed's pretraining (per seed, per prompt: differences), `unpaired` two that do not.
`judge` and `finding` turn estimates into the report's finding objects (the schema of
findings.json, docs/statistics.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from echochamber.report.collect import PromptEval, RunData
from echochamber.report.results import degenerate, dominant, format_shares, format_summary, merge_names
from echochamber.report.stats import Claim, Estimate, estimate, evidence, overall, welch
from echochamber.rl.config import DEFAULT_KL_COEF

MAIN_BENCHMARKS = ("gsm8k", "world-test")  # the test set of the RL prompts' distribution
HARD_BENCHMARKS = ("world-hard", "math500", "aime")  # transfer: harder than what RL trained on
RUNG = re.compile(r"^world-(\d+)step$")  # a rung of the world's difficulty ladder: harder too
NEGLIGIBLE = 0.02  # directional claims: a change within ±2 points of a rate or share is no effect

Values = dict[str, float]  # prompt id -> a per-prompt value
Metric = Callable[[PromptEval], float | None]
Measure = Callable[[RunData], Values | None]  # a run -> per-prompt values


# ---------------------------------------------------------------------------------------------
# Per-prompt measures


def at(phase: str, benchmark: str | None, metric: Metric) -> Measure:
    """Per-prompt values of `metric` in one evaluation ("base" or "final") of a run."""

    def measure(run: RunData) -> Values | None:
        data = run.eval(phase, benchmark)
        if data is None:
            return None
        found = {key: metric(prompt) for key, prompt in data.prompts.items()}
        return {key: value for key, value in found.items() if value is not None} or None

    return measure


def gain(benchmark: str | None, metric: Metric) -> Measure:
    """Per-prompt after - before RL, paired by prompt id."""
    before, after = at("base", benchmark, metric), at("final", benchmark, metric)

    def measure(run: RunData) -> Values | None:
        old, new = before(run), after(run)
        if not old or not new:
            return None
        return difference(new, old) or None

    return measure


def difference(a: Values, b: Values) -> Values:
    """a - b per prompt both have, in a's order: not a set's, whose order follows the process's string
    hashes and would move the last digits of every sum over the result from one report to the next."""
    return {key: a[key] - b[key] for key in a if key in b}


def accuracy_gap(benchmark: str | None, a: str, b: str) -> Measure:
    """Base-model accuracy of format a minus that of format b, as per-prompt pseudo-values.

    A format's accuracy R = Σc_p / Σn_p (correct / generations of that format over prompts) is a
    ratio; its linearisation z_p = (c_p - R·n_p) / mean(n) gives per-prompt values R + z_p whose
    mean is exactly R and whose spread is the ratio's delta-method standard error (prompts as
    clusters). The difference of the two is paired by prompt."""

    def measure(run: RunData) -> Values | None:
        data = run.eval("base", benchmark)
        if data is None or not data.prompts:
            return None
        ids = list(data.prompts)
        values = np.zeros(len(ids))
        for sign, name in ((1.0, a), (-1.0, b)):
            n = np.array([data.prompts[i].formats[name] for i in ids], dtype=float)
            c = np.array([data.prompts[i].format_correct[name] for i in ids], dtype=float)
            if n.sum() == 0:
                return None
            rate = c.sum() / n.sum()
            values += sign * (rate + (c - rate * n) / n.mean())
        return dict(zip(ids, values.tolist(), strict=True))

    return measure


def pass1(prompt: PromptEval) -> float | None:
    return prompt.pass1


def share_of(name: str) -> Metric:
    return lambda prompt: prompt.share(name)


def pass_at(k: int) -> Metric:
    return lambda prompt: prompt.pass_at.get(k)


def maj_at(k: int) -> Metric:
    return lambda prompt: prompt.maj_at.get(k)


# ---------------------------------------------------------------------------------------------
# Choosing what to compare


def main_benchmark(runs: Sequence[RunData]) -> str | None:
    """The first benchmark evaluated both before and after RL, preferring the RL distribution's test set."""
    for run in runs:
        common = [name for name in run.evals.get("base", {}) if name in run.evals.get("final", {})]
        for name in [*MAIN_BENCHMARKS, *[n for n in common if not is_harder(n)]]:
            if name in common:
                return name
    return None


def is_harder(bench: str) -> bool:
    """Whether a benchmark is harder than what RL trains on (a transfer split)."""
    return bench in HARD_BENCHMARKS or RUNG.match(bench) is not None


def harder_benchmarks(runs: Sequence[RunData]) -> list[str]:
    """The transfer splits any run evaluated: the ladder's rungs by their steps, then the others."""
    names = {name for run in runs for evals in run.evals.values() for name in evals if is_harder(name)}
    rungs = sorted((n for n in names if RUNG.match(n)), key=lambda n: int(RUNG.match(n).group(1)))
    return [*rungs, *(n for n in HARD_BENCHMARKS if n in names)]


def common_k(runs: Sequence[RunData], bench: str | None) -> int:
    """The largest k with pass@k / maj@k for every prompt of both evaluations of every run (1 if none)."""
    ks: set[int] | None = None
    for run in runs:
        for phase in ("base", "final"):
            data = run.eval(phase, bench)
            for prompt in data.prompts.values() if data else ():
                ks = set(prompt.pass_at) if ks is None else ks & set(prompt.pass_at)
    return max(ks or {1})


def shares(run: RunData, phase: str, bench: str | None) -> dict[str, float] | None:
    """Format shares of one evaluation; for "final" without one, the last RL step's rollouts."""
    data = run.eval(phase, bench)
    if data is not None and format_summary(data.results):
        return format_shares(format_summary(data.results))
    if phase == "final" and run.rl and isinstance(run.rl[-1].get("format_share"), dict):
        return format_shares(run.rl[-1]["format_share"])
    return None


def pooled_shares(runs: Sequence[RunData], phase: str, bench: str | None) -> dict[str, float] | None:
    """Format shares averaged over the runs (seeds) that have them."""
    found = [s for run in runs if (s := shares(run, phase, bench))]
    if not found:
        return None
    names = merge_names([list(s) for s in found])
    return {name: float(np.mean([s.get(name, 0.0) for s in found])) for name in names}


def winner(runs: Sequence[RunData], bench: str | None) -> tuple[str, float] | None:
    """The real format (never `other`) with the largest share after RL, averaged over the seeds."""
    return dominant(pooled_shares(runs, "final", bench))


def degenerate_note(runs: Sequence[RunData], bench: str | None) -> str | None:
    """Why a setting is degenerate (after RL `other` is its most frequent label), else None."""
    other = degenerate(pooled_shares(runs, "final", bench))
    if other is None:
        return None
    return f"degenerate: after RL {other:.0%} of the generations are in no format (`other`), not a format collapse"


def is_default_kl_or_below(run: RunData) -> bool:
    """PPO/GRPO at the paper's KL or weaker (an unrecorded coefficient is the config default)."""
    return (run.kl_coef if run.kl_coef is not None else DEFAULT_KL_COEF) <= DEFAULT_KL_COEF * (1 + 1e-9)


def policy_gradient(runs: Sequence[RunData]) -> list[RunData]:
    """The runs the paper's main findings are about: the policy-gradient ones, PPO, GRPO and REINFORCE
    (the findings' "PPO/GRPO"; Expert Iteration is judged apart)."""
    return [run for run in runs if run.algo != "ei"]


def by_value(runs: Sequence[RunData], value: Callable[[RunData], Any], bench: str | None) -> dict[Any, list]:
    """Runs with a final evaluation, grouped by `value` (the KL coefficient, the algorithm, ...)."""
    groups: dict[Any, list[RunData]] = {}
    for run in runs:
        if value(run) is not None and run.eval("final", bench) is not None:
            groups.setdefault(value(run), []).append(run)
    return groups


def find_value(groups: dict[Any, list], wanted: float) -> Any:
    """The key of `groups` equal to `wanted` up to float rounding (None if absent)."""
    return next(
        (key for key in groups if math.isclose(float(key), wanted, rel_tol=1e-9, abs_tol=1e-15)), None
    )


# ---------------------------------------------------------------------------------------------
# Estimates over seeds


def _samples(runs: Sequence[RunData], measure: Measure) -> dict[Any, Values]:
    """Seed -> per-prompt values, for the runs the measure applies to (one run per seed)."""
    return {run.seed: values for run in runs if (values := measure(run))}


def over_seeds(runs: Sequence[RunData], measure: Measure) -> Estimate | None:
    """A setting's mean of a per-prompt quantity: over its seeds, or over the prompts of its one seed."""
    found = _samples(runs, measure)
    return estimate([list(values.values()) for values in found.values()], list(found))


def paired(
    a: Sequence[RunData], b: Sequence[RunData], measure: Measure, measure_b: Measure | None = None
) -> Estimate | None:
    """a - b for settings that share each seed's pretraining: per seed, the mean over common
    prompts of the per-prompt difference; seeds present on one side only are left out."""
    left, right = _samples(a, measure), _samples(b, measure_b or measure)
    seeds = [seed for seed in left if seed in right]
    diffs = [list(difference(left[s], right[s]).values()) for s in seeds]
    return estimate(diffs, seeds)


def unpaired(a: Sequence[RunData], b: Sequence[RunData], measure: Measure) -> Estimate | None:
    """a - b for settings that do not share a pretraining (another mixture or model size): Welch
    over the seeds when both sides have two or more, else their first seeds paired by prompt."""
    left, right = over_seeds(a, measure), over_seeds(b, measure)
    if left is None or right is None:
        return None
    if left.level == "seed" and right.level == "seed":
        return welch(left, right)
    one, two = (next(iter(_samples(side, measure).items())) for side in (a, b))
    diffs = list(difference(one[1], two[1]).values())
    return estimate([diffs], [f"{one[0]} vs {two[0]}"])


# ---------------------------------------------------------------------------------------------
# Finding objects (findings.json)


def judge(
    setting: str,
    claim: Claim,
    found: Estimate | None,
    details: dict[str, Any] | None = None,
    note: str | None = None,
    verdict: str | None = None,
    replicated: bool | None = None,
    limits: tuple[float, float] | None = (-1.0, 1.0),
) -> dict[str, Any]:
    """One setting's result: the claim's verdict from the interval (unless `verdict` overrides it,
    e.g. inconclusive for too little data) and its evidence. The interval is shown cut to `limits`,
    the values the quantity can take (a rate or share in [0, 1], a difference of two in [-1, 1]): a
    t interval knows no bounds, the quantity does; no verdict changes by the cut."""
    if found is None:
        return not_tested(setting, note or "no data", details)
    verdict = verdict or claim.verdict(found.interval)
    if replicated is None:
        kind = evidence(claim, found, verdict)
    else:
        kind = "replicated" if replicated else "single_seed"
    interval = found.interval
    if interval is not None and limits is not None:
        interval = (max(interval[0], limits[0]), min(interval[1], limits[1]))
    return {
        "setting": setting, "verdict": verdict, "evidence": kind, "seeds": found.n_seeds, "basis": found.basis,
        "effect": found.effect, "interval": list(interval) if interval else None,
        "per_seed": [
            {"seed": seed, "effect": value, "n_prompts": n}
            for seed, value, n in zip(found.seeds, found.per_seed, found.n_prompts, strict=True)
        ],
        "details": details or {}, "note": note,
    }  # fmt: skip


def not_tested(setting: str, note: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "setting": setting, "verdict": "not_tested", "evidence": "single_seed", "seeds": 0, "basis": None,
        "effect": None, "interval": None, "per_seed": [], "details": details or {}, "note": note,
    }  # fmt: skip


def inconclusive(setting: str, note: str, details: dict[str, Any], seeds: int) -> dict[str, Any]:
    """A setting that was measured but cannot be judged (degenerate text, too few generations)."""
    return not_tested(setting, note, details) | {"verdict": "inconclusive", "seeds": seeds}


def finding(
    id: str, title: str, claim: Claim, unit: str, settings: list[dict[str, Any]], missing: str
) -> dict[str, Any]:
    """A finding object: the overall verdict over its settings (stats.overall) with the deciding
    setting's numbers on top; "replicated" only if every setting it rests on is, and `seeds` the
    fewest seeds among those settings (all tested ones for a reproduced finding, else the decider)."""
    verdict, decider = overall([s["verdict"] for s in settings])
    top = settings[decider] if decider is not None else not_tested("", missing)
    tested = [s for s in settings if s["verdict"] != "not_tested"]
    rests_on = tested if verdict == "reproduced" else [top]
    replicated = verdict in ("reproduced", "not_reproduced") and all(
        s["evidence"] == "replicated" for s in rests_on
    )
    return {
        "id": id, "title": title, "verdict": verdict, "evidence": "replicated" if replicated else "single_seed",
        "seeds": min((s["seeds"] for s in rests_on), default=0), "effect": top["effect"],
        "interval": top["interval"], "per_seed": top["per_seed"], "setting": top["setting"] or None,
        "kind": claim.kind, "null": claim.null, "unit": unit, "settings": settings,
        "note": _untested_note(settings, missing) if verdict == "not_tested" else top["note"],
    }  # fmt: skip


def _untested_note(settings: list[dict[str, Any]], missing: str) -> str:
    """Why nothing was tested: each setting's own reason, or what is missing where no setting applied."""
    reasons = list(dict.fromkeys(s["note"] for s in settings if s["note"]))
    return "; ".join(reasons) or missing
