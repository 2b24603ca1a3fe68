"""The GPU rollout benchmark's code path, run on the CPU with a tiny model and the stand-in vllm
(tests/conftest.py; in the benchmark's child processes tests/fixtures/vllm_standin), so a GPU session
can run benchmarks/bench_gpu_rollouts.py as is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bench_gpu_rollouts_runs_every_part_on_the_cpu(fake_vllm, fixtures_dir, monkeypatch, capfd):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["bench_gpu_rollouts.py"])
    standin = str(fixtures_dir / "vllm_standin")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [standin, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import bench_gpu_rollouts

    bench_gpu_rollouts.main(
        ["--device", "cpu", "--preset", "tiny", "--context", "256", "--prompts", "2", "--samples", "2", "--new-tokens", "8"]
    )
    out = capfd.readouterr().out
    assert "vocab 32000" in out and "failed" not in out
    rates = [line.split() for line in out.splitlines() if line.strip().startswith(("float32 ", "bfloat16 "))]
    assert [row[0] for row in rates] == ["float32", "bfloat16"]
    assert all(len(row) == 6 and row[3] != "(no" for row in rates)  # HF, ours, vLLM and both ratios measured
    for run in ("torch auto #1", "torch auto #2", "vllm auto #1", "vllm auto #2", "vllm bfloat16 #2"):
        assert run in out
    # The float32 engine's second step sampled the weights pushed after the first update: float error.
    assert "CHECK float32 engine vs float32 trainer, max |Δ log p| < 1e-3: yes" in out
