"""`echochamber report RUN_OR_SWEEP_DIR`: one self-contained HTML page (plus its figures as PNG).

The report reads only run folders, so any run or sweep can be reported at any time, finished or
not. One module per step:

    collect.py   run / sweep folders -> plain data (`collect`)
    findings.py  that data -> the paper's findings, measured, with bootstrap confidence intervals
                 (`compute_findings`)
    figures.py   that data -> PNG charts (matplotlib's Agg canvas)
    page.py      data + findings + charts -> index.html (`build_report`, the entry point); the PNGs
                 are embedded as base64 and also written beside the page
    assets.py    the page's inline CSS and the generation browser's JS

A stage that has not run yet (no RL, no evaluation) never crashes the report: its section says so.
"""
