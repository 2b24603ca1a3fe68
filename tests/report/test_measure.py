"""report/measure.py: per-prompt measures and the estimates built on them."""

from __future__ import annotations

import os
import subprocess
import sys

# Per-prompt values whose float sums depend on their order (magnitudes 1e-3..1e3), compared between
# two settings and before/after RL by each of the three pairings by prompt id.
_SCRIPT = """
import random
from types import SimpleNamespace
from echochamber.report.measure import gain, over_seeds, paired, unpaired

rng = random.Random(0)
ids = [f"prompt-{i}" for i in range(300)]
before = {key: rng.random() * 10 ** rng.randint(-3, 3) for key in ids}
after = {key: rng.random() * 10 ** rng.randint(-3, 3) for key in reversed(ids)}
values = {"a": after, "b": before}
runs = {name: SimpleNamespace(seed=0, name=name) for name in values}
rl_run = SimpleNamespace(seed=0, eval=lambda phase, bench: SimpleNamespace(prompts=before if phase == "base" else after))
by_name = lambda run: values[run.name]
print(repr(paired([runs["a"]], [runs["b"]], by_name).effect))
print(repr(unpaired([runs["a"]], [runs["b"]], by_name).effect))
found = over_seeds([rl_run], gain(None, lambda value: value))
print(repr(found.effect), repr(found.interval))
"""


def test_estimates_are_the_same_in_every_process() -> None:
    """findings.json must not change between two runs of the same report: pairing prompts through a
    set made the sums' order, and so their last digits, follow each process's string hashes."""
    outputs = set()
    for hash_seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1, outputs
