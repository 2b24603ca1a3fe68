"""Provenance in the report: the echo-share chart beside the format-share chart, the format x
dominant-source table, the browser's highlighted span with its document, all read from run folders
(the synthetic runs plant a dominant source per generation: its format's, one in ten another's)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from echochamber.report.collect import collect
from echochamber.report.page import MATCH_LIMIT, TEXT_LIMIT, browser_entries, build_report


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_the_agreement_table_counts_the_rows(run_dir: Path, tmp_path: Path) -> None:
    data = collect(run_dir).runs[0].evals["final"]["world-test"]
    rows = [json.loads(line) for line in (data.folder / "generations.jsonl").read_text().splitlines()]
    sampled = [row for row in rows if row["mode"] == "sampled"]  # what the table counts, as the format table
    expected = Counter((row["format"], row["provenance"]["dominant_source"]) for row in sampled)
    assert data.source_table() == dict(expected) and data.sources() == ["tinygsm", "omi1", "omi2"]
    named = [row for row in sampled if row["format"] != "other"]
    agree = sum(row["format"] == row["provenance"]["dominant_source"] for row in named)
    assert 0.8 < agree / len(named) < 1.0  # nine in ten by construction (conftest.dominant_of)

    page = build_report(run_dir, tmp_path / "out").read_text().split("<h4>world-test", 1)[1]
    assert f"after RL: our format label against provenance's dominant source · {100 * agree / len(named):.1f}% of the {len(named)} generations" in page
    table = page.split("after RL: our format label against provenance", 1)[1].split("</table>", 1)[0]
    other_row = re.search(r"<tr><td>other</td>((?:<td>\d+</td>)+)</tr>", table).group(1)
    assert re.findall(r"\d+", other_row)[-1] == str(expected[("other", None)])  # `other` text has no source
    # The before/after table shows the pooled shares results.json holds.
    results = json.loads((data.folder / "results.json").read_text())
    novel = results["sampled"]["provenance"]["novelty"]
    assert re.search(rf"<td>novel n-grams</td><td>[^<]+</td><td>{100 * novel:.1f}%</td>", page)


def test_echo_share_is_charted_per_run_and_in_comparisons(sweep_dir: Path, tmp_path: Path) -> None:
    index = build_report(sweep_dir, tmp_path / "out")
    runs = collect(sweep_dir).runs
    assert sorted(p.name for p in index.parent.glob("*-echo_share.png")) == sorted(f"{r.name}-echo_share.png" for r in runs)
    page = index.read_text()
    assert page.index("Format share over RL steps") < page.index("Echo share over RL steps") < page.index("Training accuracy")
    # Comparisons gain a fourth panel (the main source's share) when the runs were traced.
    compare = sorted(index.parent.glob("compare-*.png"))
    assert compare and all(_png_width(path) == 4 * 460 for path in compare)


def test_the_browser_shows_the_span_and_its_document(run_dir: Path, tmp_path: Path, synthetic) -> None:
    entries = browser_entries(collect(run_dir))
    sides = [side for entry in entries for side in (entry["before"], entry["after"]) if side]
    assert sides and all(side["echo"] is not None for side in sides)
    for side in sides:
        echo = side["echo"]
        a, b = echo["chars"]
        assert side["text"][a:b] == echo["span"] and echo["context"]["before"] == "Question text\n\n"

    # A long generation: the highlight is cut where the shown text is, the document's span at MATCH_LIMIT.
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(rl=False, pretrain=False, samples=1))
    path = run / "eval" / "final" / "world-test" / "generations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["text"] = "x" * 100 + "y" * (2 * TEXT_LIMIT)
        row["provenance"]["longest_match"].update(text="y" * (2 * TEXT_LIMIT), chars=[100, 100 + 2 * TEXT_LIMIT])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    after = [entry["after"]["echo"] for entry in browser_entries(collect(run)) if entry["benchmark"] == "world-test"]
    assert all(echo["chars"] == [100, TEXT_LIMIT] for echo in after)
    assert all(len(echo["span"]) < MATCH_LIMIT + 100 and "more characters" in echo["span"] for echo in after)


def test_runs_without_provenance_say_so(tmp_path: Path, synthetic) -> None:
    run = synthetic.write_run(tmp_path / "run", synthetic.RunSpec(steps=20, samples=4, provenance=False))
    index = build_report(run)
    page = index.read_text()
    assert "provenance is not recorded" in page and not list(index.parent.glob("*echo_share.png"))
    assert "RL has not run, or its rollouts were not traced" in page
    assert all(entry["after"]["echo"] is None for entry in browser_entries(collect(run)))
