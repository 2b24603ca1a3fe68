"""The `echochamber` command: one subcommand per pipeline stage.

Each handler imports its stage lazily so `echochamber --help` stays instant and a stage's heavy
dependencies (torch, transformers) load only when that stage runs. A `UserError` anywhere becomes
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from echochamber import __version__
from echochamber.errors import UserError

_SHARDS_HELP = (
    "the study run (or shards folder) the model was pretrained on: generations then carry their "
    "provenance (which pretraining documents and sources they echo)"
)


def _cmd_data_world(args: argparse.Namespace) -> int:
    from echochamber.config import load_config
    from echochamber.data.world import WorldConfig, write_world

    overrides = list(args.set)
    if args.n is not None:
        overrides.append(f"n_pretrain={args.n}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = load_config(WorldConfig, args.config, overrides)
    manifest = write_world(config, Path(args.out))
    counts = ", ".join(f"{split}={n}" for split, n in manifest["counts"].items())
    print(f"wrote world to {args.out} ({counts})")
    return 0


def _cmd_data_mixture(args: argparse.Namespace) -> int:
    from echochamber.data.mixture import build_from_spec
    from echochamber.data.shards import describe_manifest

    manifest = build_from_spec(args.spec, Path(args.out), list(args.set))
    print(f"wrote mixture to {args.out}\n{describe_manifest(manifest)}")
    return 0


def _cmd_grade(args: argparse.Namespace) -> int:
    from echochamber.formats.registry import load_registry
    from echochamber.verify.grade import grade_file

    formats = load_registry(args.formats) if args.formats else None
    out = Path(args.out) if args.out else None
    summary = grade_file(Path(args.input), out, workers=args.workers, formats=formats)
    print(summary.render())
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from echochamber.provenance.files import trace_file

    n = {} if args.n is None else {"n": args.n}  # else the library's default (docs/provenance.md)
    report = trace_file(Path(args.run_dir), Path(args.input), Path(args.out) if args.out else None, **n)
    print(report.render(), file=sys.stderr if args.out is None else sys.stdout)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from echochamber.config import load_config
    from echochamber.pretrain.config import PretrainConfig

    config = load_config(PretrainConfig, args.config, list(args.set))
    from echochamber.pretrain.loop import run_pretrain  # after the config, as in _cmd_rl

    final = run_pretrain(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        print(f"pretrained model written to {final}")
    return 0


def _tracer(shards: str | None) -> Any:
    """`--shards`: the index of the shards a model was pretrained on (built on first use), or None."""
    if shards is None:
        return None
    from echochamber.provenance.tracer import Tracer

    return Tracer.for_path(Path(shards), say=lambda text: print(text, file=sys.stderr, flush=True))


def _cmd_rl(args: argparse.Namespace) -> int:
    from echochamber.rl.config import load_rl_config

    config = load_rl_config(args.config, list(args.set))
    # After the config: a config error costs no torch import (~8 s on a 2-core Zen 3).
    from echochamber.rl.core import run_rl

    tracer = _tracer(args.shards) if os.environ.get("RANK", "0") == "0" else None  # rank 0 traces alone
    final = run_rl(config, algo=args.algo, resume=args.resume, tracer=tracer)
    print(f"RL policy written to {final}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if args.markdown:
        from echochamber.report.markdown import markdown_report

        index, text = markdown_report(Path(args.dir), out)
        print(f"wrote {index}", file=sys.stderr)
        print(text, end="")
        return 0
    from echochamber.report.page import build_report

    print(f"wrote {build_report(Path(args.dir), out)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from echochamber.config import load_config
    from echochamber.eval.config import EvalConfig

    flags = {
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "limit": args.limit,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "backend": args.backend,
    }
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.no_greedy:
        overrides.append("greedy=false")
    config = load_config(EvalConfig, args.config, overrides + list(args.set))
    if args.benchmark is not None:
        config.benchmarks = [args.benchmark]
    if args.data is not None:
        config.data = args.data  # a path verbatim, not parsed as YAML
    if args.out is not None and len(config.benchmarks) > 1:
        raise UserError("--out is one evaluation's folder: name one --benchmark (or leave --out out: CKPT/eval/NAME)")
    evaluations = [config.evaluation(benchmark) for benchmark in config.benchmarks]  # all checked first
    from echochamber import dist  # after the config, as in _cmd_rl
    from echochamber.eval.suite import render_summary, run_eval

    process = dist.init()  # under torchrun the ranks split each evaluation's prompts; rank 0 writes
    try:
        tracer = _tracer(args.shards) if process.rank == 0 else None
        if tracer is None and process.rank == 0:
            print("echochamber: eval: provenance not measured (no --shards RUN_OR_SHARDS_DIR given)", file=sys.stderr)
        for evaluation in evaluations:
            results = run_eval(Path(args.ckpt), evaluation, Path(args.out) if args.out else None, tracer=tracer)
            if process.rank == 0:
                print(render_summary(results))
    finally:
        dist.leave(process)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from echochamber.study.config import DEFAULT_PRESET, load_study

    study = load_study(args.config, args.preset, list(args.set))
    from echochamber.study.pipeline import default_run_dir, plan, run_study  # after the config, as in _cmd_rl

    out = Path(args.out) if args.out else default_run_dir(args.config, args.preset)
    if args.procs != 1:
        if args.procs < 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("--procs N (N >= 1) starts its own ranks; under torchrun leave it out")
        from echochamber.launch import launch

        plan(study, out, resume=args.resume)  # a run it would refuse fails here, once, before any rank starts
        options = [*(["--preset", args.preset] if args.preset else []), "--out", str(out),
                   *(["--resume"] if args.resume else []), *(f"--set={item}" for item in args.set)]  # fmt: skip
        return launch(main, ["run", *([args.config] if args.config else []), *options], args.procs)
    index = run_study(study, out, preset=args.preset or args.config or DEFAULT_PRESET, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one line for the whole job under --procs or torchrun
        print(f"study finished: {index}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from echochamber.study import sweep

    out = Path(args.out) if args.out else None
    if args.emit:
        print(f"wrote {sweep.emit(args.sweep, out, args.emit, list(args.set))}")
        return 0
    print(f"sweep finished: {sweep.run_sweep(args.sweep, out, jobs=args.jobs, overrides=list(args.set))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echochamber",
        description="Pretrain small LMs on a declared math mixture, RL-fine-tune them, watch formats move.",
    )
    parser.add_argument("--version", action="version", version=f"echochamber {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    world = data_sub.add_parser("world", help="generate the controlled math world in every format")
    world.add_argument("--out", required=True, help="output folder")
    world.add_argument("--n", type=int, help="number of pretraining-pool problems")
    world.add_argument("--seed", type=int, help="generator seed")
    world.add_argument("--config", help="YAML world config (difficulty, split sizes)")
    world.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    world.set_defaults(func=_cmd_data_world)
    mixture = data_sub.add_parser("mixture", help="tokenize a declared mixture into packed, shuffled shards")
    mixture.add_argument("spec", metavar="SPEC_OR_PRESET", help="mixture YAML file or preset name")
    mixture.add_argument("--out", required=True, help="output folder")
    mixture.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    mixture.set_defaults(func=_cmd_data_mixture)

    grade = sub.add_parser("grade", help="grade completions: jsonl lines with 'completion' and 'gold'")
    grade.add_argument("input", help="input jsonl")
    grade.add_argument("--out", help="output jsonl (each line with format, answer, correct, status)")
    grade.add_argument("--workers", type=int, default=2, help="sandbox worker processes")
    grade.add_argument(
        "--formats", help="formats to track: built-in names (tinygsm,omi1,omi2,metamathqa,gsm8k) or a YAML "
        "file with a study's formats: list (default: tinygsm,omi1,omi2)",
    )  # fmt: skip
    grade.set_defaults(func=_cmd_grade)

    trace = sub.add_parser("trace", help="provenance: which pretraining documents and sources generations echo")
    trace.add_argument("run_dir", metavar="RUN_DIR", help="study run folder (shards in RUN_DIR/shards) or a shards folder")
    trace.add_argument("input", metavar="IN.jsonl", help="jsonl (or .jsonl.gz) lines with 'text' or 'completion'")
    trace.add_argument("--out", help="output jsonl: each line plus a 'provenance' object (default: stdout)")
    trace.add_argument("--n", type=int, help="n-gram length in tokens for source shares and novelty (default 8)")
    trace.set_defaults(func=_cmd_trace)

    pre = sub.add_parser("pretrain", help="pretrain from scratch on built shards (under torchrun: DDP/FSDP2)")
    pre.add_argument("config", help="YAML pretraining config")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pre.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the out folder")
    pre.set_defaults(func=_cmd_pretrain)

    rl = sub.add_parser("rl", help="RL post-training (PPO, GRPO, REINFORCE, Expert Iteration) from an HF checkpoint")
    rl.add_argument("config", help="YAML RL config or a preset name (cpu)")
    rl.add_argument("--algo", required=True, choices=["ppo", "grpo", "reinforce", "ei"])
    rl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    rl.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the out folder")
    rl.add_argument("--shards", metavar="RUN_OR_SHARDS_DIR", help=_SHARDS_HELP)
    rl.set_defaults(func=_cmd_rl)

    ev = sub.add_parser("eval", help="evaluate a Hugging Face causal-LM folder on a benchmark")
    ev.add_argument("ckpt", help="model folder (config, weights, tokenizer)")
    ev.add_argument("--benchmark", help="world-test, world-hard, gsm8k, math500 or aime (default: the config's benchmarks)")
    ev.add_argument("--n", type=int, help="samples per prompt for pass@k / maj@k")
    ev.add_argument("--temperature", type=float)
    ev.add_argument("--top-p", type=float)
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--limit", type=int, help="first N prompts only")
    ev.add_argument("--seed", type=int)
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--backend", choices=["torch", "vllm"])
    ev.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1 pass")
    ev.add_argument("--data", help="real-data folder laid out like shared/data (else $ECHOCHAMBER_DATA)")
    ev.add_argument("--out", help="output folder (default CKPT/eval/BENCHMARK)")
    ev.add_argument("--config", help="YAML eval config")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ev.add_argument("--shards", metavar="RUN_OR_SHARDS_DIR", help=_SHARDS_HELP)
    ev.set_defaults(func=_cmd_eval)

    report = sub.add_parser("report", help="self-contained HTML report (+ PNG figures) of a run or sweep folder")
    report.add_argument("dir", metavar="RUN_OR_SWEEP_DIR", help="run folder (run.json) or sweep folder (sweep.json)")
    report.add_argument("--out", help="output folder (default DIR/report)")
    report.add_argument(
        "--markdown", action="store_true",
        help="also print the findings, per-rung transfer and format-share tables as Markdown (for a README)",
    )  # fmt: skip
    report.set_defaults(func=_cmd_report)
    run = sub.add_parser("run", help="a whole study: data, pretrain, eval, RL, eval, report (default: the quickstart)")
    run.add_argument("config", nargs="?", help="study YAML (default: the quickstart preset)")
    run.add_argument("--preset", help="study preset: quickstart, smoke (with CONFIG: the base it overrides)")
    run.add_argument("--out", help="run folder (default runs/<preset or config name>)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted stage")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study key (rl.grpo.kl_coef=0.01)")
    run.add_argument(
        "--procs", type=int, default=1, metavar="N",
        help="run as N data-parallel ranks on this machine, each with cores/N threads (make quickstart: 2)",
    )  # fmt: skip
    run.set_defaults(func=_cmd_run)

    sweep = sub.add_parser("sweep", help="run a grid of studies and compare them in one report")
    sweep.add_argument("sweep", metavar="SWEEP", help="sweep YAML or preset (paper-cpu)")
    sweep.add_argument("--out", help="sweep folder (default runs/<sweep name>)")
    sweep.add_argument("--jobs", type=int, default=1, help="cells at once, each in its own process")
    sweep.add_argument("--emit", choices=["slurm", "torchrun"], help="write the cells as cluster commands instead of running them")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key (seeds=[0])")
    sweep.set_defaults(func=_cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"echochamber: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("echochamber: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `echochamber grade ... | head` closed our stdout: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
