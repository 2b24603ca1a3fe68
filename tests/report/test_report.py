"""The report: reading run folders, the findings and their intervals, the page's contents."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from echochamber.errors import UserError
from echochamber.eval.passk import maj_at_k
from echochamber.report.collect import collect, parameter_count
from echochamber.report.findings import compute_findings
from echochamber.report.page import BROWSER_MAX_PROMPTS, browser_entries, build_report
from echochamber.report.stats import VERDICTS
from echochamber.report.tables import VERDICT_WORDS, evidence_words


def test_run_report_is_self_contained(run_dir: Path) -> None:
    index = build_report(run_dir)
    assert index == run_dir / "report" / "index.html"  # the default output folder
    assert collect(run_dir).runs[0].benchmarks() == ["world-hard", "world-test"]  # report/ is not read back
    page = index.read_text()
    pngs = sorted(path.name for path in index.parent.glob("*.png"))
    # Every chart is embedded (and also written beside the page), and the run has every kind of chart.
    assert sorted(re.findall(r'data-file="([^"]+)"', page)) == pngs
    assert page.count('src="data:image/png;base64,') == len(pngs) == 7
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


def test_findings_json_is_what_the_page_shows(run_dir: Path, tmp_path: Path) -> None:
    index = build_report(run_dir, tmp_path / "out")
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    fields = {"id", "title", "verdict", "evidence", "seeds", "effect", "interval", "per_seed", "kind", "null",
              "unit", "settings", "note", "setting"}  # fmt: skip
    assert findings and all(set(item) == fields for item in findings)
    assert {item["verdict"] for item in findings} <= set(VERDICTS)
    assert {item["evidence"] for item in findings} == {"single_seed"}  # a lone run is one seed
    page = index.read_text()
    table = page[page.index('<table class="findings">') :].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td><code>([^<]+)</code></td><td>([^<]*)</td><td>.*?\">([^<]+)</span> "
                      r'<span class="evidence">([^<]*)</span>', table)  # fmt: skip
    expected = [
        (f["id"], html.escape(f["title"]), VERDICT_WORDS[f["verdict"]][1], evidence_words(f))
        for f in findings
    ]
    assert rows == expected  # the table is rendered from the same objects, in the same order
    collapse = next(item for item in findings if item["id"] == "collapse")
    assert collapse["verdict"] == "reproduced" and collapse["per_seed"][0]["n_prompts"] == 30
    assert "1 seed, not replicated" in table


def test_page_sets_our_format_rule_against_the_papers(run_dir: Path, tmp_path: Path) -> None:
    """Generations carry `paper_format` (the paper's rule); the page shows both rules' shares and the
    ours x paper table, where they disagree: the paper's rule has no `other` (text in no format)."""
    data = collect(run_dir).runs[0].evals["final"]["world-test"]
    crosstab = data.rule_table()
    assert crosstab is not None
    rows = [json.loads(line) for line in (data.folder / "generations.jsonl").read_text().splitlines()]
    assert sum(crosstab.values()) == sum(row["mode"] == "sampled" for row in rows)
    assert crosstab[("other", "omi2")] > 0  # the paper's rule has no `other`: degenerate text counts as text
    page = build_report(run_dir, tmp_path / "out").read_text()
    assert "after RL: format shares, ours vs the paper's rule" in page
    assert f"{100 * (1 - crosstab[('other', 'omi2')] / sum(crosstab.values())):.1f}% of" in page
    assert "ours ↓ · paper rule →" in page


def test_folders_written_before_the_new_fields_still_report(tmp_path: Path, synthetic) -> None:
    """No `vote`, no `paper_format`, RL lines without format shares: reported as not recorded / not
    tested, never a crash."""
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(steps=20, samples=4))
    for path in run.glob("eval/*/*/generations.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in row.items() if k not in ("vote", "paper_format")}) + "\n"
                                for row in rows))  # fmt: skip
    metrics = run / "rl" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text(
        "".join(json.dumps({k: v for k, v in line.items() if k != "format_share"}) + "\n" for line in lines)
    )
    index = build_report(run)
    assert "the paper-rule format is not recorded" in index.read_text()
    findings = {item["id"]: item for item in json.loads((index.parent / "findings.json").read_text())}
    assert findings["collapse_with_gain"]["verdict"] == "not_tested"
    assert findings["collapse"]["verdict"] == "reproduced"  # the evaluations still carry the formats


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
            assert all(data.prompt_texts[p.prompt_id] for p in prompts)  # from the folder's prompts.jsonl


def test_rows_without_vote_vote_by_the_answers_spelling_key(tmp_path: Path) -> None:
    """Rows written before `vote` existed: "25" and "25.0" are one vote (verify.normalize.vote_key), so
    3 correct votes beat 2 wrong ones; a truncated row abstains."""
    answers = [("25", True, False), ("25.0", True, False), ("25.0", True, False), ("3", False, False),
               ("3", False, False), ("3", False, True)]  # fmt: skip
    rows = [
        {"prompt_id": "p", "mode": "sampled", "sample_index": i, "gold": "25", "text": "", "format": "tinygsm",
         "answer": answer, "status": "ok", "detail": "", "correct": ok, "truncated": cut, "n_tokens": 5}
        for i, (answer, ok, cut) in enumerate(answers)
    ]  # fmt: skip
    folder = tmp_path / "run" / "eval" / "final" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompt = collect(tmp_path / "run").runs[0].evals["final"]["gsm8k"].prompts["p"]
    assert prompt.maj_at[6] == 1.0
    assert prompt.pass_at[6] == 1.0 and prompt.share("tinygsm") == 1.0


def test_votes_follow_the_rows_equivalence_class(tmp_path: Path) -> None:
    """Rows with `vote` (the answer's math-verify class) vote by it: "0.5" and "\\frac{1}{2}" are one
    answer, so 3 correct votes beat 2 wrong ones; a truncated row still abstains."""
    answers = [("0.5", "1/2", True, False), ("\\frac{1}{2}", "1/2", True, False), ("1/2", "1/2", True, False),
               ("3", "3", False, False), ("3", "3", False, False), ("7", "7", False, True)]  # fmt: skip
    rows = [
        {"prompt_id": "p", "mode": "sampled", "sample_index": i, "gold": "1/2", "text": "", "format": "omi2",
         "answer": answer, "vote": vote, "correct": ok, "truncated": cut, "n_tokens": 5}
        for i, (answer, vote, ok, cut) in enumerate(answers)
    ]  # fmt: skip
    folder = tmp_path / "run" / "eval" / "final" / "math500"
    folder.mkdir(parents=True)
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompt = collect(tmp_path / "run").runs[0].evals["final"]["math500"].prompts["p"]
    assert prompt.maj_at[6] == 1.0  # by spelling, "3" (2 votes) would beat each 1-vote spelling of 1/2
    assert prompt.maj_at[6] == maj_at_k(["1/2", "1/2", "1/2", "3", "3", None], [True] * 3 + [False] * 3, 6)


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
    assert all(f["verdict"] == "not_tested" and f["note"] for f in findings)
    assert json.loads((index.parent / "findings.json").read_text()) == json.loads(json.dumps(findings))
    assert run.is_dir()


def test_rl_periodic_evaluations_stand_in_for_missing_eval_stage(tmp_path: Path, synthetic) -> None:
    spec = synthetic.RunSpec(steps=20, samples=4, eval_location="rl")
    run = collect(synthetic.write_run(tmp_path / "run", spec)).runs[0]
    assert run.evals["base"]["world-test"].source == "rl/eval/step_000000"
    assert run.evals["final"]["world-test"].source == "rl/eval/step_000020"


def test_reinforce_cells_join_the_algorithm_comparison_with_their_own_kl(tmp_path: Path, synthetic) -> None:
    """A REINFORCE cell is a policy-gradient run like PPO's: compared on the algo axis, its KL read from
    its own config section (`reinforce.kl_coef`)."""
    spec = synthetic.RunSpec
    cells = [
        ("ppo", {"algo": "ppo"}, spec(name="ppo", steps=10, samples=4)),
        ("reinforce", {"algo": "reinforce"}, spec(name="reinforce", algo="reinforce", kl_coef=0.01, steps=10, samples=4)),
    ]
    sweep = synthetic.write_sweep(tmp_path / "sweep", cells, {"algo": ["ppo", "reinforce"]})
    runs = {run.name: run for run in collect(sweep).runs}
    assert runs["reinforce"].algo == "reinforce" and runs["reinforce"].kl_coef == 0.01
    page = build_report(sweep).read_text()
    assert "reinforce, 10 steps, KL coefficient 0.01" in page
    assert "Algorithm comparison · " in page and "differ only in algo" not in page


def test_prompts_the_context_check_left_out_are_flagged(tmp_path: Path, synthetic) -> None:
    """results.json's and rl/prompts.json's `context` records (eval/context.py) surface on the page."""
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(steps=10, samples=4))
    results_file = run / "eval" / "final" / "world-test" / "results.json"
    results = json.loads(results_file.read_text())
    record = {"context": 512, "max_new_tokens": 2048, "over_context": "shorten", "prompts": 30, "over": 30,
              "skipped": 2, "shortened": 28, "longest_prompt": 590}  # fmt: skip
    results_file.write_text(json.dumps({**results, "context": record}))
    (run / "rl" / "prompts.json").write_text(json.dumps({"dataset": "gsm8k", "n_prompts": 38, "context": {
        **record, "over_context": "skip", "prompts": 40, "over": 2, "skipped": 2, "shortened": 0}}))  # fmt: skip
    page = html.unescape(build_report(run).read_text())
    assert ("world-test (eval/final) ⚠ of 30 prompts: 2 skipped, 28 with a shortened budget (prompt + 2048 new "
            "tokens over the context of 512, over_context=shorten)") in page  # fmt: skip
    assert "⚠ of 40 prompts: 2 skipped (prompt + 2048 new tokens over the context of 512, over_context=skip)" in page
    assert page.count("⚠ of") == 2  # the base evaluation ran every prompt: no flag


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


def test_prompt_texts_come_from_the_folder_and_an_older_folder_says_why_it_has_none(tmp_path: Path, synthetic) -> None:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(rl=False, pretrain=False, samples=1))
    folder = run / "eval" / "final" / "world-test"
    rows = [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]
    data = collect(run).runs[0].evals["final"]["world-test"]
    assert data.prompt_texts == {row["id"]: row["prompt"] for row in rows} and data.note is None
    (folder / "prompts.jsonl").unlink()  # written before the suite kept its prompts
    data = collect(run).runs[0].evals["final"]["world-test"]
    assert data.prompt_texts == {} and "predates prompts.jsonl" in data.note
    rows[0]["gold"] = "not the generations' gold"
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = collect(run).runs[0].evals["final"]["world-test"]
    assert data.prompt_texts == {} and "does not match" in data.note


def test_a_cell_still_in_rl_counts_in_no_finding(tmp_path: Path, synthetic) -> None:
    """run.json, not the folders, says what is finished: a cell mid-RL (or re-running RL after a config
    change) still holds an eval/final folder of another policy, and its RL's latest periodic
    evaluation is a policy halfway through training. Neither is a final result."""
    spec = synthetic.RunSpec
    cells = [
        (f"s{seed}", {"seed": seed}, spec(name=f"s{seed}", seed=seed, steps=10, samples=4))
        for seed in (0, 1, 2)
    ]
    stale = spec(
        name="s3", seed=3, steps=10, samples=4, final_mix={"omi2": 1.0}, unfinished=("rl", "eval-final")
    )
    midway = spec(name="s4", seed=4, steps=10, samples=4, eval_location="rl", unfinished=("rl",))
    cells += [("s3", {"seed": 3}, stale), ("s4", {"seed": 4}, midway)]
    sweep = collect(synthetic.write_sweep(tmp_path / "sweep", cells, {"seed": [0, 1, 2, 3, 4]}))
    runs = {run.name: run for run in sweep.runs}
    assert runs["s3"].eval("base", "world-test") is not None  # its base evaluation is finished
    assert runs["s3"].eval("final", "world-test") is None
    assert runs["s4"].evals == {"base": {}, "final": {}}
    assert (tmp_path / "sweep" / "cells" / "s3" / "eval" / "final" / "world-test" / "results.json").is_file()
    collapse = next(item for item in compute_findings(sweep) if item["id"] == "collapse")
    assert collapse["seeds"] == 3
    assert (
        sweep.progress()
        == "3 of 5 cells finished (final evaluation recorded done); the others count in no finding until they finish"
    )

    finished = collect(synthetic.write_run(tmp_path / "done", spec(steps=10, samples=4, eval_location="rl")))
    assert (
        finished.runs[0].eval("final", "world-test").source == "rl/eval/step_000010"
    )  # RL done: it stands in


def test_rl_evaluations_never_stand_in_beside_an_eval_stage_or_in_a_sweep(tmp_path: Path, synthetic) -> None:
    """RL's periodic evaluations run with RL's settings (other splits, fewer samples): a final
    evaluation that crashed after RL must leave the run unfinished, not let RL's last evaluation be
    compared with an eval/base folder or with the other cells' eval/final folders."""
    spec = synthetic.RunSpec

    def with_rl_evaluation(folder: Path) -> Path:  # RL's last evaluation, as the pipeline leaves it
        shutil.copytree(folder / "eval" / "base" / "world-test", folder / "rl" / "eval" / "step_000010" / "world-test")
        return folder

    lone = with_rl_evaluation(synthetic.write_run(tmp_path / "lone", spec(steps=10, samples=4, evaluations=("base",))))
    run = collect(lone).runs[0]
    assert run.eval("base", "world-test").source == "eval/base"
    assert run.evals["final"] == {}

    cells = [(f"s{seed}", {"seed": seed}, spec(name=f"s{seed}", seed=seed, steps=10, samples=4)) for seed in (0, 1, 2)]
    cells += [("s3", {"seed": 3}, spec(name="s3", seed=3, steps=10, samples=4, unfinished=("eval-final",)))]
    folder = synthetic.write_sweep(tmp_path / "sweep", cells, {"seed": [0, 1, 2, 3]})
    with_rl_evaluation(folder / "cells" / "s3")
    sweep = collect(folder)
    assert sweep.runs[3].evals["final"] == {}
    assert sweep.progress().startswith("3 of 4 cells finished")

    only_rl = collect(synthetic.write_run(tmp_path / "rl-only", spec(steps=10, samples=4, eval_location="rl")))
    sweep = synthetic.write_sweep(tmp_path / "rl-sweep", [("s0", {"seed": 0}, spec(steps=10, samples=4, eval_location="rl"))], {"seed": [0]})
    assert only_rl.runs[0].eval("final", "world-test") is not None and collect(sweep).runs[0].evals["final"] == {}


def test_the_parameter_count_comes_from_the_checkpoints_headers(tmp_path: Path) -> None:
    """The model-size finding orders sizes by the run folders' own checkpoints (the report imports no
    model code): the count read from the safetensors header is the model's, tied embeddings once."""
    from echochamber.model.presets import build_model, count_parameters

    model = build_model("tiny", 1024)
    model.save_pretrained(tmp_path / "final")
    assert parameter_count(tmp_path / "final") == count_parameters(model)
    assert parameter_count(tmp_path / "nothing") is None
    (tmp_path / "final" / "model.safetensors").write_bytes(b"\x05")  # a truncated file
    with pytest.raises(UserError, match="not a readable safetensors file"):
        parameter_count(tmp_path / "final")


def test_the_report_imports_neither_torch_nor_transformers(sweep_dir: Path, tmp_path: Path) -> None:
    """`echochamber report` over finished run folders needs no model: importing torch and transformers
    (once reached through the RL config it reads the default KL from) cost it ~6 of its ~10 s on a
    2-core CPU. A KL sweep's report judges cells "at the default KL"; built in a fresh interpreter,
    since this one has imported both already."""
    code = (
        "import sys; from pathlib import Path; from echochamber.report.page import build_report; "
        "build_report(Path(sys.argv[1]), Path(sys.argv[2])); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    command = [sys.executable, "-c", code, str(sweep_dir), str(tmp_path / "report")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "findings.json").is_file()
    assert result.stdout.strip().splitlines()[-1] == "[]"
