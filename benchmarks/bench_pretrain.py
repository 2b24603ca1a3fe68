"""Pretraining throughput next to a plain training loop and the dense-matmul ceiling of these cores.

    python benchmarks/bench_pretrain.py                          # tiny and small, seq 256, batch 16
    python benchmarks/bench_pretrain.py --presets small --threads 1 --steps 10

For each preset, three numbers over the same model shape, batch and sequence length:
- echochamber: `run_pretrain` end to end (data sampling, AdamW, clipping, schedule, logging),
  tokens/s from its own per-step timings after --warmup steps;
- plain loop: the same HF model and batch, `model(input_ids, labels).loss.backward()`, default AdamW
  step, nothing else;
- matmul: the forward and both backward matmuls of every linear layer of the model at the same
  number of tokens, back to back — the practical ceiling for these layer shapes on this CPU.
GFLOP/s of the two training loops is tokens/s × `flops_per_token` (6·N + attention).
Each --dtypes entry is one row per preset: "float32", and "auto" (bfloat16 autocast on CPUs with
AMX/AVX512-BF16, model/precision.py; skipped where it resolves to float32). In a bfloat16 row the
plain loop runs under the same autocast and the matmul ceiling is measured in bfloat16.
The three are measured in turn for --rounds rounds (the matmuls after each loop) and the best of each
is kept, so a burst of load from other processes on a shared machine does not land on one side only.
Both loops run with glibc's large tensors kept in its heap, as `run_pretrain` sets it (allocator.py).
`--compile` adds a column for `run_pretrain` with `compile: true` (compilation happens in the untimed
warm-up steps).
The data is random tokens over a 4k vocabulary (speed does not depend on what is learned).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import gemm_ceiling

from echochamber.allocator import keep_large_tensors
from echochamber.config import load_config
from echochamber.model.precision import resolve_dtype
from echochamber.model.presets import build_model, count_parameters, flops_per_token
from echochamber.pretrain.config import PretrainConfig
from echochamber.pretrain.loop import run_pretrain
from echochamber.runlog import read_metrics

VOCAB = 4096


def write_random_shards(folder: Path, tokens: int, seed: int = 0) -> Path:
    """Shards in the mixture stage's layout: random tokens, one validation source, a real tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    (folder / "val").mkdir(parents=True)
    rng.integers(0, VOCAB - 2, tokens, dtype=np.uint16).tofile(folder / "train.bin")
    rng.integers(0, VOCAB - 2, 4096, dtype=np.uint16).tofile(folder / "val" / "random.bin")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(["benchmark text"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tokenizer.save_pretrained(folder / "tokenizer")
    manifest = {
        "dtype": "uint16", "vocab_size": VOCAB, "eos_token_id": VOCAB - 2, "pad_token_id": VOCAB - 1,
        "train_tokens": tokens, "tokenizer_hash": "bench", "spec_hash": "bench", "seed": seed,
        "sources": {"random": {"documents": 1, "tokens": tokens, "repeat": 1.0, "val_documents": 1,
                               "val_tokens": 4096}},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def bench_echochamber(
    shards: Path, out: Path, preset: str, seq_len: int, batch: int, warmup: int, steps: int, compile: bool = False,
    dtype: str = "float32",
) -> float:
    config = load_config(
        PretrainConfig,
        base=dict(
            shards=str(shards), out=str(out), model=preset, seq_len=seq_len, batch_size=batch,
            micro_batch_size=batch, max_steps=warmup + steps, warmup_steps=warmup, eval_every=10**9,
            eval_batches=1, checkpoint_every=10**9, keep_checkpoints=1, tensorboard=False, progress=False,
            compile=compile, dtype=dtype,
        ),
    )  # fmt: skip
    run_pretrain(config)
    timed = read_metrics(out / "metrics.jsonl", "pretrain")[warmup:]
    seconds = sum(batch * seq_len / row["tokens_per_s"] for row in timed)
    return len(timed) * batch * seq_len / seconds


def bench_plain_loop(
    preset: str, tokens: np.ndarray, seq_len: int, batch: int, warmup: int, steps: int, dtype: str = "float32"
) -> float:
    model = build_model(preset, VOCAB, max_seq_len=max(seq_len, 256))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    elapsed = 0.0
    for step in range(warmup + steps):
        starts = rng.integers(0, len(tokens) - seq_len, batch)
        ids = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            elapsed += time.perf_counter() - started
    return steps * batch * seq_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (one micro-batch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--rounds", type=int, default=2, help="measure each side this often, keep the best")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time run_pretrain with torch.compile")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"], choices=["float32", "auto", "bfloat16"],
                        help="one row per dtype (auto: skipped where it resolves to float32)")
    args = parser.parse_args()
    # As run_pretrain sets it, for both sides from the start: the order of the sides must not matter.
    keep_large_tensors()
    dtypes = list(dict.fromkeys(resolve_dtype(d, torch.device("cpu")) for d in args.dtypes))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; seq_len {args.seq_len}, batch {args.batch}, "
          f"{args.steps} timed steps, best of {args.rounds} rounds")  # fmt: skip
    columns = ["echochamber", "plain loop"] + (["compiled"] if args.compile else [])
    print(f"{'preset':<7}{'params':>9}{'dtype':>10}" + "".join(f"{name:>20}" for name in columns) + f"{'matmul':>9}"
          f"{'ours/plain':>12}{'ours/matmul':>13}")  # fmt: skip
    print(" " * 26 + f"{'tok/s':>10}{'GFLOP/s':>10}" * len(columns) + f"{'GFLOP/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        stream_tokens = args.batch * (args.seq_len + 1) * (args.warmup + args.steps) * 2
        shards = write_random_shards(Path(tmp) / "shards", stream_tokens)
        tokens = np.fromfile(shards / "train.bin", dtype=np.uint16)
        for preset in args.presets:
            model = build_model(preset, VOCAB, max_seq_len=max(args.seq_len, 256))
            flops = flops_per_token(model, args.seq_len)
            for dtype in dtypes:
                ours = plain = ceiling = 0.0
                for round_ in range(args.rounds):
                    out = Path(tmp) / f"{preset}-{dtype}-{round_}"
                    # Alternate which loop goes first, so neither always runs right after the other.
                    for side in ("ours", "plain") if round_ % 2 == 0 else ("plain", "ours"):
                        if side == "ours":
                            ours = max(ours, bench_echochamber(shards, out, preset, args.seq_len, args.batch,
                                                               args.warmup, args.steps, dtype=dtype))  # fmt: skip
                        else:
                            plain = max(plain, bench_plain_loop(preset, tokens, args.seq_len, args.batch,
                                                                args.warmup, args.steps, dtype))  # fmt: skip
                        # The ceiling after each side, as many passes as a side has timed steps: on a shared
                        # machine one short measurement a round moved it by half (docs/performance.md).
                        ceiling = max(ceiling, gemm_ceiling(model, args.batch * args.seq_len,
                                                             repeats=args.steps, dtype=dtype))  # fmt: skip
                rates = [ours, plain]
                if args.compile:
                    out = Path(tmp) / f"{preset}-{dtype}-compiled"
                    rates.append(bench_echochamber(shards, out, preset, args.seq_len, args.batch, args.warmup + 2,
                                                   args.steps, compile=True, dtype=dtype))  # fmt: skip
                print(f"{preset:<7}{count_parameters(model) / 1e6:>8.2f}M{dtype:>10}"
                      + "".join(f"{rate:>10.0f}{rate * flops / 1e9:>10.1f}" for rate in rates)
                      + f"{ceiling:>9.1f}{ours / plain:>12.2f}{ours * flops / 1e9 / ceiling:>13.0%}"
                      f"   (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.1f} (the machine is shared; numbers move with load)")


if __name__ == "__main__":
    main()
