"""KL as a dose: the dose series, its per-prompt slope, the trend finding and its chart."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from echochamber.report.collect import collect
from echochamber.report.dose import DoseSeries, dose_series, dose_slope, kl_dose_trend
from echochamber.report.page import build_report


def test_the_slope_is_least_squares_on_the_dose_rank_per_prompt_then_per_seed() -> None:
    """Three doses (ranks -1, 0, 1 centred): prompt a falls 0.9 -> 0.8 -> 0.5 (slope -0.2), prompt b
    stays at 1 (slope 0); seed 0's slope is their mean, -0.1. Seed 1 falls 0.1 a step on both."""
    values = {
        0: [{"a": 0.9, "b": 1.0}, {"a": 0.8, "b": 1.0}, {"a": 0.5, "b": 1.0}],
        1: [{"a": 0.6, "b": 0.3}, {"a": 0.5, "b": 0.2}, {"a": 0.4, "b": 0.1}],
    }
    by_dose = {dose: [SimpleNamespace(seed=s, values=v[i]) for s, v in values.items()]
               for i, dose in enumerate((0.0, 1e-3, 1e-2))}  # fmt: skip
    series = DoseSeries("algo=ppo", "world-test", (0.0, 1e-3, 1e-2), 1e-3, "omi1", None, 4, {}, by_dose)
    found = dose_slope(series, lambda run: run.values)
    assert found.seeds == (0, 1) and found.level == "seed"
    assert found.per_seed == pytest.approx((-0.1, -0.1)) and found.effect == pytest.approx(-0.1)


def test_a_three_dose_sweep_gives_a_series_a_trend_and_a_chart(sweep_dir: Path, tmp_path: Path) -> None:
    """kl_algo_sweep: PPO at KL 0 / 1e-3 / 1e-2 (2 seeds each); 1e-2 keeps 20 % OMI2 and 8 % OMI1."""
    (series,) = dose_series(collect(sweep_dir))
    assert series.doses == (0.0, 1e-3, 1e-2) and series.default == 1e-3
    assert (series.winner, series.runner_up, series.k) == ("tinygsm", "omi2", 6)
    share = series.curves["tinygsm share"]
    assert share[0].n_seeds == 2 and share[2].effect < share[1].effect - 0.1  # the strong KL keeps others
    assert series.curves["omi2 share"][2].effect > 0.1
    trend = kl_dose_trend(collect(sweep_dir))
    # A fall per dose step in each seed, but two seeds cannot show it (t(0.975, 1) = 12.7).
    assert all(row["effect"] > 0.05 for row in trend["per_seed"]) and len(trend["per_seed"]) == 2
    assert trend["verdict"] == "inconclusive" and trend["settings"][0]["basis"] == "2 seeds"
    index = build_report(sweep_dir, tmp_path / "out")
    assert (index.parent / "dose-KL-algo_ppo.png").is_file() and "algo=ppo · dose" in index.read_text()


def test_a_winner_that_grows_with_the_dose_is_not_reproduced(tmp_path: Path, synthetic) -> None:
    """The trend claimed the other way round: the default's winner gains share as the KL rises."""
    cells = []
    for kl, share in ((0.0, 0.55), (1e-3, 0.7), (1e-2, 0.97)):
        for seed in (0, 1, 2):
            mix = {"tinygsm": share, "omi1": (1 - share) / 2, "omi2": (1 - share) / 2}
            spec = synthetic.RunSpec(
                name=f"kl{kl:g}-s{seed}", kl_coef=kl, seed=seed, steps=10, samples=6, final_mix=mix
            )
            cells.append((spec.name, {"algo": "ppo", "rl.kl_coef": kl, "seed": seed}, spec))
    sweep = synthetic.write_sweep(
        tmp_path / "sweep", cells, {"algo": ["ppo"], "rl.kl_coef": [0.0, 1e-3, 1e-2], "seed": [0, 1, 2]}
    )
    trend = kl_dose_trend(collect(sweep))
    assert trend["verdict"] == "not_reproduced" and trend["interval"][1] < 0
    assert trend["evidence"] == "replicated" and trend["seeds"] == 3
