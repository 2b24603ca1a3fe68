"""The RL stage: rollout -> reward -> reference -> update, with logging, checkpoints and periodic eval.

`run_rl(config, algo=...)` is the whole stage for PPO, GRPO and Expert Iteration: one loop samples,
grades, updates (what differs per algorithm is steps.py's), logs, checkpoints and evaluates. Under
`torchrun --nproc_per_node N` each rank samples and grades its share of a step's prompts, the update
is data-parallel (see rollout.py) and each periodic evaluation splits its prompts over the ranks
(eval/suite.py); rank 0 writes the run folder while the other ranks wait on the long-timeout group
(`dist.wait_for_rank0`: writing a paper-scale checkpoint can outlast the default group's timeout):

    config.yaml              the resolved config (the algorithm is in every metrics line)
    prompts.json             the prompt set's size and what the context check did (eval/context.py)
    metrics.jsonl            one "rl" line per step (reward, formats, KL k1/k2/k3, entropy, lengths,
                             truncation, timing split, the algorithm's diagnostics) + "eval" lines
    tb/                      TensorBoard (W&B when asked for)
    rollouts/step_N.jsonl.gz every graded sample of step N (prompt id, sample index, text, reward, ...)
    eval/step_N/<benchmark>/ the eval suite's folder (prompts, generations, results: eval/store.py)
    checkpoints/step_N/      HF policy folder (+ tokenizer, PPO critic) and trainer_state.pt
    final/                   the last policy as an HF folder

Resume (SIGKILL at any point, then `resume=True`) reproduces the uninterrupted run: the prompts of a
step and every sample's randomness are pure functions of (seed, step), the policy weights and the
optimizer state come from the checkpoint, and metrics/rollouts written after it are replaced.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from echochamber import dist
from echochamber.checkpoint import (
    CHECKPOINTS_DIR,
    ensure_writable,
    gather_rng_states,
    prune_checkpoints,
    resume_point,
    sole_writer,
    write_folder,
)
from echochamber.config import save_config, to_dict
from echochamber.data.tokenizer import load_tokenizer
from echochamber.errors import UserError
from echochamber.eval.context import context_note, fit_prompts
from echochamber.eval.suite import evaluate_benchmark, generation_stats
from echochamber.formats.registry import build_registry
from echochamber.model.precision import resolve_dtype, set_attention
from echochamber.model.presets import checkpoint_context, load_model
from echochamber.provenance.records import check_tokenizer, trace_generations
from echochamber.rl.config import ALGORITHMS, RLConfig
from echochamber.rl.engine import RolloutEngine
from echochamber.rl.losses import KL_ESTIMATORS
from echochamber.rl.rollout import (
    generate_rollouts,
    load_prompts,
    steps_per_epoch,
    write_rollouts,
)
from echochamber.rl.steps import build_steps
from echochamber.runlog import METRICS_FILE, MetricsWriter, truncate_metrics
from echochamber.verify.grade import Grader

if TYPE_CHECKING:
    from echochamber.provenance.tracer import Tracer

STAGE = "rl"
PROMPTS_FILE = "prompts.json"  # the prompt set's size and what the context check did to it
EVAL_STAGE = "eval"
# What a run computes; resuming with any of these changed would splice two different runs. The run
# length (epochs, max_steps), evaluation, logging and memory knobs may change.
RUN_DEFINING_KEYS = (
    "policy", "reference", "prompts", "formats", "rollout", "betas", "weight_decay", "grad_clip", "seed", "dtype",
)  # fmt: skip


def run_rl(
    config: RLConfig,
    *,
    algo: str,
    resume: bool = False,
    grader: Grader | None = None,
    tracer: Tracer | None = None,
) -> Path:
    """Run (or, with `resume`, continue) RL from `config.policy`; returns the final policy folder.

    `grader` lets a caller share a running Grader (its worker pools take seconds to start);
    otherwise one with `rollout.grader_workers` workers lives for the run. `tracer` (rank 0's: the
    index of the shards the policy was pretrained on) traces every step's rollouts and evaluation:
    each rollout row and metrics line then carries its provenance (provenance/records.py).
    """
    if algo not in ALGORITHMS:
        raise UserError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    config.validate()
    process = dist.init()
    try:
        with sole_writer(Path(config.out), process.rank):
            return _Run(config, algo, resume, process.device, tracer).run(grader)
    finally:
        dist.leave(process)


def total_steps(config: RLConfig, algo: str, n_prompts: int) -> int:
    if algo == "ei":
        return config.ei.rounds
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(n_prompts, config.rollout.prompts_per_step)))


def step_metrics(
    rows: list[dict[str, Any]],
    *,
    algo: str,
    truncation: str,
    kl: list[float] | None,
    seconds: dict[str, float],
    diagnostics: dict[str, Any],
    names: tuple[str, ...],
) -> dict[str, Any]:
    """One metrics line from a step's graded samples (all ranks), its KL sums and its diagnostics,
    with a share, accuracy and length for every label of `names` (the run's registry's).

    A format with no samples has accuracy/length None, never 0 (the eval suite's convention).
    """
    stats = generation_stats(rows, names)
    formats = stats["formats"]
    tokens = sum(row["n_tokens"] for row in rows)
    line: dict[str, Any] = {
        "algo": algo,
        "n_samples": len(rows),
        "reward_mean": sum(row["reward"] for row in rows) / len(rows),
        "accuracy": stats["accuracy"],
        "format_share": {name: formats[name]["share"] for name in names},
        "format_accuracy": {name: formats[name]["accuracy"] for name in names},
        "response_length": stats["mean_tokens"],
        "length_by_format": {name: formats[name]["mean_tokens"] for name in names},
        "truncation_rate": stats["truncation_rate"],
        "truncation": truncation,  # the policy: "zero" (reward 0, trained) or "mask" (out of the loss)
        "status_counts": stats["status_counts"],
        # Per-source echo shares and novelty of the step's rollouts (None when not traced).
        "provenance": stats["provenance"],
    }
    for index, name in enumerate(KL_ESTIMATORS):
        line[f"kl_{name}"] = kl[index] / max(kl[-1], 1.0) if kl is not None else None
    step_time = sum(seconds.values())
    line.update(seconds)
    # Response tokens per second of the whole step, and of sampling alone.
    line["tokens_per_s"] = tokens / step_time if step_time > 0 else None
    line["generate_tokens_per_s"] = tokens / seconds["time_generate"] if seconds["time_generate"] > 0 else None
    line.update(diagnostics)
    return line


class _Run:
    """The state of one RL run; `run()` executes it."""

    def __init__(
        self, config: RLConfig, algo: str, resume: bool, device: torch.device, tracer: Tracer | None
    ) -> None:
        # "auto" resolved once, here: config.yaml and every checkpoint record the precision it ran in.
        config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, device))
        self.config, self.algo, self.device, self.tracer = config, algo, device, tracer
        self.out = Path(config.out)
        self.rank0 = dist.rank() == 0
        ensure_writable(self.out, dist.rank())
        self.checkpoint, self.state = resume_point(self.out, resume, STAGE, "an RL run")
        if self.checkpoint is not None:
            _check_resumable(config, algo, self.state, self.checkpoint)
        self.start = self.state["step"] if self.state is not None else 0
        self.resume = resume
        if resume and self.rank0:
            _drop_rollouts_after(self.out / "rollouts", self.start)

        self.tokenizer = load_tokenizer(config.policy)
        self.engine = RolloutEngine(config.rollout, self.tokenizer)  # vllm: checked importable before models load
        if tracer is not None:
            check_tokenizer(tracer, self.tokenizer, config.policy)
        elif self.rank0:
            print(
                "echochamber: rl: provenance not measured (no pretraining shards given; `echochamber rl "
                "... --shards RUN_OR_SHARDS_DIR` traces the rollouts to the documents they echo)",
                file=sys.stderr,
            )
        # The prompt set is checked against the policy's context before any weights are loaded.
        budget = (config.ei.max_new_tokens or config.rollout.max_new_tokens) if algo == "ei" else config.rollout.max_new_tokens
        self.records, self.prompt_context = fit_prompts(
            f"RL prompts ({config.prompts.dataset})", load_prompts(config.prompts), self.tokenizer,
            context=checkpoint_context(config.policy), max_new_tokens=budget, policy=config.prompts.over_context,
            setting="rl.prompts.over_context",
        )  # fmt: skip
        self.policy = set_attention(load_model(self.checkpoint or config.policy).to(device), config.dtype, device)
        self.ref = None  # not loaded where nothing reads it (EI, KL 0: RLConfig.uses_reference)
        if config.uses_reference(algo):
            self.ref = load_model(config.reference or config.policy).to(device).eval().requires_grad_(False)
            set_attention(self.ref, config.dtype, device)
            if self.policy.config.vocab_size != self.ref.config.vocab_size:
                raise UserError(f"policy and reference have different vocabularies ({config.policy}, {config.reference})")
        self.formats = build_registry(config.formats)
        self.total = total_steps(config, algo, len(self.records))

    def run(self, grader: Grader | None) -> Path:
        writers = self._writers()
        try:
            scope = nullcontext(grader) if grader is not None else Grader(workers=self.config.rollout.grader_workers)
            with scope as self.grader:
                if self.start == 0:
                    self._maybe_eval(0, writers)
                self.steps = build_steps(
                    self.algo, self.config, self.policy, self.ref, self.tokenizer, self.records, self.state
                )
                self._run_steps(writers)
        finally:
            for writer in writers.values():
                writer.close()
        final = self.out / "final"
        self._save_folder(final, self.steps.save_models)
        return final

    def _run_steps(self, writers: dict[str, MetricsWriter]) -> None:
        """Every step (EI: round) the same way: sample and grade, update, log, then checkpoint and
        evaluate when due."""
        bar = self._bar()
        for step in range(self.start, self.total):
            records, n, params = self.steps.sampling(step)
            rollouts, seconds = generate_rollouts(
                self.policy, self.tokenizer, records, n, params, self.grader,
                formats=self.formats, sampler=self.engine.sampler(self.policy),
            )  # fmt: skip
            kl, diagnostics = self.steps.update(step, rollouts, seconds)
            self.policy = self.steps.policy
            seconds["time_sync"] = self.engine.sync(self.policy)  # vllm: the next step samples these weights
            rows = [{**r.row(), "token_ids": r.token_ids} for r in rollouts]  # rank 0 traces them
            self._log_step(step + 1, rows, kl, seconds, diagnostics, writers, bar)
            self._after_step(step + 1, writers)
        bar.close()

    # --- shared --------------------------------------------------------------------------------

    def _log_step(
        self,
        done: int,
        rows: list[dict[str, Any]],
        kl: list[float] | None,
        seconds: dict[str, float],
        diagnostics: dict[str, Any],
        writers: dict[str, MetricsWriter],
        bar: tqdm,
    ) -> None:
        rows = dist.gather_rows(rows)
        if not self.rank0:
            return
        token_ids = [row.pop("token_ids") for row in rows]
        if self.tracer is not None:
            started = time.perf_counter()
            for row, provenance in zip(rows, trace_generations(self.tracer, token_ids), strict=True):
                row["provenance"] = provenance
            seconds["time_trace"] = time.perf_counter() - started
        write_rollouts(self.out / "rollouts" / f"step_{done:06d}.jsonl.gz", rows)
        line = step_metrics(
            rows, algo=self.algo, truncation=self.config.rollout.truncation, kl=kl, seconds=seconds,
            diagnostics=diagnostics, names=self.formats.names,
        )  # fmt: skip
        writers[STAGE].log(done, line)
        bar.set_postfix(reward=f"{line['reward_mean']:.3f}", other=f"{line['format_share']['other']:.2f}", refresh=False)
        bar.update(1)

    def _after_step(self, done: int, writers: dict[str, MetricsWriter]) -> None:
        self._maybe_eval(done, writers)
        # An EI round is minutes of sampling and SFT: checkpoint every round, not every N steps.
        if self.algo == "ei" or done % self.config.checkpoint_every == 0 or done == self.total:
            state = {
                "step": done, "algo": self.algo, "config": to_dict(self.config),
                "algorithm": self.steps.state_dict(), "rng": gather_rng_states(),
            }  # fmt: skip
            self._save_folder(self.out / CHECKPOINTS_DIR / f"step_{done}", self.steps.save_models, state)
            if self.rank0:
                prune_checkpoints(self.out, self.config.keep_checkpoints)
            dist.wait_for_rank0()

    def _save_folder(self, dest: Path, save_models: Callable[[Path], None], state: dict[str, Any] | None = None) -> None:
        """Atomically write an HF folder (policy + tokenizer [+ trainer_state.pt, written last])."""
        if self.rank0:

            def write(folder: Path) -> None:
                save_models(folder)
                self.tokenizer.save_pretrained(folder)

            write_folder(dest, write, state)
        dist.wait_for_rank0()

    def _maybe_eval(self, done: int, writers: dict[str, MetricsWriter]) -> None:
        every = self.config.eval_every
        if every == 0 or not (done % every == 0 or done == self.total):
            return
        for benchmark in self.config.eval.benchmarks:
            # Every rank generates its part of the prompts; rank 0 traces, writes and logs.
            results = evaluate_benchmark(
                self.policy, self.tokenizer, self.config.evaluation(benchmark),
                self.out / "eval" / f"step_{done:06d}" / benchmark, grader=self.grader, progress=False,
                tracer=self.tracer,
            )  # fmt: skip
            if self.rank0:
                writers[EVAL_STAGE].log(done, {k: v for k, v in results.items() if k != "config"})

    def _writers(self) -> dict[str, MetricsWriter]:
        if not self.rank0:
            return {}
        save_config(self.config, self.out / "config.yaml")
        # What the prompt set became under the context check (the report flags skipped prompts).
        prompts = {"dataset": self.config.prompts.dataset, "n_prompts": len(self.records), "context": self.prompt_context}
        (self.out / PROMPTS_FILE).write_text(json.dumps(prompts, indent=2) + "\n")
        note = context_note(self.prompt_context)
        if note:
            print(f"rl: {len(self.records)} prompts{note}", flush=True)
        path = self.out / METRICS_FILE
        # On resume, lines a killed run logged after its checkpoint go; without a checkpoint all of
        # them (step 0's evaluation included: it runs again). Truncation rewrites the file, which
        # would orphan an already open writer's handle: so the eval stage is truncated here, before
        # any writer opens, and the rl writer truncates its own stage (and its TensorBoard steps).
        keep_until = self.start if self.checkpoint is not None else -1
        if self.resume:
            truncate_metrics(path, EVAL_STAGE, keep_until)

        def writer(stage: str, resume_step: int | None) -> MetricsWriter:
            return MetricsWriter(
                self.out, stage, tensorboard=self.config.tensorboard, wandb_project=self.config.wandb_project,
                run_name=f"{self.out.name}-{self.algo}", config=to_dict(self.config), resume_step=resume_step,
            )  # fmt: skip

        rl = writer(STAGE, keep_until if self.resume else None)
        return {STAGE: rl, EVAL_STAGE: writer(EVAL_STAGE, None)}

    def _bar(self) -> tqdm:
        return tqdm(
            total=self.total, initial=self.start, desc=f"rl {self.algo}", unit="step",
            disable=not (self.config.progress and self.rank0), dynamic_ncols=True,
        )  # fmt: skip


def _drop_rollouts_after(folder: Path, step: int) -> None:
    """Rollout files a killed run wrote past its checkpoint: they are written again (or, if the
    resumed run stops earlier, they never happened)."""
    for path in folder.glob("step_*.jsonl.gz"):
        if int(path.name.removeprefix("step_").removesuffix(".jsonl.gz")) > step:
            path.unlink()


def _check_resumable(config: RLConfig, algo: str, state: dict[str, Any], checkpoint: Path) -> None:
    if state["algo"] != algo:
        raise UserError(f"cannot resume from {checkpoint}: it was written by --algo {state['algo']}, not {algo}")
    now = to_dict(config)
    for key in (*RUN_DEFINING_KEYS, algo):
        if _defining(state["config"].get(key), key) != _defining(now[key], key):
            raise UserError(f"cannot resume from {checkpoint}: config key '{key}' changed since it was written")


def _defining(value: Any, key: str) -> Any:
    """What of a config section defines the run: all of it, but the vLLM engine's memory share. A
    checkpoint written before RL had a dtype trained in float32."""
    if key == "dtype" and value is None:
        return "float32"
    if key == "rollout" and isinstance(value, dict) and isinstance(value.get("vllm"), dict):
        return {**value, "vllm": {k: v for k, v in value["vllm"].items() if k != "memory"}}
    return value
