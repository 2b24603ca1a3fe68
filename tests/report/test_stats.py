"""The report's statistics: the t quantile, the claim rules, and simulated sweeps with no effect and
with a planted one, run through the functions the findings use (stats.estimate, Claim.verdict,
stats.evidence). `python tests/report/test_stats.py` prints the table docs/statistics.md quotes.

The simulated sweep: 128 prompts with base accuracies spread over [0.2, 0.8]; each seed (one
pretraining + RL run) moves every prompt's accuracy by the true effect plus a between-seed random
effect u_s ~ N(0, tau²) (what another seed, or another CPU's float rounding, does to a run); each
prompt's outcome before and after RL is a Bernoulli draw. The finding's quantity is the per-prompt
after - before difference, paired by prompt within a seed, exactly as `over_seeds(gain(...))`.
"""

from __future__ import annotations

import numpy as np
import pytest

from echochamber.report.measure import NEGLIGIBLE
from echochamber.report.stats import (
    Claim,
    estimate,
    evidence,
    fisher,
    lag_interval,
    lag_permutation_p,
    overall,
    t_quantile,
    welch,
)

PROMPTS = 128
REPEATS = 4000
TAU = 0.05  # between-seed standard deviation of the RL effect (5 points)
PLANTED = 0.2  # a planted rise of 20 points of accuracy
RISES = Claim("directional", NEGLIGIBLE)


def simulate(
    seeds: int, effect: float, tau: float, repeats: int = REPEATS, seed: int = 0
) -> dict[str, float]:
    """Rates over `repeats` simulated sweeps of the verdict "reproduced" and of replicated evidence
    for the claim "the quantity rises" (directional, margin NEGLIGIBLE)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(repeats, 1, PROMPTS))
    shift = effect + rng.normal(0.0, tau, size=(repeats, seeds, 1))
    before = rng.random((repeats, seeds, PROMPTS)) < base
    after = rng.random((repeats, seeds, PROMPTS)) < np.clip(base + shift, 0.0, 1.0)
    diffs = after.astype(float) - before
    reproduced = replicated = 0
    for repeat in diffs:
        found = estimate(list(repeat), list(range(seeds)))
        verdict = RISES.verdict(found.interval)
        reproduced += verdict == "reproduced"
        replicated += verdict == "reproduced" and evidence(RISES, found, verdict) == "replicated"
    return {"reproduced": reproduced / repeats, "replicated": replicated / repeats}


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_no_effect_reads_reproduced_at_most_5_percent_of_the_time(seeds: int) -> None:
    null = simulate(seeds, effect=0.0, tau=TAU)
    assert null["reproduced"] <= 0.05  # nominal 2.5 %: the lower end of a 95 % interval above 0
    assert null["replicated"] <= null["reproduced"]


def test_a_planted_effect_is_found_and_more_seeds_find_it_more_often() -> None:
    power = {
        seeds: simulate(seeds, effect=PLANTED, tau=TAU, repeats=2000)["reproduced"] for seeds in (2, 3, 5)
    }
    assert power[5] >= 0.9 and power[3] >= 0.4, power
    assert power[2] < power[3] < power[5]
    replicated = simulate(5, effect=PLANTED, tau=TAU, repeats=2000)["replicated"]
    assert replicated >= 0.8  # five seeds that all agree: the evidence reads "replicated"


def test_one_seed_ignores_seed_variance_so_it_is_never_replicated() -> None:
    """With one seed the interval is over prompts: it cannot see the between-seed effect, so with
    real seed variance a null effect reads "reproduced" far more often than 2.5 %."""
    no_seed_variance = simulate(1, effect=0.0, tau=0.0, repeats=2000)
    with_seed_variance = simulate(1, effect=0.0, tau=0.1, repeats=2000)
    assert no_seed_variance["reproduced"] <= 0.05  # prompts are all the noise there is: calibrated
    assert with_seed_variance["reproduced"] > 0.1  # the seed effect passes for a finding
    assert with_seed_variance["replicated"] == no_seed_variance["replicated"] == 0.0


@pytest.mark.parametrize(
    ("claim", "truth"), [(Claim("non_superiority", 0.05), 0.05), (Claim("equivalence", 0.05), 0.05)]
)
def test_flat_and_similar_are_not_claimed_at_the_margin(claim: Claim, truth: float) -> None:
    """A true rise exactly at the margin: "flat" (non-superiority) and "similar" (equivalence) read
    reproduced at most 5 % of the time with 2, 3 or 5 seeds."""
    rng = np.random.default_rng(1)
    for seeds in (2, 3, 5):
        means = truth + rng.normal(0.0, 0.08, size=(REPEATS, seeds))  # seed means: seed and prompt noise
        rate = np.mean([claim.verdict(estimate([[m] for m in row], list(range(seeds))).interval) == "reproduced"
                        for row in means])  # fmt: skip
        assert rate <= 0.05, (claim, seeds, rate)


def test_unpaired_welch_is_calibrated() -> None:
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(REPEATS):
        a, b = (estimate([[x] for x in rng.normal(0.5, 0.08, 3)], [0, 1, 2]) for _ in range(2))
        hits += RISES.verdict(welch(a, b).interval) == "reproduced"
    assert hits / REPEATS <= 0.05


def test_t_quantile_matches_tables() -> None:
    known = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451, 5: 2.5705818, 10: 2.2281389,
             30: 2.0422725, 127: 1.9788195, 1000: 1.9623391}  # fmt: skip
    for df, value in known.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-6)
    assert t_quantile(0.95, 7) == pytest.approx(1.8945786, abs=1e-6)
    assert 3.1824463 < t_quantile(0.975, 2.5) < 4.3026527  # Welch's fractional df sits between


def test_claim_rules() -> None:
    rises, above = Claim("directional", 0.02), Claim("threshold", 0.9)
    similar, flat = Claim("equivalence", 0.05), Claim("non_superiority", 0.05)
    assert rises.verdict((0.01, 0.3)) == "reproduced"
    assert rises.verdict((-0.3, -0.01)) == "not_reproduced"
    assert rises.verdict((-0.015, 0.019)) == "not_reproduced"  # provably negligible
    assert rises.verdict((-0.1, 0.3)) == "inconclusive"
    assert above.verdict((0.91, 0.99)) == "reproduced" and above.verdict((0.5, 0.89)) == "not_reproduced"
    assert above.verdict((0.85, 0.95)) == "inconclusive"
    assert (
        similar.verdict((-0.04, 0.049)) == "reproduced" and similar.verdict((0.06, 0.2)) == "not_reproduced"
    )
    assert similar.verdict((0.0, 0.08)) == "inconclusive"
    assert flat.verdict((-0.3, 0.04)) == "reproduced" and flat.verdict((0.051, 0.2)) == "not_reproduced"
    assert rises.verdict(None) == "inconclusive"
    assert overall(["reproduced", "not_tested", "reproduced"]) == ("reproduced", 0)
    assert overall(["reproduced", "inconclusive", "not_reproduced"]) == ("not_reproduced", 2)
    assert overall(["not_tested"]) == ("not_tested", None)


def test_evidence_needs_three_seeds_that_all_agree() -> None:
    three = estimate([[0.1, 0.12], [0.11, 0.1], [0.12, 0.13]], [0, 1, 2])
    assert evidence(RISES, three, RISES.verdict(three.interval)) == "replicated"
    split = estimate([[0.3], [0.32], [0.31], [-0.01]], [0, 1, 2, 3])
    assert (
        RISES.verdict(split.interval) == "inconclusive"
        or evidence(RISES, split, "reproduced") == "single_seed"
    )
    two = estimate([[0.1, 0.12], [0.11, 0.1]], [0, 1])
    assert evidence(RISES, two, "reproduced") == "single_seed"
    prompts = estimate([[0.1, 0.2, 0.3, 0.2]], [0])
    assert prompts.level == "prompt" and evidence(RISES, prompts, "reproduced") == "single_seed"


def _sigmoid(steps: np.ndarray, centre: float, width: float = 1.5) -> np.ndarray:
    return 1 / (1 + np.exp(-(steps - centre) / width))


@pytest.mark.parametrize(("delay", "close"), [(0, True), (25, False)])
def test_lag_permutation_test_on_planted_series(delay: int, close: bool) -> None:
    """Accuracy rises at step 20; the format share rises with it, or 25 steps later."""
    steps = np.arange(60.0)
    noise = np.random.default_rng(3)
    accuracy = 0.3 + 0.4 * _sigmoid(steps, 20) + noise.normal(0, 0.02, steps.size)
    share = 0.4 + 0.58 * _sigmoid(steps, 20 + delay) + noise.normal(0, 0.01, steps.size)
    lag, p = lag_permutation_p(share, accuracy, 5, 2000, np.random.default_rng(0))
    low, high = lag_interval(share, accuracy, 5, 1000, np.random.default_rng(0))
    if close:
        assert abs(lag) <= 1 and p < 0.05 and low <= 0 <= high
    else:
        assert lag == pytest.approx(25, abs=1) and p > 0.5 and low > 5


def test_fisher_combination() -> None:
    assert fisher([0.05]) == pytest.approx(0.05)
    assert fisher([0.05, 0.05]) == pytest.approx(0.0174787, abs=1e-6)  # chi²(4) tail at 11.98
    assert fisher([0.9, 0.9, 0.9]) > 0.9


if __name__ == "__main__":  # the table in docs/statistics.md
    for tau in (TAU, 0.1):
        for seeds in (1, 2, 3, 5):
            null, planted = simulate(seeds, 0.0, tau), simulate(seeds, PLANTED, tau)
            print(f"tau={tau} seeds={seeds}: false 'reproduced' {null['reproduced']:.1%} "
                  f"(replicated {null['replicated']:.1%}); planted {PLANTED}: reproduced "
                  f"{planted['reproduced']:.1%}, replicated {planted['replicated']:.1%}")  # fmt: skip
