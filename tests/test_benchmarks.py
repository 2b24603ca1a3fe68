"""The GPU rollout benchmark's code path, run on the CPU with a tiny model and the stand-in vllm
(tests/conftest.py), so a GPU session can run benchmarks/bench_gpu_rollouts.py as is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_bench_gpu_rollouts_runs_every_part_on_the_cpu(fake_vllm, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["bench_gpu_rollouts.py"])
    import bench_gpu_rollouts

    bench_gpu_rollouts.main(
        [
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--context",
            "256",
            "--prompts",
            "2",
            "--samples",
            "2",
            "--new-tokens",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert "vocab 32000" in out
    assert out.count("float32") >= 1 and "(no vllm)" not in out  # the vLLM column was measured
    for run in ("torch auto #1", "torch auto #2", "vllm auto #2", "vllm bfloat16 #2"):
        assert run in out
    assert "CHECK float32 engine vs float32 trainer, max |Δ log p| < 1e-3: yes" in out
    # One engine per throughput dtype, one per vLLM GRPO run; each run pushed its update's weights.
    assert len(fake_vllm.engines) == 4 and [len(e.pushes) for e in fake_vllm.engines[2:]] == [2, 2]
