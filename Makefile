# The two set-up commands (README): `make quickstart` and `make test`. Both install on first use.
.PHONY: quickstart test lint

.venv/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

quickstart: .venv/.installed
	.venv/bin/echochamber run --out runs/quickstart

test: .venv/.installed
	.venv/bin/python -m pytest

lint: .venv/.installed
	.venv/bin/ruff check echochamber tests benchmarks
