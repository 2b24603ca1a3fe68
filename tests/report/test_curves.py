"""pass@k / maj@k curves at every k = 1..n and where the base curve crosses the RL curve, on planted
evaluations whose curves are known in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from echochamber.report.collect import collect
from echochamber.report.curves import crossovers, run_curves, spans
from echochamber.report.page import build_report

N = 16  # samples per prompt


def write_run(synthetic, folder: Path, base: list[int], final: list[int]) -> Path:
    """A run with one planted benchmark, world-2step, at N samples per prompt (conftest.py)."""
    return synthetic.write_planted_run(folder, {"world-2step": (base, final)}, N)


# The base model spreads its skill (2 of 16 right on each of 10 prompts); RL sharpens it onto 4
# prompts it always solves and gives up the other 6. RL's pass@k is 0.4 at every k; the base's is
# 1 - C(14, k) / C(16, k) = 1 - (16-k)(15-k)/240: 0.35 at k = 3, 0.45 at k = 4, so the base curve
# crosses the RL curve at k = 4 and stays above.
BASE, SHARPENED = [2] * 10, [16] * 4 + [0] * 6


def test_curves_hold_every_k_and_the_base_overtakes_a_sharpened_policy_at_k_4(
    tmp_path: Path, synthetic
) -> None:
    run = collect(write_run(synthetic, tmp_path / "run", BASE, SHARPENED)).runs[0]
    curves = run_curves(run, "world-2step")
    assert curves is not None and curves.ks == list(range(1, N + 1)) and curves.prompts == 10
    for k in curves.ks:
        assert curves.passk["base"][k - 1] == pytest.approx(1 - math.comb(14, k) / math.comb(16, k))
        assert curves.passk["final"][k - 1] == pytest.approx(0.4)
        assert curves.majk["final"][k - 1] == pytest.approx(0.4)  # a sharpened prompt's vote never splits
    # maj@k of the base: 2 right votes against up to 14 wrong ones win only at k <= 2 (ties split).
    assert curves.majk["base"][0] == pytest.approx(2 / 16)
    assert curves.majk["base"][-1] == 0.0
    (found,) = crossovers(collect(tmp_path / "run"))
    assert found.per_seed == {None: 4} and found.k_max == N
    # One seed: the intervals are over its 10 prompts, whose differences are 1 - b (4 prompts) and
    # -b (6 prompts) for the base's per-prompt pass@k b; the base is surely ahead where the t
    # interval's upper end, mean + t(0.975, 9)·sd/√10, is below 0: from k = 9, not from the crossover.
    surely = []
    for k in range(1, N + 1):
        b = 1 - math.comb(14, k) / math.comb(16, k)
        diffs = np.array([1 - b] * 4 + [-b] * 6)
        if diffs.mean() + 2.2622 * diffs.std(ddof=1) / math.sqrt(10) < 0:
            surely.append(k)
    assert found.ks_where("base") == surely and spans(surely) == f"9–{N}"
    assert found.ks_where("rl") == []  # 4 of 10 prompts gain, 6 lose: no k where RL is surely ahead


def test_a_policy_that_solves_more_prompts_stays_ahead_and_the_report_says_so(
    tmp_path: Path, synthetic
) -> None:
    # RL keeps every prompt the base could solve and learns one more: ahead at every k, no crossover.
    run_dir = write_run(synthetic, tmp_path / "run", [2] * 6 + [0] * 4, [12] * 7 + [0] * 3)
    (found,) = crossovers(collect(run_dir))
    assert found.per_seed == {None: None}
    assert found.ks_where("base") == []
    page = build_report(run_dir).read_text()
    assert f"none up to k={N} (RL ahead)" in page
    assert (run_dir / "report" / "run-passk.png").is_file()


def test_over_seeds_each_seed_has_its_crossover_and_the_interval_is_over_seeds(
    tmp_path: Path, synthetic
) -> None:
    cells = []
    for seed, solved in ((0, 4), (1, 5), (2, 4)):
        name = f"s{seed}"
        write_run(synthetic, tmp_path / "sweep" / "cells" / name, BASE, [16] * solved + [0] * (10 - solved))
        cells.append({"name": name, "params": {"seed": seed}, "dir": f"cells/{name}"})
    sweep = {"name": "sweep", "axes": {"seed": [0, 1, 2]}, "cells": cells}
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(sweep))
    (found,) = crossovers(collect(tmp_path / "sweep"))
    # Solving 5 of 10 prompts, RL's pass@k is 0.5: the base reaches it at k = 5 (1 - 11·10/240 = 0.54).
    assert found.per_seed == {0: 4, 1: 5, 2: 4}
    assert found.deltas[0].basis == "3 seeds"
    assert found.deltas[0].effect == pytest.approx((0.4 + 0.5 + 0.4) / 3 - 2 / 16)
    assert 1 in found.ks_where("rl") and N in found.ks_where("base")
    page = build_report(tmp_path / "sweep").read_text()
    assert "seed 0: k=4; seed 1: k=5; seed 2: k=4" in page


def test_a_greedy_only_evaluation_has_no_curve(tmp_path: Path, synthetic) -> None:
    run_dir = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(samples=1))
    assert run_curves(collect(run_dir).runs[0], "world-test") is None
    assert crossovers(collect(run_dir)) == []


def test_benchmarks_read_from_the_rl_level_up_the_ladder(tmp_path: Path, synthetic) -> None:
    planted = {name: (BASE, SHARPENED) for name in ("world-hard", "world-3step", "world-test", "world-2step")}
    run_dir = synthetic.write_planted_run(tmp_path / "run", planted, N)
    order = ["world-test", "world-2step", "world-3step", "world-hard"]
    assert [found.benchmark for found in crossovers(collect(run_dir))] == order
