"""`echochamber report RUN_OR_SWEEP_DIR`: one self-contained HTML page (plus its figures as PNG).

The report reads only run folders, so any run or sweep can be reported at any time, finished or
not. One module per step:

    collect.py      run / sweep folders -> plain data (`collect`)
    stats.py        pure statistics: t intervals over seeds, claims judged against margins,
                    the permutation test of the collapse/gain lag (docs/statistics.md)
    measure.py      runs -> per-seed, per-prompt values -> estimates (paired by seed where
                    settings share a pretraining) -> finding objects (the findings.json schema)
    findings.py     the findings about one setting (`compute_findings`: collapse, its timing,
                    pass@k / maj@k, transfer, the mixture flip)
    comparisons.py  the findings that compare settings (KL, algorithm, model size)
    curves.py       pass@k / maj@k at every k, base against RL, and where the base curve
                    crosses the RL curve (per seed and with intervals over seeds)
    figures.py      that data -> PNG charts (matplotlib's Agg canvas)
    tables.py       the page's findings table (from the findings objects) and format-rule tables
    page.py         data + findings + charts -> index.html and findings.json (`build_report`,
                    the entry point); the PNGs are embedded as base64 and also written beside it
    assets.py       the page's inline CSS and the generation browser's JS
    markdown.py     `--markdown`: the findings (read back from findings.json), per-rung transfer and
                    format-share tables as Markdown, for a README

A stage that has not run yet (no RL, no evaluation) never crashes the report: its section says so.
"""
