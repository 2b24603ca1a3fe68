"""A finished `echochamber run` against the machine's limits: each stage's measured seconds next to
the seconds its arithmetic would take with every op at a limit of these cores, measured now.

    python benchmarks/bench_run_limits.py runs/quickstart            # as `make quickstart` ran it
    python benchmarks/bench_run_limits.py runs/quickstart --procs 1  # a one-process run

The work is read from the run folder, not assumed: the tokens pretraining saw (its metrics), every
generation of every evaluation (eval/, rl/eval/: prompt and response lengths) and every RL step's
rollouts. The limits are limits.py's, measured on one thread in this process: matmuls at the best
GEMM rate measured (the model's own layers at the row counts the run uses, or a large square
product), KV-cache reads at the read bandwidth, everything else (attention's arithmetic, norms,
sampling, the optimizer, Python, validation passes, checkpoints) free. `--procs` ranks each get a
core at those rates. The verifier's subprocesses (reward) and the data and report stages are not
model arithmetic: they are shown as measured and left out of the bound.

So the bound is generous: no implementation of the same arithmetic in float32 with torch's GEMM
runs the study faster on this CPU. A goal below it (issue 15's six minutes for the quickstart)
needs less arithmetic, other precision or other hardware, not better code. Run it on the machine
that made the run, right after it: the measured column is that run's, the limits are this
process's, and on a shared host they move (a 2-core Zen 3's square GEMM rate read 66 and 79 GFLOP/s
25 minutes apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from limits import gemm_ceiling, read_bandwidth, rl_update_flops, sampling_limit_seconds, square_gemm_rate
from machine import cpu_model

from echochamber.config import load_config
from echochamber.data.tokenizer import encode_prompt, load_tokenizer
from echochamber.model.presets import flops_per_token, load_model, spec_of
from echochamber.pretrain.config import PretrainConfig
from echochamber.rl.config import load_rl_config
from echochamber.rl.rollout import load_prompts, read_rollouts
from echochamber.runlog import read_jsonl, read_metrics


def generation_work(generations: list[dict], prompt_tokens: dict[str, int]) -> list[dict]:
    """One sampler call's work per (mode) of an evaluation or per RL step: rows, distinct prompts,
    mean prompt and response tokens."""
    calls = defaultdict(list)
    for row in generations:
        calls[row.get("mode", "sample")].append(row)
    return [
        {
            "rows": len(rows),
            "prompts": len({r["prompt_id"] for r in rows}),
            "prompt": statistics.mean(prompt_tokens[r["prompt_id"]] for r in rows),
            "response": statistics.mean(r["n_tokens"] for r in rows),
        }
        for rows in calls.values()
    ]


def sampling_seconds(work: list[dict], spec, vocab: int, gemm: float, read: float) -> float:
    return sum(
        sampling_limit_seconds(spec, vocab, prompt_tokens=w["prompt"], rows=w["rows"], new_tokens=w["response"],
                               prefill_rows=w["prompts"], gemm_gflops=gemm, read_gbs=read)  # fmt: skip
        for w in work
    )


def evaluation_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.glob("*/generations.jsonl"))


def evaluation_limit(folders: list[Path], tokenizer, spec, vocab: int, gemm: float, read: float) -> float:
    seconds = 0.0
    for folder in folders:
        prompts = {p["id"]: len(encode_prompt(tokenizer, p["prompt"])) for p in read_jsonl(folder / "prompts.jsonl")[0]}
        generations = read_jsonl(folder / "generations.jsonl")[0]
        seconds += sampling_seconds(generation_work(generations, prompts), spec, vocab, gemm, read)
    return seconds


def rl_limits(run: Path, tokenizer, model, gemm: float, read: float) -> dict[str, float]:
    """Generation, reference and update seconds of every RL step at the limits (limits.rl_update_flops:
    the work an update needs)."""
    config = load_rl_config(str(run / "rl" / "config.yaml"))
    prompts = {r.id: len(encode_prompt(tokenizer, r.prompt)) for r in load_prompts(config.prompts)}
    spec, vocab = spec_of(model), model.config.vocab_size
    out = {"generate": 0.0, "reference": 0.0, "update": 0.0}
    uses_reference = any(m.get("time_reference", 0) > 0 for m in read_metrics(run / "rl" / "metrics.jsonl"))
    for path in sorted((run / "rl" / "rollouts").glob("step_*.jsonl.gz")):
        work = generation_work(read_rollouts(path), prompts)
        out["generate"] += sampling_seconds(work, spec, vocab, gemm, read)
        for w in work:
            train = rl_update_flops(spec, vocab, prompt_tokens=w["prompt"], prompts=w["prompts"],
                                    response_tokens=w["response"], rows=w["rows"])  # fmt: skip
            out["update"] += train / (gemm * 1e9)
            out["reference"] += train / 3 / (gemm * 1e9) if uses_reference else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `echochamber run` folder")
    parser.add_argument("--procs", type=int, default=2, help="ranks the run used (make quickstart: 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run, stages = args.run, json.loads((args.run / "run.json").read_text())["stages"]
    model = load_model(run / "pretrain" / "final")
    tokenizer = load_tokenizer(run / "pretrain" / "final")
    spec, vocab = spec_of(model), model.config.vocab_size
    pretrain = load_config(PretrainConfig, str(run / "pretrain" / "config.yaml"))
    rows = pretrain.seq_len * min(pretrain.micro_batch_size, pretrain.batch_size // args.procs)
    ceilings = {f"rows {n}": gemm_ceiling(model, n, repeats=5) for n in (64, 128, 512, rows)}
    ceilings["2048-square"] = square_gemm_rate()
    gemm, read = max(ceilings.values()), read_bandwidth()
    print(f"{cpu_model()}; one thread per rank, {args.procs} ranks; load average {os.getloadavg()[0]:.1f}")
    print("GEMM rates (GFLOP/s), the layers at " + ", ".join(f"{n}: {rate:.1f}" for n, rate in ceilings.items())
          + f"; read bandwidth {read:.1f} GB/s")  # fmt: skip

    tokens = max(m["tokens"] for m in read_metrics(run / "pretrain" / "metrics.jsonl") if "tokens" in m)
    rl_time = defaultdict(float)
    for m in read_metrics(run / "rl" / "metrics.jsonl"):
        for key in ("time_generate", "time_reward", "time_reference", "time_update"):
            rl_time[key.removeprefix("time_")] += m.get(key, 0.0)
    rl = rl_limits(run, tokenizer, model, gemm, read)
    rl_evals = evaluation_limit([f for step in sorted((run / "rl" / "eval").glob("step_*")) for f in evaluation_folders(step)],
                                tokenizer, spec, vocab, gemm, read)  # fmt: skip
    limits = {
        "pretrain": tokens * flops_per_token(model, pretrain.seq_len) / (gemm * 1e9),
        "eval-base": evaluation_limit(evaluation_folders(run / "eval" / "base"), tokenizer, spec, vocab, gemm, read),
        "rl": sum(rl.values()) + rl_evals,
        "eval-final": evaluation_limit(evaluation_folders(run / "eval" / "final"), tokenizer, spec, vocab, gemm, read),
    }
    limits = {stage: seconds / args.procs for stage, seconds in limits.items()}
    print(f"{'stage':<12}{'measured s':>11}{'at the limits s':>17}{'ratio':>7}")
    for stage, info in stages.items():
        bound = limits.get(stage)
        print(f"{stage:<12}{info['seconds']:>11.1f}" + (f"{bound:>17.1f}{info['seconds'] / bound:>6.1f}x" if bound else
                                                      f"{'(not model arithmetic)':>24}"))  # fmt: skip
    print("  rl's steps, rank 0 measured / all ranks at the limits: " + ", ".join(
        f"{part} {rl_time[part]:.1f} / {rl.get(part, 0.0) / args.procs:.1f} s" for part in ("generate", "reward", "reference", "update"))
        + f"; its periodic evaluations at the limits {rl_evals / args.procs:.1f} s")  # fmt: skip
    measured = sum(info["seconds"] for info in stages.values())
    floor = sum(limits.values())
    print(f"the study: measured {measured:.0f} s ({measured / 60:.1f} min); its model arithmetic at this CPU's limits "
          f">= {floor:.0f} s ({floor / 60:.1f} min), reward, data and report left out")  # fmt: skip


if __name__ == "__main__":
    main()
