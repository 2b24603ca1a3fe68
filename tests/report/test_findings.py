"""The findings on synthetic run and sweep folders: each defect the review found, planted and handled."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from echochamber.report.collect import collect
from echochamber.report.findings import MIN_FORMAT_COUNT, compute_findings
from echochamber.report.measure import finding, judge
from echochamber.report.page import build_report
from echochamber.report.results import dominant
from echochamber.report.stats import Claim, Estimate
from echochamber.report.tables import evidence_words


def _by_id(findings: list[dict]) -> dict[str, dict]:
    return {finding["id"]: finding for finding in findings}


def _run_findings(tmp_path: Path, synthetic, **spec) -> dict[str, dict]:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(**spec))
    return _by_id(compute_findings(collect(run)))


def _seeds_sweep(tmp_path: Path, synthetic, seeds: list[int], **spec) -> Path:
    cells = [(f"ppo-s{seed}", {"algo": "ppo", "seed": seed}, synthetic.RunSpec(name=f"ppo-s{seed}", seed=seed, **spec))
             for seed in seeds]  # fmt: skip
    return synthetic.write_sweep(tmp_path / "sweep", cells, {"algo": ["ppo"], "seed": seeds})


def test_sweep_findings_are_paired_by_seed_and_not_replicated_with_two_seeds(sweep_dir: Path) -> None:
    findings = _by_id(compute_findings(collect(sweep_dir)))
    assert list(findings) == [
        "collapse", "collapse_with_gain", "majk_rises", "passk_flat", "hard_transfer", "mixture_flip",
        "kl_keeps_formats", "kl_similar_pass1", "kl0_same_format", "kl0_similar_pass1", "kl_dose_trend",
        "ei_below_ppo", "ei_shifts_less", "model_size",
    ]  # fmt: skip
    assert all(item["evidence"] == "single_seed" for item in findings.values())  # two seeds at most
    keeps = findings["kl_keeps_formats"]["settings"][0]
    assert keeps["setting"] == "algo=ppo · KL 0.01" and keeps["basis"] == "2 seeds"  # one setting per dose
    assert [row["seed"] for row in keeps["per_seed"]] == [0, 1]  # one paired difference per seed
    assert all(row["effect"] > 0.1 for row in keeps["per_seed"])  # KL 0.01 keeps OMI2 in every seed
    collapse = {s["setting"]: s for s in findings["collapse"]["settings"]}
    assert "algo=ppo, rl.kl_coef=0.01" not in collapse  # a stronger KL is meant to keep formats
    assert collapse["algo=ppo, rl.kl_coef=0.001"]["details"]["format"] == "tinygsm"
    assert findings["passk_flat"]["verdict"] == "reproduced"  # pass@k ~1 before and after
    assert findings["model_size"]["verdict"] == "not_tested" and findings["model_size"]["note"]


def test_a_one_seed_sweep_has_no_replicated_finding_but_three_seeds_can(tmp_path: Path, synthetic) -> None:
    one = _by_id(
        compute_findings(collect(_seeds_sweep(tmp_path / "one", synthetic, [0], steps=20, samples=6)))
    )
    assert one["collapse"]["verdict"] == "reproduced"
    assert {item["evidence"] for item in one.values()} == {"single_seed"}
    three = _by_id(
        compute_findings(collect(_seeds_sweep(tmp_path / "three", synthetic, [0, 1, 2], steps=20, samples=6)))
    )
    assert three["collapse"]["verdict"] == "reproduced" and three["collapse"]["evidence"] == "replicated"
    assert three["collapse"]["seeds"] == 3 and len(three["collapse"]["per_seed"]) == 3
    index = build_report(tmp_path / "three" / "sweep")
    written = _by_id(json.loads((index.parent / "findings.json").read_text()))
    assert written["collapse"]["evidence"] == "replicated" and "replicated · 3 seeds" in index.read_text()


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        ({"solvable": (0.4, 0.9)}, "passk_flat"),  # RL solves new prompts: pass@k rises too
        ({"final_mix": {"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1}}, "collapse"),  # no format above 90 %
        ({"final_mix": {"omi1": 0.97, "tinygsm": 0.03}}, "mixture_flip"),  # the frequent, less accurate one
    ],
)
def test_findings_that_do_not_hold_are_reported_as_such(
    tmp_path: Path, synthetic, change: dict, finding: str
) -> None:
    result = _run_findings(tmp_path, synthetic, steps=20, samples=6, **change)[finding]
    assert result["verdict"] == "not_reproduced", result
    assert result["interval"] is not None and result["evidence"] == "single_seed"


def test_a_run_dominated_by_other_is_degenerate_not_a_collapse(tmp_path: Path, synthetic) -> None:
    spec = {"steps": 20, "samples": 8, "final_mix": {"other": 0.85, "tinygsm": 0.1, "omi1": 0.05}}
    findings = _run_findings(tmp_path, synthetic, **spec)
    assert dominant({"other": 0.85, "tinygsm": 0.1, "omi1": 0.05}) == ("tinygsm", 0.1)
    collapse = findings["collapse"]
    assert collapse["verdict"] == "not_reproduced" and collapse["note"].startswith("degenerate")
    assert collapse["settings"][0]["details"]["format"] != "other"
    flip = findings["mixture_flip"]
    assert flip["verdict"] == "inconclusive" and flip["note"].startswith("degenerate")
    page = build_report(tmp_path / "run").read_text()
    assert "degenerate: after RL" in page


def test_a_rare_but_most_accurate_format_wins_the_flip(tmp_path: Path, synthetic) -> None:
    """The paper's case: TinyGSM is 3 % of the base model's generations but its most accurate format;
    RL amplifies it. A share cut-off would have ruled it out; a minimum count does not."""
    base = {"omi1": 0.6, "omi2": 0.37, "tinygsm": 0.03}
    flip = _run_findings(tmp_path, synthetic, steps=20, samples=40, base_mix=base)["mixture_flip"]
    counts = flip["settings"][0]["details"]["base generations per format (per seed)"]
    assert MIN_FORMAT_COUNT <= counts["tinygsm"][0] < 0.05 * 30 * 40
    assert flip["verdict"] == "reproduced", flip
    assert flip["settings"][0]["details"]["flip"] is True
    assert flip["settings"][0]["details"]["compared with"] == "omi1"
    assert flip["interval"][0] > 0


@pytest.mark.parametrize(
    ("base", "rare", "samples"),
    [
        ({"omi1": 0.6, "omi2": 0.37, "tinygsm": 0.03}, "tinygsm", 6),  # the amplified format itself
        ({"tinygsm": 0.6, "omi1": 0.39, "omi2": 0.01}, "omi2", 24),  # one that might have been more accurate
    ],
)
def test_a_format_below_the_minimum_count_makes_the_flip_inconclusive(
    tmp_path: Path, synthetic, base: dict, rare: str, samples: int
) -> None:
    flip = _run_findings(tmp_path, synthetic, steps=20, samples=samples, base_mix=base)["mixture_flip"]
    counts = flip["settings"][0]["details"]["base generations per format (per seed)"]
    assert 0 < counts[rare][0] < MIN_FORMAT_COUNT
    assert flip["verdict"] == "inconclusive", flip
    assert rare in flip["note"] and "too few base generations" in flip["note"]


@pytest.mark.parametrize(("delay", "verdict"), [(0, "reproduced"), (25, "not_reproduced")])
def test_collapse_timing_against_a_permutation_null(
    tmp_path: Path, synthetic, delay: int, verdict: str
) -> None:
    """Training accuracy rises at step 20 of 60; the format share rises with it, or 25 steps later."""
    timing = _run_findings(tmp_path, synthetic, steps=60, samples=2, collapse_delay=delay)[
        "collapse_with_gain"
    ]
    assert timing["verdict"] == verdict, timing
    assert timing["effect"] == pytest.approx(delay, abs=1.5)
    assert timing["evidence"] == "single_seed" and timing["per_seed"][0]["p"] is not None


def test_no_collapse_leaves_its_timing_untested(tmp_path: Path, synthetic) -> None:
    spec = {"steps": 20, "samples": 6, "final_mix": {"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1}}
    findings = _run_findings(tmp_path, synthetic, **spec)
    assert findings["collapse"]["verdict"] == "not_reproduced"
    assert findings["collapse_with_gain"]["verdict"] == "not_tested"
    assert "no collapse to time" in findings["collapse_with_gain"]["settings"][0]["note"]


def test_the_algorithm_findings_are_judged_at_the_default_kl_only(tmp_path: Path, synthetic) -> None:
    """At KL 0.01 Expert Iteration is planted above PPO: were that group judged, "EI below PPO" would
    read not reproduced."""
    spec = synthetic.RunSpec
    weak_ei = {"tinygsm": 0.42, "omi1": 0.48, "omi2": 0.1}
    cells = [
        ("ppo-1e-3", {"algo": "ppo", "kl": 1e-3}, spec(name="ppo-1e-3", steps=20, samples=6)),
        ("ei-1e-3", {"algo": "ei", "kl": 1e-3}, spec(name="ei-1e-3", algo="ei", kl_coef=None, steps=3, samples=6,
                                                     boost=1.15, final_mix=weak_ei)),
        ("ppo-1e-2", {"algo": "ppo", "kl": 1e-2}, spec(name="ppo-1e-2", steps=20, samples=6, boost=1.0,
                                                       final_mix={"omi1": 0.6, "tinygsm": 0.3, "omi2": 0.1})),
        ("ei-1e-2", {"algo": "ei", "kl": 1e-2}, spec(name="ei-1e-2", algo="ei", kl_coef=None, steps=3, samples=6,
                                                     boost=1.6)),
    ]  # fmt: skip
    sweep = synthetic.write_sweep(tmp_path / "sweep", cells, {"algo": ["ppo", "ei"], "kl": [1e-3, 1e-2]})
    findings = _by_id(compute_findings(collect(sweep)))
    for name in ("ei_below_ppo", "ei_shifts_less"):
        assert [s["setting"] for s in findings[name]["settings"]] == ["kl=0.001"], findings[name]
        assert findings[name]["verdict"] == "reproduced"


def _size_sweep(tmp_path: Path, synthetic, sizes: dict[str, dict], seeds: tuple[int, ...] = (0, 1)) -> dict:
    """GRPO cells, one per model size and seed; `sizes` maps a preset name to its RunSpec fields, in
    the axis order (a sweep lists its default size first, not the smallest), and `per_seed` in them
    maps a seed to the fields its run has instead."""
    cells = []
    for size, fields in sizes.items():
        spec, per_seed = {k: v for k, v in fields.items() if k != "per_seed"}, fields.get("per_seed", {})
        cells += [
            (f"{size}-s{seed}", {"model": size, "seed": seed}, synthetic.RunSpec(
                name=f"{size}-s{seed}", algo="grpo", seed=seed, steps=20, samples=8,
                **(spec | per_seed.get(seed, {})),
            ))
            for seed in seeds
        ]  # fmt: skip
    sweep = synthetic.write_sweep(tmp_path / "sweep", cells, {"model": list(sizes), "seed": list(seeds)})
    return _by_id(compute_findings(collect(sweep)))["model_size"]


def test_model_sizes_are_compared_by_parameters_and_only_where_they_learned_the_task(
    tmp_path: Path, synthetic
) -> None:
    """tiny (0.7M) ends on TinyGSM, mini (2.6M) on OMI2: the size effect, read small -> large by the
    parameter counts of the run folders' checkpoints although the axis lists mini first. small (6.5M)
    never learned the task (base greedy below the bar) and ends on TinyGSM: compared as the largest
    size it would cancel the effect."""
    learns = {"base_mix": {"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1}}
    sizes = {  # parameter counts scaled down 1000x: the files stay small
        "mini": learns | {"final_mix": {"omi2": 0.92, "tinygsm": 0.05, "omi1": 0.03}, "parameters": 2_621},
        "tiny": learns | {"final_mix": {"tinygsm": 0.97, "omi1": 0.02, "other": 0.01}, "parameters": 688},
        "small": learns | {"solvable": (0.05, 0.05), "parameters": 6_554},
    }
    size = _size_sweep(tmp_path, synthetic, sizes)
    (setting,) = size["settings"]
    assert setting["setting"].endswith("tiny vs mini")
    assert size["verdict"] == "reproduced" and size["seeds"] == 2, size
    base = setting["details"]
    assert list(base)[1:4] == ["base pass@1 at tiny", "base pass@1 at mini", "base pass@1 at small"]
    assert float(base["base pass@1 at small"].split("%")[0]) < 30 < float(base["base pass@1 at mini"].split("%")[0])
    assert "format at small" not in base

    del sizes["tiny"]  # mini against a size that did not learn: nothing to compare
    shutil.rmtree(tmp_path / "sweep")
    size = _size_sweep(tmp_path, synthetic, sizes)
    assert size["verdict"] == "not_tested" and "fewer than two sizes learn the task" in size["note"], size
    assert "mini " in size["note"] and "small " in size["note"]  # each size's base accuracy, said where it is read
    # ... with each seed's own value beside the mean (a seed that never learned shows as such)
    mean, *per_seed = map(float, re.search(r"small (\S+)% \(2 seeds: (\S+)%, (\S+)%\)", size["note"]).groups())
    assert mean == pytest.approx(sum(per_seed) / 2, abs=0.1)


def test_the_base_bar_applies_to_each_run_and_a_size_needs_two_runs_that_learned(
    tmp_path: Path, synthetic
) -> None:
    """tiny's seed 2 never learned the task and drifted onto OMI2 (as tiny's seed 2 did at 800 steps
    in paper-cpu); its seeds 0 and 1 learned it and ended on TinyGSM. Averaged over the seeds, tiny
    clears the bar with the failed seed a third of its evidence, and its TinyGSM share reads about a
    third lower than what the runs that learned reached. Per run, seed 2 is left out and named."""
    learns = {"base_mix": {"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1}}
    to_omi2 = {"final_mix": {"omi2": 0.92, "tinygsm": 0.05, "omi1": 0.03}}
    failed = to_omi2 | {"solvable": (0.15, 0.15)}  # base greedy pass@1 about 20 %
    sizes = {
        "tiny": learns | {"final_mix": {"tinygsm": 0.97, "omi1": 0.02, "other": 0.01}, "parameters": 688,
                          "per_seed": {2: failed}},
        "mini": learns | to_omi2 | {"parameters": 2_621},
    }
    size = _size_sweep(tmp_path, synthetic, sizes, seeds=(0, 1, 2))
    (setting,) = size["settings"]
    details = setting["details"]
    found = re.search(r"(\S+)% \(3 seeds: (\S+)%, (\S+)%, (\S+)%\)", details["base pass@1 at tiny"])
    mean, *per_seed = map(float, found.groups())
    assert mean >= 30 and per_seed[2] < 30 <= min(per_seed[:2])  # the mean alone would let seed 2 in
    assert details["left out at tiny (base below the bar)"] == "seed 2"
    assert float(re.fullmatch(r"tinygsm \((\d+)%\)", details["format at tiny"]).group(1)) > 90
    assert size["verdict"] == "reproduced" and size["seeds"] == 2, size  # tiny's two runs against mini's three

    # Two of tiny's three seeds failed: its mean still clears the bar, but one run is not a size's evidence.
    sizes["tiny"]["per_seed"] = {1: failed, 2: failed}
    shutil.rmtree(tmp_path / "sweep")
    size = _size_sweep(tmp_path, synthetic, sizes, seeds=(0, 1, 2))
    assert size["verdict"] == "not_tested" and "fewer than two sizes learn the task" in size["note"], size
    assert float(re.search(r"tiny (\S+)%", size["note"]).group(1)) >= 30


def test_a_finding_counts_the_seeds_of_the_settings_its_verdict_rests_on() -> None:
    """Not reproduced in a three-seed setting, inconclusive in a one-seed one: the verdict rests on the
    first, so the finding is replicated with 3 seeds (it said "replicated · 1 seeds")."""
    claim = Claim("directional", 0.02)
    three = Estimate(-0.05, (-0.08, -0.02), (-0.04, -0.06, -0.05), (0, 1, 2), (32, 32, 32), "seed", 3)
    one = Estimate(0.01, (-0.04, 0.06), (0.01,), (0,), (32,), "prompt", 1)
    settings = [judge("one seed", claim, one), judge("three seeds", claim, three)]
    assert [s["verdict"] for s in settings] == ["inconclusive", "not_reproduced"]
    result = finding("f", "a claim", claim, "Δ", settings, "nothing")
    assert (result["verdict"], result["evidence"], result["seeds"]) == ("not_reproduced", "replicated", 3)
    assert evidence_words(result) == "replicated · 3 seeds"

    settings[0] = judge("one seed", claim, Estimate(0.05, (0.03, 0.07), (0.05,), (0,), (32,), "prompt", 1))
    result = finding("f", "a claim", claim, "Δ", [settings[0], settings[1] | {"verdict": "reproduced"}], "")
    assert (result["verdict"], result["evidence"], result["seeds"]) == ("reproduced", "single_seed", 1)


def test_the_default_kl_is_the_rl_configs() -> None:
    """The KL the report judges "at the default KL" by is every KL-penalised algorithm's default."""
    from echochamber.rl.config import DEFAULT_KL_COEF, GRPOConfig, PPOConfig, REINFORCEConfig

    assert DEFAULT_KL_COEF == PPOConfig().kl_coef == GRPOConfig().kl_coef == REINFORCEConfig().kl_coef


def test_transfer_is_judged_on_each_rung_of_the_ladder_with_its_base_headroom(
    tmp_path: Path, synthetic
) -> None:
    """A ladder run evaluates world-<k>step splits beside world-hard: each is a transfer setting, rungs
    first by their steps, and each states its base pass@k (whether transfer was testable at all)."""
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(steps=20, samples=6))
    for phase in ("base", "final"):
        for rung in ("world-3step", "world-2step"):
            folder = run / "eval" / phase / rung
            shutil.copytree(run / "eval" / phase / "world-hard", folder)
            results = json.loads((folder / "results.json").read_text())
            (folder / "results.json").write_text(json.dumps({**results, "benchmark": rung}))
    transfer = _by_id(compute_findings(collect(run)))["hard_transfer"]
    benches = [setting["details"]["benchmark"] for setting in transfer["settings"]]
    assert benches == ["world-2step", "world-3step", "world-hard"]
    assert all(0 < setting["details"]["pass@6 before (headroom)"] <= 1 for setting in transfer["settings"])
    # Six samples a prompt: the change is measured on their mean, not on greedy decoding's 0 or 1.
    assert all(setting["details"]["measure"] == "sampled pass@1" for setting in transfer["settings"])
    (data,) = collect(run).runs
    base, final = (data.eval(phase, "world-2step").prompts for phase in ("base", "final"))
    sampled = sum(final[p].pass_at[1] - base[p].pass_at[1] for p in base) / len(base)
    greedy = sum(final[p].pass1 - base[p].pass1 for p in base) / len(base)
    assert transfer["settings"][0]["effect"] == pytest.approx(sampled) and sampled != pytest.approx(greedy)
    assert transfer["verdict"] != "not_tested"
