"""The findings that compare settings of a sweep: the KL coefficient, the algorithm, the model size.

Settings that differ only in what comes after pretraining (KL, algorithm) share each seed's
pretraining and base evaluation, so they are compared paired by seed and by prompt
(measure.paired); settings with another model size do not, and are compared unpaired
(measure.unpaired: Welch over seeds). Each comparison is a claim with a stated margin (stats.Claim).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from echochamber.report.collect import RunData, SweepData, find_axis, group_settings
from echochamber.report.dose import kl_dose_trend
from echochamber.report.measure import (
    NEGLIGIBLE,
    Measure,
    at,
    by_value,
    find_value,
    finding,
    gain,
    judge,
    main_benchmark,
    not_tested,
    over_seeds,
    paired,
    pass1,
    policy_gradient,
    share_of,
    unpaired,
    winner,
)
from echochamber.report.results import number
from echochamber.report.stats import Claim, Estimate
from echochamber.rl.config import DEFAULT_KL_COEF

SIMILAR = 0.05  # pass@1 "similar": the difference lies within ±5 points
SAME_SHARE = 0.10  # "the same format wins": its share differs by at most 10 points
SIZE_SHIFT = (
    0.5  # "another format wins at the larger size": the small model's winner loses over half its share
)
LEARNS_TASK = 0.30  # a run enters the size comparison if its base greedy pass@1 reaches 30 %
LEARNED_RUNS = 2  # ... and a size, with at least this many such runs (or its one run, in a one-seed sweep)
RECOVERED = 0.05  # a training-accuracy dip has recovered when accuracy returns within 5 points of its peak


def comparison_findings(sweep: SweepData) -> list[dict[str, Any]]:
    return [*_kl(sweep), kl_dose_trend(sweep), *_algorithms(sweep), _model_size(sweep)]


def _kl(sweep: SweepData) -> list[dict[str, Any]]:
    """Each KL stronger than the default keeps more of the other formats at similar pass@1 (one
    setting per dose); KL 0 behaves like the default (same winner, similar pass@1). All paired by
    seed: the cells share pretraining. The trend over all doses at once is dose.kl_dose_trend."""
    axis = find_axis(sweep, "kl_coef", "kl")
    keeps, similar = Claim("directional", NEGLIGIBLE), Claim("equivalence", SIMILAR)
    same = Claim("equivalence", SAME_SHARE)
    found: dict[str, list[dict[str, Any]]] = {"keeps": [], "similar": [], "kl0_format": [], "kl0_pass1": []}
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_kl = by_value(policy_gradient(runs), lambda r: r.kl_coef, bench)
        if len(by_kl) < 2:
            continue
        at_default = find_value(by_kl, DEFAULT_KL_COEF)
        low = at_default if at_default is not None else min(by_kl)
        top = winner(by_kl[low], bench)
        for high in sorted(dose for dose in by_kl if dose > low) if top is not None else ():
            details = {"benchmark": bench, "format": top[0], "KL": f"{low:g} vs {high:g}"}
            share = paired(by_kl[low], by_kl[high], at("final", bench, share_of(top[0])))
            setting = f"{key} · KL {high:g}"
            found["keeps"].append(judge(setting, keeps, share, details))
            found["similar"].append(
                judge(setting, similar, paired(by_kl[high], by_kl[low], at("final", bench, pass1)), details)
            )
        zero = find_value(by_kl, 0.0)
        top = winner(by_kl[at_default], bench) if at_default is not None else None
        if zero is not None and top is not None:
            details = {
                "benchmark": bench,
                "format at the default KL": top[0],
                "format at KL 0": (winner(by_kl[zero], bench) or ("—",))[0],
            }
            share = paired(by_kl[zero], by_kl[at_default], at("final", bench, share_of(top[0])))
            found["kl0_format"].append(judge(key, same, share, details))
            found["kl0_pass1"].append(
                judge(
                    key, similar, paired(by_kl[zero], by_kl[at_default], at("final", bench, pass1)), details
                )
            )
    no_axis = "no sweep axis over the KL coefficient with final evaluations"
    no_zero = f"no pair of KL 0 and KL {DEFAULT_KL_COEF:g} (the default) cells with final evaluations"
    return [
        finding(
            "kl_keeps_formats",
            "A stronger KL penalty than the default keeps more of the other formats: at each stronger KL (one "
            "setting per dose, paired by seed with the default), the default's winning format has a lower share "
            f"after RL (interval above 0; within ±{NEGLIGIBLE:.0%} is no change).",
            keeps, "Δ share of the winning format (default − stronger KL)", found["keeps"], no_axis,
        ),
        finding(
            "kl_similar_pass1",
            f"... at similar pass@1: each stronger KL's pass@1 is within ±{SIMILAR:.0%} of the default's.",
            similar, "Δ pass@1 (stronger KL − default)", found["similar"], no_axis,
        ),
        finding(
            "kl0_same_format",
            f"KL 0 behaves like the default: the default's winning format has the same share within ±{SAME_SHARE:.0%}.",
            same, "Δ share of the winning format (KL 0 − default)", found["kl0_format"], no_zero,
        ),
        finding(
            "kl0_similar_pass1",
            f"KL 0 behaves like the default: pass@1 within ±{SIMILAR:.0%}.",
            similar, "Δ pass@1 (KL 0 − default)", found["kl0_pass1"], no_zero,
        ),
    ]  # fmt: skip


def _at_default_kl(runs: list[RunData]) -> bool:
    """Whether the PPO/GRPO cells of a group ran at the config's default KL (unrecorded = default)."""
    return all(run.kl_coef is None or math.isclose(run.kl_coef, DEFAULT_KL_COEF) for run in policy_gradient(runs))


def _algorithms(sweep: SweepData) -> list[dict[str, Any]]:
    """Expert Iteration against PPO at the default KL only (a stronger KL is meant to keep formats,
    so it says nothing about how far each algorithm moves them), paired by seed."""
    axis = find_axis(sweep, "algo")
    below, shifts = Claim("directional", NEGLIGIBLE), Claim("directional", NEGLIGIBLE)
    found: dict[str, list[dict[str, Any]]] = {"below": [], "shifts": []}
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        by_algo = by_value(runs, lambda r: r.algo, bench)
        if not {"ppo", "ei"} <= by_algo.keys() or not _at_default_kl(runs):
            continue
        tops = {algo: winner(by_algo[algo], bench) for algo in ("ppo", "ei")}
        details = {"benchmark": bench, **{f"{algo} format": top[0] for algo, top in tops.items() if top}}
        found["below"].append(
            judge(key, below, paired(by_algo["ppo"], by_algo["ei"], at("final", bench, pass1)), details)
        )
        if tops["ppo"] and tops["ei"]:
            moved = [gain(bench, share_of(tops[algo][0])) for algo in ("ppo", "ei")]
            found["shifts"].append(judge(key, shifts, paired(by_algo["ppo"], by_algo["ei"], *moved), details))
    missing = f"no PPO and Expert Iteration cells at the default KL ({DEFAULT_KL_COEF:g}) with final evaluations"
    return [
        finding(
            "ei_below_ppo",
            "Expert Iteration reaches a lower pass@1 than PPO at the default KL (PPO − EI above 0; "
            f"within ±{NEGLIGIBLE:.0%} is no difference).",
            below, "Δ pass@1 (PPO − EI)", found["below"], missing,
        ),
        finding(
            "ei_shifts_less",
            "Expert Iteration shifts the format mix less than PPO: the rise in share of each one's winning format "
            f"is larger under PPO (PPO − EI above 0; within ±{NEGLIGIBLE:.0%} is no difference).",
            shifts, "Δ rise in the winning format's share (PPO − EI)", found["shifts"], missing,
        ),
    ]  # fmt: skip


def _model_size(sweep: SweepData) -> dict[str, Any]:
    """Another format wins at the larger model size: unpaired (each size has its own pretraining).

    Only runs that learned the task before RL are compared (base greedy pass@1 on the main
    benchmark at least LEARNS_TASK): a model that cannot solve the RL prompts gets almost no
    reward, so which format it ends on says nothing about its size. The bar applies to each run,
    not to a size's mean over seeds: a seed that never learned would otherwise be a third of its
    size's evidence as long as the other seeds pull the mean over the bar. It is read before RL,
    so leaving such a run out selects on nothing RL did; the runs left out are named. A size
    enters with at least LEARNED_RUNS such runs (its one run in a one-seed sweep); of those, the
    smallest and the largest by parameter count are compared."""
    axis = find_axis(sweep, "size", "model")
    claim = Claim("threshold", SIZE_SHIFT)
    settings = []
    for key, runs in (group_settings(sweep, {axis}) if axis else {}).items():
        bench = main_benchmark(runs)
        base_pass1 = at("base", bench, pass1)
        by_size = by_value(policy_gradient(runs), lambda r: r.params.get(axis), bench)
        if len(by_size) < 2:
            continue
        order = _by_parameters(sweep.axes[axis], by_size)
        base = {size: over_seeds(by_size[size], base_pass1) for size in order}
        kept = {size: _learned(by_size[size], base_pass1) for size in order}
        learned = [size for size in order if len(kept[size]) >= min(LEARNED_RUNS, len(by_size[size]))]
        details: dict[str, Any] = {
            "benchmark": bench, **{f"base pass@1 at {size}": _accuracy(base[size]) for size in order},
        }
        for size in learned:
            if left_out := sorted({run.seed for run in by_size[size]} - {run.seed for run in kept[size]}):
                details[f"left out at {size} (base below the bar)"] = _seeds(left_out)
        if len(learned) < 2:
            measured = ", ".join(f"{size} {_accuracy(base[size])}" for size in order)
            settings.append(not_tested(
                key, f"fewer than two sizes learn the task before RL (at least {LEARNED_RUNS} runs with base "
                f"greedy pass@1 ≥ {LEARNS_TASK:.0%}: {measured})",
                details,
            ))
            continue
        tops = {size: winner(kept[size], bench) for size in learned}
        small, large = learned[0], learned[-1]
        if tops[small] is None:
            settings.append(not_tested(key, "no format shares after RL", details))
            continue
        details |= {f"format at {size}": f"{top[0]} ({top[1]:.0%})" for size, top in tops.items() if top}
        share = unpaired(kept[small], kept[large], at("final", bench, share_of(tops[small][0])))
        settings.append(judge(f"{key} · {small} vs {large}", claim, share, details))
    return finding(
        "model_size",
        "Which format RL picks depends on model size (paper: on TinyGSM+OMI1+OMI2, 150M → TinyGSM code, 1B → "
        f"OMI2 text): of the runs that learn the task before RL (base greedy pass@1 ≥ {LEARNS_TASK:.0%}), "
        f"the smallest model's winning format loses more than {SIZE_SHIFT:.0%} of its share at the largest.",
        claim, "Δ share of the small model's winner (small − large)", settings,
        "no sweep axis over the model size with final evaluations",
    )  # fmt: skip


def _by_parameters(axis_values: list[Any], by_size: dict[Any, list[RunData]]) -> list[Any]:
    """The sizes present, smallest first: by the parameter count of their pretrained models where
    every size has one, else in the sweep's axis order."""
    present = [size for size in axis_values if size in by_size]
    counts = {size: max((run.parameters or 0) for run in by_size[size]) for size in present}
    if all(counts.values()):
        return sorted(present, key=counts.__getitem__)
    return present


def _learned(runs: list[RunData], base_pass1: Measure) -> list[RunData]:
    """The runs whose own base greedy pass@1 reaches LEARNS_TASK."""
    bases = [(run, over_seeds([run], base_pass1)) for run in runs]
    return [run for run, base in bases if base is not None and base.effect >= LEARNS_TASK]


def _seeds(seeds: list[Any]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _accuracy(base: Estimate | None) -> str:
    """The mean with each seed's own value: one seed that never learned the task pulls the mean
    down, and a reader should see which it was."""
    if base is None:
        return "—"
    if base.level == "prompt":
        return f"{base.effect:.1%} ({base.basis})"
    return f"{base.effect:.1%} ({base.basis}: {', '.join(f'{v:.1%}' for v in base.per_seed)})"


def largest_dip(run: RunData) -> dict[str, Any] | None:
    """The largest fall of training accuracy below its running maximum, and whether it came back
    within RECOVERED of that maximum (GRPO's brief crash in the paper)."""
    acc = np.array([a for row in run.rl if (a := number(row.get("accuracy"))) is not None])
    if len(acc) < 3:
        return None
    peak = np.maximum.accumulate(acc)
    i = int(np.argmax(peak - acc))
    return {"dip": float(peak[i] - acc[i]), "recovered": bool(acc[i:].max() >= peak[i] - RECOVERED)}
