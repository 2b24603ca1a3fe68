"""Sampler throughput next to HF `generate`: same model, prompts, batch, lengths and sampling settings.

    python benchmarks/bench_sampler.py                      # tiny and small, batch 128 and 512
    python benchmarks/bench_sampler.py --presets tiny --batches 128 --new-tokens 64 --repeats 3
    python benchmarks/bench_sampler.py --batches 128 --threads 1 --profile   # + where our time goes

Models are random-initialised presets over a 4k byte-level BPE trained on GSM8K text (prompts are
GSM8K train questions + "\\n\\n"). Both sides generate exactly --new-tokens tokens per row (EOS
ignored), at T=0.7 and top-p 0.95 by default, so tokens/s compare like with like. A random model's
next-token distribution is nearly flat, so top-p keeps ~90 % of the vocabulary: the worst case for
top-p filtering on both sides. Like HF `generate` (no `output_scores`), ours returns no log-probs
by default, as when an evaluation samples; --logprobs times it returning each token's log-prob under
the filtered distribution, as RL's rollouts do. On a shared, oversubscribed machine pass --threads 1
(OpenMP barriers waiting on descheduled threads slow both sides several-fold) and read the CPU-time
ratio too. Both sides run with glibc's large tensors kept in its heap (allocator.py), as our sampler
sets it for its whole process; HF's cache, grown by concatenation every step, gains from it.

"limit tok/s" is the same generation with its matmuls at the best GEMM rate of these cores and its
KV cache read at their read bandwidth, both measured in the same run, and everything else free
(limits.py): no float32 implementation of this arithmetic with torch's GEMM is faster here, so
"limit/HF" is the largest ratio to HF `generate` this CPU allows it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from limits import gemm_ceiling, read_bandwidth, sampling_limit_seconds, square_gemm_rate

from echochamber.allocator import keep_large_tensors
from echochamber.data.paths import data_dir
from echochamber.data.tokenizer import train_bpe
from echochamber.model.presets import build_model, count_parameters, spec_of
from echochamber.model.sampler import build_sampler
from echochamber.model.sampling_params import SamplingParams


def gsm8k_questions() -> list[str]:
    folder = data_dir()
    if folder is None:
        raise SystemExit("needs the real data folder (shared/data) for GSM8K prompts")
    with open(folder / "gsm8k" / "train.jsonl") as handle:
        return [json.loads(line)["question"] for line in handle]


class Timer:
    """Wall time and this process's CPU time: on a shared machine the CPU time is the steadier one."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_ours(model, tokenizer, prompts: list[str], batch: int, params: SamplingParams) -> Timer:
    sampler = build_sampler(model, tokenizer, batch_size=batch)
    ids = [str(i) for i in range(len(prompts))]
    with Timer() as timer:
        samples = sampler.generate(prompts, ids, 1, params)
    assert all(len(row[0].token_ids) == params.max_new_tokens for row in samples)
    return timer


def time_hf(model, tokenizer, prompts: list[str], params: SamplingParams) -> Timer:
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(model.device)
    with Timer() as timer, torch.inference_mode():
        out = model.generate(
            **encoded,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=None,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        ).cpu()  # waits for the GPU, when there is one
    assert out.shape[1] - encoded.input_ids.shape[1] == params.max_new_tokens
    return timer


def limit_seconds(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    """The generation at the machine's limits, measured now (limits.py): its matmuls at the best GEMM
    rate measured (the layers at the prefill's or the decoding's rows, or a large square product), the
    KV cache at the read bandwidth, the rest free."""
    prompt = sum(len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts) / len(prompts)
    return sampling_limit_seconds(
        spec_of(model), model.config.vocab_size, prompt_tokens=prompt, rows=len(prompts), new_tokens=new_tokens,
        prefill_rows=len(prompts), read_gbs=read_bandwidth(),
        gemm_gflops=max(gemm_ceiling(model, int(prompt * len(prompts)), repeats=3), gemm_ceiling(model, len(prompts), repeats=20),
                        square_gemm_rate()),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest counts")
    parser.add_argument("--logprobs", action="store_true", help="ours also returns each token's log-prob (as RL)")
    parser.add_argument("--profile", action="store_true", help="then profile one more run of ours: top ops by self time")
    args = parser.parse_args()
    # As our sampler sets it, for both sides from the start: the order of the sides must not matter.
    keep_large_tensors()
    torch.set_num_threads(args.threads)

    questions = gsm8k_questions()
    tokenizer = train_bpe((q + "\n\n" for q in questions), args.vocab)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.new_tokens, ignore_eos=True,
        logprobs=args.logprobs,
    )
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}, "
          f"vocab {len(tokenizer)}, T={params.temperature}, top-p {params.top_p}, {params.max_new_tokens} new tokens, "
          f"ours {'with' if params.logprobs else 'without'} log-probs")
    print(f"{'preset':>6} {'params':>8} {'batch':>5} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>6} "
          f"{'CPU-time ratio':>14} {'limit tok/s':>12} {'limit/HF':>9} {'load':>5}")
    for preset in args.presets:
        model = build_model(preset, len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id).eval()
        for batch in args.batches:
            prompts = [q + "\n\n" for q in questions[:batch]]
            # Alternate the two and keep each side's fastest run: other jobs on a shared machine
            # only ever slow a run down.
            runs = [(time_ours(model, tokenizer, prompts, batch, params), time_hf(model, tokenizer, prompts, params))
                    for _ in range(args.repeats)]
            ours = min((run[0] for run in runs), key=lambda timer: timer.wall)
            hf = min((run[1] for run in runs), key=lambda timer: timer.wall)
            tokens = batch * params.max_new_tokens
            limit = tokens / limit_seconds(model, tokenizer, prompts, params.max_new_tokens)
            print(f"{preset:>6} {count_parameters(model) / 1e6:>7.2f}M {batch:>5} {tokens / ours.wall:>11.0f} "
                  f"{tokens / hf.wall:>9.0f} {hf.wall / ours.wall:>5.1f}x {hf.cpu / ours.cpu:>13.1f}x "
                  f"{limit:>12.0f} {limit * hf.wall / tokens:>8.1f}x {os.getloadavg()[0]:>5.1f}", flush=True)
            if args.profile:
                with torch.profiler.profile() as profiler:
                    time_ours(model, tokenizer, prompts, batch, params)
                print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    main()
