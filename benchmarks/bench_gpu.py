"""The GPU paths at paper scale, each next to its plain baseline in one run (needs a CUDA GPU).

    python benchmarks/bench_gpu.py                   # 150m: pretraining and sampling
    python benchmarks/bench_gpu.py --preset 1b --batch 8

Pretraining: `run_pretrain` (bf16 autocast, eager and torch.compile) next to a plain loop over the
same HF model (`model(ids, labels).loss.backward()` under bf16 autocast, fused AdamW): tokens/s and
model FLOP utilisation against the GPU's dense bf16 peak (--peak-tflops, H100 SXM: 989).
Sampling: our sampler next to HF `generate` with the same model, prompts, batch and lengths
(T=0.7, top-p 0.95, EOS ignored so both produce exactly --new-tokens), in float32 and bfloat16.
The data is random tokens over a 4k vocabulary, as in bench_pretrain.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_pretrain import VOCAB, bench_echochamber, write_random_shards
from bench_sampler import time_hf, time_ours

from echochamber.data.tokenizer import train_bpe
from echochamber.model.presets import build_model, count_parameters, flops_per_token
from echochamber.model.sampling_params import SamplingParams


def plain_loop(preset: str, tokens: np.ndarray, seq_len: int, batch: int, warmup: int, steps: int) -> float:
    model = build_model(preset, VOCAB, max_seq_len=seq_len).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    rng = np.random.default_rng(0)
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        starts = rng.integers(0, len(tokens) - seq_len, batch)
        ids = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch * seq_len / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="150m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="sequences per pretraining step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sample-batches", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.preset}, seq_len {args.seq_len}, "
          f"batch {args.batch}, {args.steps} timed steps after {args.warmup}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        stream = args.batch * (args.seq_len + 1) * (args.warmup + args.steps) * 2
        shards = write_random_shards(Path(tmp) / "shards", stream)
        tokens = np.fromfile(shards / "train.bin", dtype=np.uint16)
        flops = flops_per_token(build_model(args.preset, VOCAB, max_seq_len=args.seq_len), args.seq_len)
        rows = {
            "plain loop (bf16 autocast)": plain_loop(args.preset, tokens, args.seq_len, args.batch, args.warmup, args.steps),
        }
        for compiled in (False, True):
            name = f"echochamber bf16{' + compile' if compiled else ''}"
            rows[name] = bench_echochamber(shards, Path(tmp) / name.replace(" ", "_"), args.preset, args.seq_len,
                                           args.batch, args.warmup, args.steps, compile=compiled, dtype="bfloat16")  # fmt: skip
        print(f"\npretraining{'':<26}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'vs plain':>9}")
        plain = rows["plain loop (bf16 autocast)"]
        for name, rate in rows.items():
            tflops = rate * flops / 1e12
            print(f"  {name:<34}{rate:>10.0f}{tflops:>9.1f}{tflops / args.peak_tflops:>7.1%}{rate / plain:>8.2f}x")

    questions = [f"Question {i}: a farmer has {i % 17 + 2} cows and buys {i % 5 + 1} more. How many now?"
                 for i in range(max(args.sample_batches))]  # fmt: skip
    tokenizer = train_bpe((q + "\n\n" for q in questions), VOCAB)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.new_tokens, ignore_eos=True)
    print(f"\nsampling {args.new_tokens} new tokens{'':<8}{'batch':>6}{'ours tok/s':>12}{'HF tok/s':>10}{'ratio':>7}")
    for dtype in (torch.float32, torch.bfloat16):
        model = build_model(args.preset, len(tokenizer), max_seq_len=args.seq_len, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id).to("cuda", dtype).eval()  # fmt: skip
        for batch in args.sample_batches:
            prompts = [q + "\n\n" for q in questions[:batch]]
            time_ours(model, tokenizer, prompts[:8], 8, params)  # warm-up (CUDA context, kernels)
            ours = min((time_ours(model, tokenizer, prompts, batch, params) for _ in range(2)), key=lambda t: t.wall)
            hf = min((time_hf(model, tokenizer, prompts, params) for _ in range(2)), key=lambda t: t.wall)
            produced = batch * args.new_tokens
            print(f"  {args.preset} {str(dtype).removeprefix('torch.'):<22}{batch:>6}{produced / ours.wall:>12.0f}"
                  f"{produced / hf.wall:>10.0f}{hf.wall / ours.wall:>6.1f}x", flush=True)
    print(f"parameters: {count_parameters(model) / 1e6:.1f}M; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
