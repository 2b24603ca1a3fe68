# The two set-up commands (README): `make quickstart` and `make test`. Both install on first use.
.PHONY: quickstart test lint

.venv/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

quickstart: .venv/.installed
	.venv/bin/echochamber data world --out runs/quickstart/world --n 2000
	.venv/bin/python -c "import json; rows=[json.loads(l) for l in open('runs/quickstart/world/test.omi2.jsonl')]; open('runs/quickstart/omi2.jsonl','w').writelines(json.dumps({'completion': r['generated_solution'], 'gold': r['expected_answer']})+'\n' for r in rows)"
	.venv/bin/echochamber grade runs/quickstart/omi2.jsonl --out runs/quickstart/omi2.graded.jsonl

test: .venv/.installed
	.venv/bin/python -m pytest

lint: .venv/.installed
	.venv/bin/ruff check echochamber tests benchmarks
