"""RL rollouts on a GPU: HF `generate`, our eager sampler and the colocated vLLM engine, then one GRPO
step with each rollout backend (needs a CUDA GPU; the vLLM rows need `pip install 'echochamber[vllm]'`).

    python benchmarks/bench_gpu_rollouts.py                          # 150m, 64 prompts x 8 samples
    python benchmarks/bench_gpu_rollouts.py --preset 1b --prompts 16 --new-tokens 128

Throughput: the three samplers draw the paper's rollout shape (--prompts x --samples, T=0.7, no top-p,
EOS ignored so every row has exactly --new-tokens tokens) from one random-initialised model over a
32k vocabulary (the paper's Llama-2 size: a BPE trained on world text, padded with filler tokens), in
float32 (what RL samples: the policy's weights stay float32) and bfloat16. The goal of issue 13 is vLLM
>= 3x HF `generate` at 150m.
GRPO step: `run_rl` with rollout.backend torch, then vllm (vllm.dtype auto, i.e. float32, and
bfloat16) and a float32 trainer (rl.dtype), one step of --prompts x --samples on the world's RL split
from the same random 150m policy: the metrics line's timing split, rollout tokens/s, the time to push the weights into the engine, and
the vLLM-vs-trainer log-prob gap (mean/max |Δ| per token), for two steps (the second samples the
weights pushed after the first update). What only a GPU shows is checked on the way: vLLM accepts the
colocated settings and the weight push, a stopped vLLM sample ends in its EOS with a log-prob (the
sampler raises otherwise), and the float32 engine's gap is float error (printed as CHECK lines).
Prints one table per part; paste them into the closing note of issue 13. `--device cpu` with a tiny
preset runs the same code without a GPU (tests/test_bench_gpu_rollouts.py does, with a stand-in vllm).

Every vLLM engine, and every GRPO run, lives in a child process of its own (this script with
`--part`): a colocated engine runs in the process that built it, and vLLM does not give its GPU memory
back when it is deleted (vllm-project/vllm#21073), so a second engine in one process would run out of
memory. A child that fails is reported in its row ("failed", its error above the table on stderr) and
the script goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_sampler import Timer, time_hf

from echochamber.config import load_config
from echochamber.data.tokenizer import PROMPT_SEPARATOR, encode_prompt, pad_token_id, train_bpe
from echochamber.data.world import WorldConfig, world_records
from echochamber.model.presets import build_model
from echochamber.model.sampler import build_sampler
from echochamber.model.sampling_params import SamplingParams
from echochamber.rl.config import RLConfig
from echochamber.rl.core import run_rl
from echochamber.runlog import read_metrics

VOCAB = 32000  # the paper's Llama-2 tokenizer size
DEVICE = "cuda"


def vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_policy(folder: Path, preset: str, context: int) -> Path:
    """A random `preset` model over a 32k vocabulary, saved with its tokenizer as an HF folder."""
    records = world_records(WorldConfig(), "pretrain", "omi2")
    tokenizer = train_bpe(
        [piece for r in records for piece in (r.prompt + PROMPT_SEPARATOR, r.solution)], 8000
    )
    tokenizer.add_tokens([f"<filler_{i}>" for i in range(VOCAB - len(tokenizer))])
    model = build_model(preset, len(tokenizer), max_seq_len=context, seed=0,
                        pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def throughput(policy: Path, prompts: int, samples: int, new_tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    questions = [r.prompt for r in world_records(WorldConfig(), "rl", "omi2")[:prompts]]
    ids = [str(i) for i in range(len(questions))]
    token_ids = [encode_prompt(tokenizer, q) for q in questions]
    texts = [tokenizer.decode(t) for t in token_ids]
    params = SamplingParams(temperature=0.7, max_new_tokens=new_tokens, ignore_eos=True)
    produced = len(questions) * samples * new_tokens
    has_vllm = vllm_installed()
    print(f"\nrollout throughput: {len(questions)} prompts x {samples} samples x {new_tokens} tokens "
          f"(T=0.7, no top-p, EOS ignored), tokens/s")  # fmt: skip
    print(
        f"  {'dtype':<10}{'HF generate':>13}{'ours (eager)':>14}{'vLLM':>10}{'vLLM/HF':>9}{'vLLM/ours':>11}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(policy, dtype=dtype).to(DEVICE).eval()
        sampler = build_sampler(model, tokenizer, batch_size=len(questions) * samples)
        sampler.generate_tokens(token_ids[:4], ids[:4], 2, SamplingParams(0.7, max_new_tokens=8))  # warm-up
        with Timer() as ours:
            rows = sampler.generate_tokens(token_ids, ids, samples, params)
        assert all(len(s.token_ids) == new_tokens for row in rows for s in row)
        hf = time_hf(model, tokenizer, [t for t in texts for _ in range(samples)], params)
        del model, sampler
        if DEVICE == "cuda":
            torch.cuda.empty_cache()  # the child's engine asks for half of the GPU's memory
        name = str(dtype).removeprefix("torch.")
        rates = (produced / hf.wall, produced / ours.wall)
        if not has_vllm:
            vllm_cells = f"{'(no vllm)':>10}{'—':>9}{'—':>11}"
        else:
            child = in_child("vllm-rate", policy, prompts, samples, new_tokens, dtype=name, capture=True)
            vllm_rate = json.loads(child.stdout.strip().splitlines()[-1])["tokens_per_s"] if child.returncode == 0 else None
            vllm_cells = (f"{vllm_rate:>10.0f}{vllm_rate / rates[0]:>8.1f}x{vllm_rate / rates[1]:>10.1f}x"
                          if vllm_rate else f"{'failed':>10}{'—':>9}{'—':>11}")  # fmt: skip
        print(f"  {name:<10}{rates[0]:>13.0f}{rates[1]:>14.0f}{vllm_cells}", flush=True)


def vllm_rate(policy: Path, prompts: int, samples: int, new_tokens: int, dtype: str) -> float:
    """(In a child process.) Rollout tokens/s of a colocated engine over `policy` in `dtype`."""
    from transformers import AutoTokenizer

    from echochamber.model.sampler_vllm import build_vllm_sampler

    tokenizer = AutoTokenizer.from_pretrained(policy)
    token_ids = [encode_prompt(tokenizer, r.prompt) for r in world_records(WorldConfig(), "rl", "omi2")[:prompts]]
    ids = [str(i) for i in range(len(token_ids))]
    engine = build_vllm_sampler(str(policy), tokenizer, False, dtype=dtype, colocate_memory=0.5)
    engine.generate_tokens(token_ids[:4], ids[:4], 2, SamplingParams(0.7, max_new_tokens=8))  # warm-up
    params = SamplingParams(temperature=0.7, max_new_tokens=new_tokens, ignore_eos=True)
    with Timer() as timed:
        rows = engine.generate_tokens(token_ids, ids, samples, params)
    assert all(len(s.token_ids) == new_tokens for row in rows for s in row)
    return len(token_ids) * samples * new_tokens / timed.wall


def in_child(
    part: str, policy: Path, prompts: int, samples: int, new_tokens: int, *, dtype: str, backend: str = "",
    out: Path | None = None, capture: bool = False,
) -> subprocess.CompletedProcess:  # fmt: skip
    """This script run as one `part` in a child process (its stderr shown; its stdout returned
    when `capture`): the engine it builds, and its GPU memory, go when the child exits."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--policy", str(policy),
            "--device", DEVICE, "--prompts", str(prompts), "--samples", str(samples),
            "--new-tokens", str(new_tokens), "--dtype", dtype, "--backend", backend, "--out", str(out or "")]  # fmt: skip
    child = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, text=True)
    if child.returncode != 0:
        print(f"  ({part} {backend} {dtype} failed with exit code {child.returncode}: see stderr)", flush=True)
    return child


def grpo_steps(policy: Path, out: Path, prompts: int, samples: int, new_tokens: int) -> None:
    runs = [("torch", "auto")]
    if vllm_installed():
        runs += [("vllm", "auto"), ("vllm", "bfloat16")]
    else:
        print("\n(vllm is not installed: the GRPO step runs with the torch backend only)")
    print(f"\none GRPO step: {prompts} prompts x {samples} samples, <= {new_tokens} new tokens, seconds")
    print(
        f"  {'backend':<16}{'generate':>9}{'reward':>8}{'reference':>10}{'update':>8}{'sync':>7}{'step':>7}"
        f"{'gen tok/s':>10}{'gap mean':>10}{'gap max':>9}"
    )
    for backend, dtype in runs:
        if in_child("grpo", policy, prompts, samples, new_tokens, dtype=dtype, backend=backend, out=out).returncode:
            print(f"  {backend + ' ' + dtype:<16}failed", flush=True)
            continue
        for line in read_metrics(out / f"{backend}-{dtype}" / "metrics.jsonl", "rl"):
            times = [
                line[k]
                for k in ("time_generate", "time_reward", "time_reference", "time_update", "time_sync")
            ]
            gap = [line.get("logprob_gap_mean"), line.get("logprob_gap_max")]
            gaps = "".join(f"{g:>10.2e}" if g is not None else f"{'—':>10}" for g in gap)
            print(f"  {backend + ' ' + dtype + ' #' + str(line['step']):<16}" + "".join(f"{t:>8.1f}" for t in times)
                  + f"{sum(times):>8.1f}{line['generate_tokens_per_s']:>10.0f}{gaps}", flush=True)  # fmt: skip
        if backend == "vllm" and dtype == "auto":  # its last step: the weights pushed after an update
            agree = line["logprob_gap_max"] < 1e-3
            print(
                f"  CHECK float32 engine vs float32 trainer, max |Δ log p| < 1e-3: {'yes' if agree else 'NO'}"
            )


def grpo_run(policy: Path, out: Path, prompts: int, samples: int, new_tokens: int, backend: str, dtype: str) -> None:
    """(In a child process.) Two GRPO steps from `policy` with one rollout backend, into out/BACKEND-DTYPE."""
    config = load_config(RLConfig, base={
        "policy": str(policy), "out": str(out / f"{backend}-{dtype}"),
        "rollout": {"prompts_per_step": prompts, "samples_per_prompt": samples, "max_new_tokens": new_tokens,
                    "backend": backend, "vllm": {"dtype": dtype, "memory": 0.3}, "batch_size": prompts * samples},
        "eval_every": 0, "max_steps": 2, "micro_batch_size": 16, "tensorboard": False, "progress": False,
        "dtype": "float32",  # a float32 trainer: the gap rows then are the engine's alone (rl.dtype auto is bf16 on a GPU)
    })  # fmt: skip
    run_rl(config, algo="grpo")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="150m")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step (the paper: 64)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (the paper: 8)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--skip-step", action="store_true", help="throughput only")
    parser.add_argument(
        "--device", default="cuda", help="cpu: run the code path without a GPU (numbers meaningless)"
    )
    # One part in a child process (see the module's docstring); set by the script itself.
    parser.add_argument("--part", choices=["vllm-rate", "grpo"], help=argparse.SUPPRESS)
    for hidden in ("--policy", "--dtype", "--backend", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu_rollouts.py needs a CUDA GPU")
    if args.part == "vllm-rate":
        rate = vllm_rate(Path(args.policy), args.prompts, args.samples, args.new_tokens, args.dtype)
        print(json.dumps({"tokens_per_s": rate}))
        return
    if args.part == "grpo":
        grpo_run(Path(args.policy), Path(args.out), args.prompts, args.samples, args.new_tokens, args.backend, args.dtype)
        return
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (code path only)"
    print(f"{name}, torch {torch.__version__}; {args.preset}, context {args.context}")
    with tempfile.TemporaryDirectory() as tmp:
        policy = make_policy(Path(tmp) / "policy", args.preset, args.context)
        config = json.loads((policy / "config.json").read_text())
        print(f"policy: {args.preset} ({config['num_hidden_layers']} layers), vocab {config['vocab_size']}")
        throughput(policy, args.prompts, args.samples, args.new_tokens)
        if not args.skip_step:
            grpo_steps(policy, Path(tmp) / "rl", args.prompts, args.samples, args.new_tokens)
    if DEVICE == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
