"""The statistics behind the report's verdicts: intervals over seeds, claims judged against margins.

Pure functions of numbers (numpy only, no scipy). docs/statistics.md explains the procedure in
words; in short:

* A seed is the unit of replication. With two or more seeds a quantity's interval is Student-t
  over the seeds' own estimates (each the mean over prompts of a per-prompt value, or of a
  per-prompt paired difference): mean ± t(0.975, S-1)·sd/√S, or Welch's two-sample form for
  settings that do not share a pretraining. With one seed it is t over the prompts, which says
  nothing about training-seed variance: such a result describes that run only.
* A claim is directional, a threshold, an equivalence or a non-superiority claim with a stated
  margin; its verdict comes from where the interval lies, never from a point estimate.
* "replicated" evidence needs >= 3 seeds, a seed-level interval that decides the verdict and every
  seed's own estimate on the verdict's side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

LEVEL = 0.95  # two-sided interval: a directional claim's false-positive rate is at most 2.5 %
REPLICATION_SEEDS = 3  # the fewest seeds behind a "replicated" finding
VERDICTS = ("reproduced", "not_reproduced", "inconclusive", "not_tested")
Kind = Literal["directional", "threshold", "equivalence", "non_superiority", "permutation"]


# ---------------------------------------------------------------------------------------------
# Student's t quantile (exact, for any real df >= 1: Welch's df is fractional)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            c = 1.0 + numerator / c
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; else use symmetry
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom: 1 - I_{df/(df+t²)}(df/2, 1/2) / 2 for t >= 0."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (p in (0.5, 1)), by bisection on `t_cdf` to 1e-10."""
    if not (0.5 < p < 1.0 and df >= 1.0):
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p} df={df}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    while high - low > 1e-10:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def _critical(df: float) -> float:
    return t_quantile(0.5 + LEVEL / 2.0, round(df, 6))  # rounded: Welch df hit the cache


# ---------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class Estimate:
    """A mean effect with its 95 % interval, and what it rests on.

    `level` is "seed" (the interval is over seeds) or "prompt" (one seed: over its prompts);
    `per_seed` holds each seed's own estimate, in the order of `seeds`; `n_seeds` counts the seeds
    of the smaller side of an unpaired comparison (what replication rests on).
    """

    effect: float
    interval: tuple[float, float] | None
    per_seed: tuple[float, ...]
    seeds: tuple[Any, ...]
    n_prompts: tuple[int, ...]
    level: Literal["seed", "prompt"]
    n_seeds: int

    @property
    def basis(self) -> str:
        if self.level == "seed":
            return (
                f"{self.n_seeds} seeds"
                if self.n_seeds == len(self.seeds)
                else f"{len(self.seeds)} seeds (unpaired)"
            )
        return f"{self.n_prompts[0]} prompts of 1 seed"


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """mean ± t(0.975, n-1)·sd/√n; None with fewer than two values."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    half = _critical(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    mean = float(data.mean())
    return mean - half, mean + half


def estimate(per_seed: Sequence[Sequence[float]], seeds: Sequence[Any]) -> Estimate | None:
    """The mean of per-prompt values (or paired per-prompt differences), one sample per seed.

    Two or more seeds: Student-t over the seeds' means (each seed's mean carries its prompt noise,
    so their spread holds both variances). One seed: Student-t over its prompts.
    """
    samples = [np.asarray(values, dtype=float) for values in per_seed if len(values)]
    labels = [seed for seed, values in zip(seeds, per_seed, strict=True) if len(values)]
    if not samples:
        return None
    means = [float(values.mean()) for values in samples]
    sizes = tuple(len(values) for values in samples)
    if len(samples) >= 2:
        mean = float(np.mean(means))
        return Estimate(mean, t_interval(means), tuple(means), tuple(labels), sizes, "seed", len(means))
    return Estimate(means[0], t_interval(samples[0]), tuple(means), tuple(labels), sizes, "prompt", 1)


def welch(a: Estimate, b: Estimate) -> Estimate:
    """effect(a) - effect(b) for settings that share no pretraining (two seed-level estimates):
    difference ± t(0.975, Welch-Satterthwaite df)·√(var_a/S_a + var_b/S_b)."""
    if a.level != "seed" or b.level != "seed":
        raise ValueError("welch needs two seed-level estimates; compare one-seed settings prompt by prompt")
    va, vb = (np.var(e.per_seed, ddof=1) / len(e.per_seed) for e in (a, b))
    diff = a.effect - b.effect
    if va + vb == 0:
        interval = (diff, diff)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a.per_seed) - 1) + vb**2 / (len(b.per_seed) - 1))
        half = _critical(max(df, 1.0)) * math.sqrt(va + vb)
        interval = (diff - half, diff + half)
    # No pairs: each seed's own estimate is its value against the other side's mean.
    per_seed = (*(x - b.effect for x in a.per_seed), *(a.effect - x for x in b.per_seed))
    seeds = (*(f"a:{s}" for s in a.seeds), *(f"b:{s}" for s in b.seeds))
    n_seeds = min(a.n_seeds, b.n_seeds)
    return Estimate(diff, interval, per_seed, seeds, (*a.n_prompts, *b.n_prompts), "seed", n_seeds)


# ---------------------------------------------------------------------------------------------
# Claims and verdicts


@dataclass(frozen=True)
class Claim:
    """What a finding asserts about an effect, with its margin or threshold.

    directional      effect > 0; `null` (m) is the no-effect margin: an interval inside [-m, m]
                     shows the effect is negligible (not_reproduced), as does one below 0.
    threshold        value > c (c = `null`).
    equivalence      |effect| <= m (m = `null`): the interval must lie inside [-m, m].
    non_superiority  effect <= m: the interval's upper end must be at most m.
    """

    kind: Kind
    null: float

    def verdict(self, interval: tuple[float, float] | None) -> str:
        if interval is None:
            return "inconclusive"
        low, high = interval
        m = self.null
        if self.kind == "directional":
            if low > 0:
                return "reproduced"
            return "not_reproduced" if high < 0 or (-m <= low and high <= m) else "inconclusive"
        if self.kind == "threshold":
            return "reproduced" if low > m else "not_reproduced" if high < m else "inconclusive"
        if self.kind == "equivalence":
            if -m <= low and high <= m:
                return "reproduced"
            return "not_reproduced" if low > m or high < -m else "inconclusive"
        if self.kind == "non_superiority":
            return "reproduced" if high <= m else "not_reproduced" if low > m else "inconclusive"
        raise ValueError(f"claim kind {self.kind!r} has no interval rule")


def evidence(claim: Claim, found: Estimate | None, verdict: str) -> str:
    """ "replicated": >= REPLICATION_SEEDS seeds, a seed-level interval that decides the verdict, and
    every seed's own estimate on the verdict's side (the claim's rule applied to that seed's value
    alone); anything less describes the runs measured only ("single_seed")."""
    if (
        found is None
        or found.level != "seed"
        or verdict not in ("reproduced", "not_reproduced")
        or found.n_seeds < REPLICATION_SEEDS
    ):
        return "single_seed"
    agree = all(claim.verdict((value, value)) == verdict for value in found.per_seed)
    return "replicated" if agree else "single_seed"


def overall(verdicts: Sequence[str]) -> tuple[str, int | None]:
    """A finding tested in several settings: (verdict, index of the setting that decides it).

    not_reproduced if any setting is; reproduced if all tested settings are; else inconclusive;
    not_tested when no setting was tested. The deciding setting is the first not_reproduced one,
    else the first inconclusive one, else the first reproduced one."""
    tested = [i for i, verdict in enumerate(verdicts) if verdict != "not_tested"]
    if not tested:
        return "not_tested", None
    for wanted in ("not_reproduced", "inconclusive"):
        found = next((i for i in tested if verdicts[i] == wanted), None)
        if found is not None:
            return verdicts[found], found
    return "reproduced", tested[0]


# ---------------------------------------------------------------------------------------------
# Timing: does one series' fastest rise coincide with another's? (a permutation test)


def moving_average(series: np.ndarray, window: int) -> np.ndarray:
    """Means of `window` consecutive values along the last axis (length T - window + 1)."""
    csum = np.cumsum(np.insert(series, 0, 0.0, axis=-1), axis=-1)
    return (csum[..., window:] - csum[..., :-window]) / window


def fastest_rise(series: np.ndarray, window: int) -> np.ndarray:
    """Where a series rises fastest (along the last axis), in steps from its start, to a fraction of a step.

    rise[j] = mean(x[j+w .. j+2w-1]) - mean(x[j .. j+w-1]) is the rise from one window to the next;
    its largest value marks the rise at step j + w - 1/2 (between the windows). The peak is refined
    by a parabola through it and its two neighbours, so that two curves rising at the same step
    read lag ~0 rather than ±1 by which of two near-equal windows wins."""
    means = moving_average(series, window)
    rise = means[..., window:] - means[..., :-window]
    if rise.shape[-1] < 3:
        raise ValueError(f"fastest_rise needs at least 2 * window + 2 values, got {series.shape[-1]}")
    peak = np.argmax(rise, axis=-1)
    inner = np.clip(peak, 1, rise.shape[-1] - 2)
    left, mid, right = (np.take_along_axis(rise, (inner + d)[..., None], axis=-1)[..., 0] for d in (-1, 0, 1))
    curve = left - 2 * mid + right
    safe = np.where(curve < 0, curve, -1.0)
    shift = np.where((peak == inner) & (curve < 0), 0.5 * (left - right) / safe, 0.0)
    return peak + shift + window - 0.5


def lag_permutation_p(
    share: np.ndarray, accuracy: np.ndarray, window: int, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """(observed lag, one-sided p): lag = fastest-rise step of `share` - that of `accuracy`.

    Null: the share's step-to-step increments carry no timing, i.e. they are exchangeable; each
    permutation re-orders them, rebuilds the series and records its lag. p = (1 + #{|null lag| <=
    |observed lag|}) / (B + 1): small when the two rises are closer than chance."""
    gain = float(fastest_rise(accuracy, window))
    lag = float(fastest_rise(share, window)) - gain
    steps = np.diff(share)
    order = np.argsort(rng.random((permutations, len(steps))), axis=1)
    shuffled = share[0] + np.concatenate(
        [np.zeros((permutations, 1)), np.cumsum(steps[order], axis=1)], axis=1
    )
    null = fastest_rise(shuffled, window) - gain
    return lag, float((1 + np.sum(np.abs(null) <= abs(lag))) / (permutations + 1))


def lag_interval(
    share: np.ndarray, accuracy: np.ndarray, window: int, resamples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95 % percentile interval of one run's lag under its measurement noise: each series is
    re-drawn as its centred moving average plus its residuals resampled with replacement. (Used
    only with one seed, where the lag has no seed-level interval; the percentile bootstrap is fine
    here: it resamples ~T residuals, not a handful of seed means.)"""

    def redraw(series: np.ndarray) -> np.ndarray:
        pad = window // 2
        padded = np.pad(series, (pad, window - 1 - pad), mode="edge")
        fitted = moving_average(padded, window)
        residuals = series - fitted
        return fitted + residuals[rng.integers(0, len(series), size=(resamples, len(series)))]

    lags = fastest_rise(redraw(share), window) - fastest_rise(redraw(accuracy), window)
    low, high = np.quantile(lags, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def fisher(p_values: Sequence[float]) -> float:
    """Fisher's combination of independent p-values: P(chi²_{2k} >= -2 Σ ln p), in closed form
    (for even degrees of freedom the chi² tail is e^{-x/2} Σ_{i<k} (x/2)^i / i!)."""
    half = -sum(math.log(p) for p in p_values)
    return min(1.0, math.exp(-half) * sum(half**i / math.factorial(i) for i in range(len(p_values))))
