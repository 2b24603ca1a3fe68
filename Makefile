# The two set-up commands (README): `make quickstart` and `make test`. Both install on first use.
.PHONY: quickstart test lint

.venv/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

# Two data-parallel ranks (echochamber/launch.py): on 2 cores the tiny model runs faster as two
# one-thread processes than as one two-thread process; on more cores each rank gets half of them.
quickstart: .venv/.installed
	.venv/bin/echochamber run --procs 2 --out runs/quickstart

# Two test processes (pytest-xdist), each with one torch thread (tests/conftest.py): most tests are
# small single-threaded work, so two cores finish the suite ~1.5x sooner (8:32 against 12:57 on a
# 2-core Zen 3); worksteal keeps both busy to the end, where the minute-long end-to-end tests sit.
test: .venv/.installed
	.venv/bin/python -m pytest -n 2 --dist worksteal

lint: .venv/.installed
	.venv/bin/ruff check echochamber tests benchmarks
