"""`echochamber report DIR --markdown`: the findings table is findings.json's, the transfer table
lists the RL level then every rung easiest first with planted before/after numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echochamber.cli import main
from echochamber.report.markdown import findings_markdown, markdown_report, md_table
from echochamber.report.tables import VERDICT_WORDS

N = 8
# Per benchmark: correct samples (of 8) per prompt before and after RL. The RL level rises from 2 to
# 6 of 8 on each of 10 prompts; the two-step rung falls from 4 to 0 on half its prompts; the
# three-step rung and world-hard do not move. Listed out of order: the table must sort them.
PLANTED = {
    "world-3step": ([1] * 10, [1] * 10),
    "world-hard": ([0] * 10, [0] * 10),
    "world-2step": ([4] * 5 + [0] * 5, [0] * 10),
    "world-test": ([2] * 10, [6] * 10),
}


def rows_of(text: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under the heading that starts with `title`."""
    section = text.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_the_transfer_table_lists_the_rl_level_then_each_rung_with_planted_numbers(
    tmp_path: Path, synthetic
) -> None:
    run = synthetic.write_planted_run(tmp_path / "run", PLANTED, N)
    index, text = markdown_report(run)
    assert index == run / "report" / "index.html"
    rows = rows_of(text, "Before and after RL, per rung")
    assert [row[:2] for row in rows] == [
        ["world-test", "RL level"], ["world-2step", "harder"], ["world-3step", "harder"], ["world-hard", "harder"],
    ]  # fmt: skip
    test, two_step = rows[0], rows[1]
    # No greedy rows: pass@1 is the sampled accuracy, 2/8 -> 6/8; pass@8 is 1 wherever a prompt has a right sample.
    assert test[2] == "25.0 % → 75.0 %" and test[3] == "8" and test[4] == "100.0 % → 100.0 %"
    assert test[6].startswith("+50.0 pts [+50.0, +50.0]")  # every prompt gains exactly 4/8
    assert two_step[2] == "25.0 % → 0.0 %" and two_step[4] == "50.0 % → 0.0 %"
    assert two_step[7] == "10 prompts of 1 seed"
    assert "### Format shares" not in text  # planted without results.json: no format summary to show


def test_the_findings_table_is_findings_json_row_for_row(tmp_path: Path, run_dir: Path) -> None:
    index, text = markdown_report(run_dir, tmp_path / "report")
    findings = json.loads((index.parent / "findings.json").read_text())
    rows = rows_of(text, "Findings")
    tested = [item for item in findings if item["verdict"] != "not_tested"]
    untested = [item for item in findings if item["verdict"] == "not_tested"]
    assert [row[0] for row in rows] == [f"`{item['id']}`" for item in tested] and untested
    reasons = "\n".join(f"- `{item['id']}`: {item['note']}" for item in untested)
    assert f"Not tested here:\n{reasons}" in text and all(item["note"] for item in untested)
    findings = tested
    for row, item in zip(rows, findings, strict=True):
        assert row[2].startswith(f"**{VERDICT_WORDS[item['verdict']][1]}**")
        assert row[5] == str(item["seeds"])
        if item["interval"] is not None and "steps" not in item["unit"]:
            low, high = (100 * bound for bound in item["interval"])
            assert (
                f"[{low:+.1f} pts, {high:+.1f} pts]"
                if item["unit"].startswith("Δ")
                else f"[{low:.1f}%, {high:.1f}%]"
            ) in row[4]
    assert any(item["verdict"] == "reproduced" for item in findings)  # the fixture's collapse, at least
    shares = {
        phase: json.loads((run_dir / "eval" / phase / "world-test" / "results.json").read_text())["sampled"][
            "formats"
        ]
        for phase in ("base", "final")
    }
    expected = [
        [
            name,
            *(f"{100 * shares[phase].get(name, {}).get('share', 0.0):.1f} %" for phase in ("base", "final")),
        ]
        for name in shares["base"]
    ]
    assert sorted(rows_of(text, "Format shares")) == sorted(expected)


def test_a_pipe_in_a_note_cannot_break_the_table() -> None:
    item = {
        "id": "collapse", "title": "a | b", "verdict": "inconclusive", "evidence": "single_seed", "seeds": 0,
        "effect": None, "interval": None, "per_seed": [], "setting": None, "unit": "share", "settings": [],
        "note": "no run | not run",
    }  # fmt: skip
    (row,) = findings_markdown([item]).splitlines()[2:]
    assert row.count(" | ") == 5 and "a \\| b" in row and "no run \\| not run" in row
    assert md_table(["x"], [["1\n2"]]).splitlines()[2] == "| 1 2 |"


def test_the_command_prints_markdown_on_stdout_and_the_page_path_on_stderr(
    tmp_path: Path, synthetic, capsys: pytest.CaptureFixture[str]
) -> None:
    run = synthetic.write_planted_run(tmp_path / "run", PLANTED, N)
    assert main(["report", str(run), "--markdown"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("### Findings (run)\n") and "### Before and after RL, per rung (run)" in out
    assert f"wrote {run / 'report' / 'index.html'}" in err


def test_the_transfer_table_says_its_delta_is_the_greedy_pass1(tmp_path: Path, synthetic) -> None:
    _, text = markdown_report(synthetic.write_planted_run(tmp_path / "run", PLANTED, N))
    section = text.split("### Before and after RL, per rung", 1)[1]
    header = next(line for line in section.splitlines() if line.startswith("|"))
    assert "| level | pass@1 (greedy) |" in header and "| Δ greedy pass@1 [95 % interval] |" in header
