"""Seconds per GRPO step: TRL's `GRPOTrainer` next to ours (rl/core.py + rl/grpo.py), in one process.

    python benchmarks/bench_grpo_vs_trl.py                       # 16 prompts x 8, <= 128 new tokens
    python benchmarks/bench_grpo_vs_trl.py --steps 3 --policy RUN/final   # a pretrained checkpoint
    python benchmarks/bench_grpo_vs_trl.py --preset small --threads 1     # the small preset, 1 thread
    python benchmarks/bench_grpo_vs_trl.py --dtype auto                   # bfloat16 on both sides where native

Both sides get the same model (by default a random `tiny` preset, ~1M parameters, over a 4k BPE
trained on GSM8K questions; or --policy), the same GSM8K train prompts (question + "\\n\\n"), group
size, completion limit, temperature (no top-p: ours never truncates the RL sampling distribution),
beta (k3 in the loss, TRL's ratio-weighted "bias correction" off), clip, seq-mean loss, lr, Adam
betas, grad clip and micro-batch (8 sequences: the CPU preset's), and the same verifier reward (our Grader; TRL's reward function wraps it, and
like ours scores a completion that never reached EOS as 0). A step is everything between two
updates: sampling, reward, reference log-probs, the update. TRL's step time comes from a trainer
callback; ours from the timing split core writes to metrics.jsonl for every step. The first step of
each side is a warm-up and is not counted; the whole call (setup, warm-up, logging, saving) per step
is printed too, as an upper bound. A random model rarely stops before the limit, so both
sides sample the full length: the worst case for sampling speed.

Both sides run with glibc's large tensors kept in its heap (allocator.py), as our sampler sets it
for its whole process: TRL's update, which writes [rows, vocab] tensors of MiBs every micro-batch,
gains most from it (docs/performance-log.md, session 14).

Precision (--dtype) is the same on both sides: float32 by default; under bfloat16 (or "auto" where
it resolves to bfloat16) TRL trains with `bf16=True` (autocast, HF's default sdpa attention) and ours
with `dtype: bfloat16` (autocast over the update's and the reference's forwards, eager attention on a
CPU: precision.set_attention); both sample from float32 weights.

Where our step's time goes (docs/performance.md): each phase's share, and its achieved GFLOP/s
(useful work only: the padding a micro-batch carries counts as lost time, a prompt counts once
per group, and the output layer only where a response token is predicted) against the dense-GEMM
rate of the model's own linear layers at that phase's rows, measured in the same run
(limits.gemm_ceiling); sampling also as GB/s of weights and KV cache read per decoding step
against a measured copy bandwidth. Then the machine's limits (limits.py): each phase's time with
its matmuls at the best GEMM rate measured and the KV cache read at the measured read bandwidth,
everything else free, and the largest ratio to TRL's step that they leave on this CPU.

The machine may be shared: the load average is printed before and after; compare runs made at
similar load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from limits import (
    copy_bandwidth,
    gemm_ceiling,
    kv_bytes_per_token,
    read_bandwidth,
    rl_update_flops,
    sampling_limit_seconds,
    square_gemm_rate,
)

from echochamber.allocator import keep_large_tensors
from echochamber.data.paths import data_dir
from echochamber.data.sources import load_source
from echochamber.data.tokenizer import (
    PROMPT_SEPARATOR,
    encode_prompt,
    load_tokenizer,
    pad_token_id,
    train_bpe,
)
from echochamber.model.precision import DTYPES, resolve_dtype
from echochamber.model.presets import build_model, count_parameters, flops_per_token, load_model, spec_of
from echochamber.rl.config import load_rl_config, rl_preset
from echochamber.rl.core import run_rl
from echochamber.rl.rollout import read_rollouts
from echochamber.runlog import METRICS_FILE, read_metrics
from echochamber.verify.grade import Grader


def random_policy(folder: Path, questions: list[str], vocab: int, preset: str) -> Path:
    tokenizer = train_bpe((q + PROMPT_SEPARATOR for q in questions), vocab)
    model = build_model(
        preset, len(tokenizer), seed=0, pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def time_trl(policy: Path, records: list, grader: Grader, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import TrainerCallback

    tokenizer = load_tokenizer(policy)
    eos = tokenizer.eos_token_id

    def verifier_reward(completions: list[str], completion_ids: list[list[int]], answer: list[str], **_: Any) -> list[float]:
        grades = grader.grade(completions, answer)
        # Same rule as ours: a completion that never emitted EOS is truncated and never correct.
        return [1.0 if grade.correct and eos in ids else 0.0 for grade, ids in zip(grades, completion_ids, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    config = trl.GRPOConfig(
        # One optimizer step per generation batch of prompts x group, in micro-batches of the same size as ours.
        output_dir=str(out), max_steps=args.steps + 1, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts * args.group // args.micro_batch,
        generation_batch_size=args.prompts * args.group, num_generations=args.group, num_iterations=1,
        max_completion_length=args.new_tokens, temperature=args.temperature, top_p=1.0, beta=args.beta,
        use_bias_correction_kl=False, epsilon=0.2, loss_type="grpo", scale_rewards="group",
        learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
        bf16=args.dtype == "bfloat16", disable_tqdm=True, seed=0,
        gradient_checkpointing=False,  # TRL's GRPO default is on; a 1M model does not need it, nor do we use it
    )  # fmt: skip
    dataset = datasets.Dataset.from_dict(
        {"prompt": [r.prompt + PROMPT_SEPARATOR for r in records], "answer": [r.answer for r in records]}
    )
    timer = StepTimer()
    trainer = trl.GRPOTrainer(
        model=str(policy), reward_funcs=verifier_reward, args=config, train_dataset=dataset,
        processing_class=tokenizer, callbacks=[timer],
    )  # fmt: skip
    # Sampling + reward + reference log-probs happen in this method; the rest of a step is the update.
    rollout_seconds: list[float] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed_generate_and_score(*inputs: Any, **options: Any) -> Any:
        started = time.perf_counter()
        result = generate_and_score(*inputs, **options)
        rollout_seconds.append(time.perf_counter() - started)
        return result

    trainer._generate_and_score_completions = timed_generate_and_score
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    rollout = statistics.mean(rollout_seconds[1:])
    return {
        "seconds": timer.seconds[1:],
        "split": {"generate+reward+reference": rollout, "update": statistics.mean(timer.seconds[1:]) - rollout},
        "wall": wall / (args.steps + 1),
        "mean_length": statistics.mean(lengths[1:]),
    }


def time_ours(
    policy: Path, gsm8k: Path, records: list, grader: Grader, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    config = load_rl_config("cpu", [f"policy={policy}", f"out={out}"])
    config.prompts.dataset, config.prompts.path = "gsm8k", str(gsm8k)
    config.rollout.prompts_per_step, config.rollout.samples_per_prompt = args.prompts, args.group
    config.rollout.max_new_tokens, config.rollout.temperature = args.new_tokens, args.temperature
    config.rollout.batch_size = args.prompts * args.group
    config.grpo.kl_coef, config.grpo.kl_estimator, config.grpo.kl_placement = args.beta, "k3", "loss"
    config.grpo.lr, config.grpo.clip, config.grpo.aggregation = args.lr, 0.2, "seq_mean"
    config.betas, config.grad_clip, config.weight_decay = [0.9, 0.95], 1.0, 0.0
    config.micro_batch_size, config.dtype = args.micro_batch, args.dtype
    config.max_steps, config.checkpoint_every = args.steps + 1, args.steps + 1
    config.eval_every, config.tensorboard, config.progress = 0, False, False
    started = time.perf_counter()
    run_rl(config, algo="grpo", grader=grader)
    wall = time.perf_counter() - started
    lines = read_metrics(out / METRICS_FILE, "rl")[1:]
    parts = ("time_generate", "time_reward", "time_reference", "time_update")
    return {
        "seconds": [sum(line[part] for part in parts) for line in lines],
        "wall": wall / (args.steps + 1),
        "split": {part: statistics.mean(line[part] for line in lines) for part in parts},
        "mean_length": statistics.mean(line["response_length"] for line in lines),
        "tokens": step_tokens(out, policy, records, steps=range(2, args.steps + 2)),
    }


def step_tokens(out: Path, policy: Path, records: list, steps: range) -> tuple[float, float]:
    """Mean (prompt tokens, response tokens) per sample over the timed steps, from the rollout files."""
    tokenizer, prompts = load_tokenizer(policy), {r.id: r.prompt for r in records}
    rows = [row for step in steps for row in read_rollouts(out / "rollouts" / f"step_{step:06d}.jsonl.gz")]
    prompt = statistics.mean(len(encode_prompt(tokenizer, prompts[row["prompt_id"]])) for row in rows)
    return prompt, statistics.mean(row["n_tokens"] for row in rows)


def phase_table(model: Any, result: dict[str, Any], args: argparse.Namespace, peer_step: float | None) -> None:
    """Our step's phases: share, achieved GFLOP/s of useful tokens and % of the GEMM ceiling at the
    phase's rows, sampling also as GB/s read against the copy bandwidth; then each phase's time at
    the machine's limits (limits.py) and the largest ratio to the peer's `peer_step` they allow."""
    prompt, response = result["tokens"]
    length, n = prompt + response, args.prompts * args.group
    spec, context = spec_of(model), prompt + response / 2  # mean context of a decoding step
    train = rl_update_flops(spec, model.config.vocab_size, prompt_tokens=prompt, prompts=args.prompts,
                            response_tokens=response, rows=n)  # fmt: skip
    decode = flops_per_token(model, int(context)) / 3 * response * n  # forward only, generated tokens
    update_ceiling = gemm_ceiling(model, int(args.micro_batch * length), repeats=3, dtype=args.dtype)
    decode_ceiling = gemm_ceiling(model, n, repeats=20)
    weights = sum(p.numel() for p in model.parameters()) * 4
    kv_cache = kv_bytes_per_token(spec) * context * n  # K and V of every row
    bandwidth, read = copy_bandwidth(), read_bandwidth()
    split, step = result["split"], sum(result["split"].values())
    flops = {"time_generate": decode, "time_reward": None, "time_reference": train / 3, "time_update": train}
    ceilings = {"time_generate": decode_ceiling, "time_reference": update_ceiling, "time_update": update_ceiling}
    print(f"our step, phase by phase (mean of the timed steps; {prompt:.0f} prompt + {response:.0f} response tokens "
          f"per sample; {args.dtype} GEMM ceiling {update_ceiling:.1f} GFLOP/s at {int(args.micro_batch * length)} rows, "
          f"{decode_ceiling:.1f} at {n}; copy {bandwidth:.1f} GB/s, read {read:.1f} GB/s; "
          f"load {os.getloadavg()[0]:.1f}):")  # fmt: skip
    for part, seconds in split.items():
        line = f"  {part.removeprefix('time_'):10s} {seconds:6.2f} s {seconds / step:5.0%}"
        if flops[part] is not None and seconds > 0:
            rate = flops[part] / seconds / 1e9
            line += f"  {rate:6.1f} GFLOP/s = {rate / ceilings[part]:4.0%} of the GEMM ceiling"
        if part == "time_generate" and seconds > 0:
            moved = (weights + kv_cache) * response / seconds / 1e9
            line += f"; {moved:.1f} GB/s of weights + KV cache read = {moved / bandwidth:.0%} of copy bandwidth"
        print(line)
    # The same work with every op at its limit and the rest free (limits.py); reward is left out. Each
    # phase's matmuls at the best GEMM rate measured in its precision (the layers' shapes at either row
    # count, or a large square product): a phase could cut its rows either way.
    square = {dtype: square_gemm_rate(dtype=dtype) for dtype in {"float32", args.dtype}}
    same = args.dtype == "float32"  # sampling is float32 whatever the training precision
    sample_rate = max(decode_ceiling, square["float32"], update_ceiling if same else 0.0)
    train_rate = max(update_ceiling, square[args.dtype], decode_ceiling if same else 0.0) * 1e9
    sampling = sampling_limit_seconds(
        spec, model.config.vocab_size, prompt_tokens=prompt, rows=n, new_tokens=response, prefill_rows=args.prompts,
        gemm_gflops=sample_rate, read_gbs=read,
    )  # fmt: skip
    limits = {"generate": sampling, "reference": train / 3 / train_rate, "update": train / train_rate}
    floor, ours = sum(limits.values()), step - split.get("time_reward", 0.0)
    print(f"  at the machine's limits (matmuls at {train_rate / 1e9:.1f} GFLOP/s, the best GEMM rate measured "
          f"(a {args.dtype} 2048-square product: {square[args.dtype]:.1f}), the KV cache at the read bandwidth, the rest free): "
          + ", ".join(f"{part} {seconds:.2f} s" for part, seconds in limits.items())
          + f"; a step >= {floor:.2f} s without reward, {floor / ours:.0%} of ours")  # fmt: skip
    if peer_step is not None:
        print(f"  so on this CPU no implementation of this arithmetic with torch's GEMM (training in {args.dtype}, sampling in float32) "
              f"is more than {peer_step / floor:.1f}x faster than TRL's {peer_step:.2f} s/step "
              f"(ours: {peer_step / statistics.median(result['seconds']):.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="HF model folder (default: a random tiny model)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up step)")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE size of the random model")
    parser.add_argument("--preset", default="tiny", help="model preset of the random model (tiny, small)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    parser.add_argument("--micro-batch", type=int, help="sequences per forward/backward, both sides (default: the cpu preset's)")
    parser.add_argument("--only", choices=("trl", "ours"), help="time one side only")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="training precision, both sides (auto: bfloat16 where native)")
    args = parser.parse_args()
    # As our sampler sets it, for both sides from the start: the order of the sides must not matter.
    keep_large_tensors()
    args.dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    args.micro_batch = args.micro_batch or int(rl_preset("cpu")["micro_batch_size"])
    if (args.prompts * args.group) % args.micro_batch:
        raise SystemExit(f"--micro-batch must divide prompts x group = {args.prompts * args.group}")

    folder = data_dir()
    if folder is None:
        raise SystemExit("needs the real data folder (shared/data) for GSM8K prompts")
    gsm8k = folder / "gsm8k" / "train.jsonl"
    torch.set_num_threads(args.threads)
    records = load_source("gsm8k", path=gsm8k)
    with tempfile.TemporaryDirectory() as tmp, Grader(workers=2) as grader:
        work = Path(tmp)
        policy = args.policy or random_policy(work / "policy", [r.prompt for r in records], args.vocab, args.preset)
        model = load_model(policy)
        print(f"model: {policy} ({count_parameters(model) / 1e6:.2f}M parameters, vocab {model.config.vocab_size}); "
              f"{args.prompts} prompts x {args.group} = {args.prompts * args.group} completions, <= {args.new_tokens} "
              f"new tokens, T={args.temperature}, beta={args.beta}; {args.threads} threads; training in {args.dtype}; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        results = {}
        if args.only in (None, "trl"):
            results["trl"] = time_trl(policy, records, grader, args, work / "trl")
        if args.only in (None, "ours"):
            results["ours"] = time_ours(policy, gsm8k, records, grader, args, work / "ours")
    import trl

    names = {"trl": f"TRL {trl.__version__} GRPOTrainer", "ours": "echochamber GRPO"}
    for side, result in results.items():
        per_step = statistics.median(result["seconds"])
        steps = ", ".join(f"{s:.2f}" for s in result["seconds"])
        split = "".join(f", {k.removeprefix('time_')} {v:.2f}" for k, v in result.get("split", {}).items())
        print(f"{names[side]:28s} {per_step:6.2f} s/step (median of {len(result['seconds'])}: {steps}{split}; "
              f"mean completion {result['mean_length']:.0f} tokens; whole call incl. setup and warm-up "
              f"{result['wall']:.2f} s/step)")  # fmt: skip
    if len(results) == 2:
        ratio = statistics.median(results["trl"]["seconds"]) / statistics.median(results["ours"]["seconds"])
        print(f"speed-up (TRL s/step / ours): {ratio:.1f}x (goal >= 4x)")
    if "ours" in results:
        peer = statistics.median(results["trl"]["seconds"]) if "trl" in results else None
        phase_table(model, results["ours"], args, peer)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
