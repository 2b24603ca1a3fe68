# The two set-up commands (README): `make quickstart` and `make test`. Both install on first use.
.PHONY: quickstart test lint

.venv/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

# Two data-parallel ranks (echochamber/launch.py): on 2 cores the tiny model runs faster as two
# one-thread processes than as one two-thread process; on more cores each rank gets half of them.
quickstart: .venv/.installed
	.venv/bin/echochamber run --procs 2 --out runs/quickstart

test: .venv/.installed
	.venv/bin/python -m pytest

lint: .venv/.installed
	.venv/bin/ruff check echochamber tests benchmarks
