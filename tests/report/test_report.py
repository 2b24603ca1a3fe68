"""The report: reading run folders, the findings and their intervals, the page's contents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from echochamber.errors import UserError
from echochamber.report.collect import collect
from echochamber.report.findings import bootstrap_ci, compute_findings
from echochamber.report.page import BROWSER_MAX_PROMPTS, browser_entries, build_report


def _by_name(findings: list[dict]) -> dict[str, dict]:
    return {finding["name"]: finding for finding in findings}


def test_run_report_is_self_contained(run_dir: Path) -> None:
    index = build_report(run_dir)
    assert index == run_dir / "report" / "index.html"  # the default output folder
    assert collect(run_dir).runs[0].benchmarks() == ["world-hard", "world-test"]  # report/ is not read back
    page = index.read_text()
    pngs = sorted(path.name for path in index.parent.glob("*.png"))
    # Every chart is embedded (and also written beside the page), and the run has every kind of chart.
    assert sorted(re.findall(r'data-file="([^"]+)"', page)) == pngs
    assert page.count('src="data:image/png;base64,') == len(pngs) == 6
    assert all((index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)
    # Nothing is fetched: no external script, style, image or font.
    assert not re.search(r'(src|href)="(https?:)?//|url\(|@import|<link\b|<script\s+src', page)
    for section in ("findings", "comparisons", "run-0", "browser"):
        assert f'id="{section}"' in page
    # The before/after table shows results.json's numbers.
    before, after = (
        json.loads((run_dir / "eval" / phase / "world-test" / "results.json").read_text())["greedy"]["pass@1"]
        for phase in ("base", "final")
    )
    assert f"<td>pass@1 (greedy)</td><td>{100 * before:.1f}%</td><td>{100 * after:.1f}%</td>" in page


def test_generation_text_cannot_break_out_of_the_page(tmp_path: Path, synthetic) -> None:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(rl=False, pretrain=False, samples=1))
    path = run / "eval" / "final" / "world-test" / "generations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["text"] = "x = 1</script><script>alert('owned')</script><!--"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page = build_report(run).read_text()
    assert page.count("</script>") == 2  # the embedded JSON's and the page script's own ends, nothing else
    assert "alert('owned')\\u003c/script>" in page  # still there, as inert JSON text


def test_per_prompt_scores_reproduce_results_json(run_dir: Path) -> None:
    """The findings bootstrap over per-prompt values; their means must be the eval suite's numbers
    (the fixture spells some TinyGSM answers "42.0": they must vote with "42", as in the eval suite)."""
    run = collect(run_dir).runs[0]
    for phase in ("base", "final"):
        for data in run.evals[phase].values():
            prompts = list(data.prompts.values())
            sampled = data.results["sampled"]
            assert np.mean([p.pass1 for p in prompts]) == pytest.approx(data.results["greedy"]["pass@1"])
            for k in (1, 2, 4, 8):
                assert np.mean([p.pass_at[k] for p in prompts]) == pytest.approx(sampled[f"pass@{k}"])
                assert np.mean([p.maj_at[k] for p in prompts]) == pytest.approx(sampled[f"maj@{k}"])
            for name, stats in sampled["formats"].items():
                assert np.mean([p.share(name) for p in prompts]) == pytest.approx(stats["share"])
            assert all(
                data.prompt_texts[p.prompt_id] for p in prompts
            )  # the world was rebuilt from its settings


def test_votes_use_the_eval_suites_answer_key(tmp_path: Path) -> None:
    """ "25" and "25.0" are one vote (as in evaluate.vote_key): 3 correct votes beat 2 wrong ones."""
    from echochamber.data.records import Record
    from echochamber.evaluate import EvalConfig, summarize

    answers = [("25", True), ("25.0", True), ("25.0", True), ("3", False), ("3", False)]
    rows = [
        {"prompt_id": "p", "mode": "sampled", "sample_index": i, "gold": "25", "text": "", "format": "tinygsm",
         "answer": answer, "status": "ok", "detail": "", "correct": ok, "truncated": False, "n_tokens": 5}
        for i, (answer, ok) in enumerate(answers)
    ]  # fmt: skip
    config = EvalConfig(benchmark="gsm8k", n=5, greedy=False, ks=[5])
    results = summarize(rows, [Record("p", "q", "", "25", "gsm8k", "gsm8k")], config)
    folder = tmp_path / "run" / "eval" / "final" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "results.json").write_text(json.dumps(results))
    prompt = collect(tmp_path / "run").runs[0].evals["final"]["gsm8k"].prompts["p"]
    assert prompt.maj_at[5] == results["sampled"]["maj@5"] == 1.0
    assert prompt.pass_at[5] == 1.0 and prompt.share("tinygsm") == 1.0


def test_sweep_findings_reproduce_the_designed_effects(sweep_dir: Path) -> None:
    sweep = collect(sweep_dir)
    assert [run.algo for run in sweep.runs].count("ppo") == 6
    findings = _by_name(compute_findings(sweep))
    assert set(findings) == {
        "collapse", "collapse_with_gain", "passk_flat_majk_rises", "kl_keeps_formats", "kl0_like_default",
        "algorithms", "hard_transfer", "mixture_flip", "model_size",
    }  # fmt: skip
    for finding in findings.values():
        assert set(finding) == {"name", "statement", "reproduced", "numbers", "ci", "note"}
    for name in ("collapse", "collapse_with_gain", "passk_flat_majk_rises", "kl_keeps_formats",
                 "kl0_like_default", "algorithms", "hard_transfer", "mixture_flip"):  # fmt: skip
        assert findings[name]["reproduced"] is True, findings[name]
    # Stronger KL keeps more of the other formats; the interval is over the two seeds of each setting.
    kl = findings["kl_keeps_formats"]["numbers"]["algo=ppo"]
    assert kl["its share at kl=0.01"] < kl["its share at kl=0"] - 0.1
    assert kl["over"] == "2 vs 2 seeds"
    assert findings["passk_flat_majk_rises"]["numbers"]["algo=ppo, rl.kl_coef=0.001"]["over"] == "2 seeds"
    low, high = findings["passk_flat_majk_rises"]["ci"]["algo=ppo, rl.kl_coef=0.001: Δmaj@6"]
    assert 0 < low <= high
    # Expert Iteration: lower pass@1 than PPO, with a CI over paired prompts; it is left out of "collapse".
    algorithms = findings["algorithms"]["numbers"]["rl.kl_coef=0.001"]
    assert algorithms["ei pass@1"] < algorithms["ppo pass@1"]
    assert findings["algorithms"]["ci"]["rl.kl_coef=0.001: Δpass@1 ppo − ei"][0] > 0
    assert "ei-kl0.001-s0" not in findings["collapse"]["numbers"]
    assert "ppo-kl0.01-s0" not in findings["collapse"]["numbers"]  # KL above the default is its own finding
    # No model-size axis: said so, not guessed.
    assert findings["model_size"]["reproduced"] is None
    assert findings["model_size"]["note"].startswith("not enough data")


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        ({"solvable": (0.4, 0.9)}, "passk_flat_majk_rises"),  # RL solves new prompts: pass@k rises too
        ({"final_mix": {"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1}}, "collapse"),  # no format above 90 %
        (
            {"final_mix": {"omi1": 0.97, "tinygsm": 0.03}},
            "mixture_flip",
        ),  # amplifies the frequent, less accurate one
    ],
)
def test_findings_that_do_not_hold_are_reported_as_such(
    tmp_path: Path, synthetic, change: dict, finding: str
) -> None:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(steps=20, samples=6, **change))
    result = _by_name(compute_findings(collect(run)))[finding]
    assert result["reproduced"] is False, result
    assert result["numbers"]


def test_no_collapse_leaves_its_timing_unjudged(tmp_path: Path, synthetic) -> None:
    spec = synthetic.RunSpec(steps=20, samples=6, final_mix={"tinygsm": 0.6, "omi1": 0.3, "omi2": 0.1})
    findings = _by_name(compute_findings(collect(synthetic.write_run(tmp_path / "run", spec))))
    assert findings["collapse"]["reproduced"] is False
    assert findings["collapse_with_gain"]["reproduced"] is None
    assert findings["collapse_with_gain"]["note"].startswith("not enough data")


def test_missing_stages_do_not_crash_and_say_not_run(tmp_path: Path, synthetic) -> None:
    only_pretrain = synthetic.RunSpec(name="early", rl=False, evaluations=())
    run = synthetic.write_run(tmp_path / "sweep" / "cells" / "early", only_pretrain)
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({
        "name": "partial", "axes": {"rl.kl_coef": [0.0, 0.01]},
        "cells": [{"name": "early", "params": {"rl.kl_coef": 0.0}, "dir": "cells/early"},
                  {"name": "queued", "params": {"rl.kl_coef": 0.01}}],
    }))  # fmt: skip
    index = build_report(tmp_path / "sweep")
    page = index.read_text()
    assert [path.name for path in index.parent.glob("*.png")] == ["early-pretrain.png"]
    assert "Format share over RL steps</b>: not run (RL has not run)" in page
    assert "not run (no generations.jsonl in any evaluation)" in page
    assert f"<b>queued</b>: not run ({tmp_path / 'sweep' / 'cells' / 'queued'} does not exist yet)" in page
    findings = compute_findings(collect(tmp_path / "sweep"))
    assert all(f["reproduced"] is None and f["note"].startswith("not enough data") for f in findings)
    assert run.is_dir()


def test_rl_periodic_evaluations_stand_in_for_missing_eval_stage(tmp_path: Path, synthetic) -> None:
    spec = synthetic.RunSpec(steps=20, samples=4, eval_location="rl")
    run = collect(synthetic.write_run(tmp_path / "run", spec)).runs[0]
    assert run.evals["base"]["world-test"].source == "rl/eval/step_000000"
    assert run.evals["final"]["world-test"].source == "rl/eval/step_000020"


def test_bad_folders_are_user_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        collect(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a run folder"):
        collect(tmp_path / "empty")
    (tmp_path / "bad" / "eval" / "base" / "gsm8k").mkdir(parents=True)
    (tmp_path / "bad" / "eval" / "base" / "gsm8k" / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="results.json is not valid JSON"):
        collect(tmp_path / "bad")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"cells": [{"params": {}}]}))
    with pytest.raises(UserError, match="every cell needs a name"):
        collect(tmp_path / "sweep")
    (tmp_path / "rows" / "eval" / "final" / "gsm8k").mkdir(parents=True)
    (tmp_path / "rows" / "eval" / "final" / "gsm8k" / "generations.jsonl").write_text('{"prompt_id": "a"}\n')
    with pytest.raises(UserError, match="lacks mode, correct, format, truncated"):
        collect(tmp_path / "rows")


def test_torn_last_generation_line_is_skipped_but_a_bad_middle_line_is_not(tmp_path: Path, synthetic) -> None:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(rl=False, pretrain=False, samples=2))
    path = run / "eval" / "base" / "world-test" / "generations.jsonl"
    prompts = len(collect(run).runs[0].evals["base"]["world-test"].prompts)
    path.write_text(path.read_text() + '{"prompt_id": "world-test-0000')  # killed while writing
    assert len(collect(run).runs[0].evals["base"]["world-test"].prompts) == prompts
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:-1]]) + "\n")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        collect(run)


def test_browser_is_bounded_and_keeps_rare_cases(sweep_dir: Path) -> None:
    sweep = collect(sweep_dir)
    entries = browser_entries(sweep)
    assert len(entries) <= BROWSER_MAX_PROMPTS
    assert {e["run"] for e in entries} == {run.name for run in sweep.runs}  # every cell gets its share
    for run in sweep.runs:
        base, final = run.evals["base"]["world-test"], run.evals["final"]["world-test"]
        mine = [e for e in entries if e["run"] == run.name and e["benchmark"] == "world-test"]
        assert len(mine) < len(final.prompts)  # only part of the prompts fit ...
        every = {(base.prompts[i].pass1, final.prompts[i].pass1) for i in final.prompts}
        shown = {(float(e["before"]["correct"]), float(e["after"]["correct"])) for e in mine}
        assert shown == every  # ... yet each (correct before, correct after) case is represented


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.5]) is None
    assert bootstrap_ci([0.3, 0.3, 0.3]) == [pytest.approx(0.3), pytest.approx(0.3)]
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 800)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    assert bootstrap_ci(large)[1] - bootstrap_ci(large)[0] < (high - low) / 2  # ~1/sqrt(n)
    low, high = bootstrap_ci(large + 0.5, minus=large)
    assert low < 0.5 < high and high - low > 0.05  # two independent samples: both spreads count
